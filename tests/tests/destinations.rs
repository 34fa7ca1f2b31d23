//! On-failure destinations end to end: records given up reach an SQS queue (or an
//! SNS topic, seen through an SQS subscription) as Lambda's on-failure record, and
//! the checkpoint passes them only once the send succeeded.

use std::time::Duration;

use esm_e2e::*;

#[tokio::test(flavor = "multi_thread")]
async fn the_poison_record_alone_lands_in_the_sqs_queue() {
    let client = kinesis().await;
    let stream = TestStream::create(&client, "dest-sqs", 2).await;
    let poison_n = 500 + (std::process::id() as usize * 7919) % 4_000;
    let put = put_records(&client, &stream, 0, 5_000, 100, 64).await;
    let poison = put[poison_n].clone();
    let sqs = sqs().await;
    let (url, arn) = queue(&sqs, &unique_name("failures")).await;

    let dir = tempfile::tempdir().unwrap();
    let marker = format!("\"n\":{poison_n},");
    let config = write_config_function(
        dir.path(),
        "dest-sqs",
        &stream,
        "starting_position = \"TRIM_HORIZON\"\n",
        "batch_size = 100\nbisect_batch_on_function_error = true\nfunction_response_types = [\"ReportBatchItemFailures\"]\nmaximum_retry_attempts = 1\n",
        &with_destination(&arn),
    );
    let mut esm = Esm::start(
        dir.path(),
        &config,
        &[("RECORDER_POISON", &marker), ("RECORDER_REPORT", "1")],
    );
    wait_for(
        &mut esm,
        Duration::from_secs(120),
        "every record but the poison one",
        |b| count_records(b) >= 4_999,
    );
    let messages = receive_messages(&sqs, &url, 1).await;
    let batches = esm.stop(Duration::from_secs(30));
    assert_eq!(count_records(&batches), 4_999);

    assert_poison_alone(&messages[0], &poison, &stream);
    // No other message.
    assert!(receive_now(&sqs, &url, 10).await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_batch_reaches_an_sns_topic() {
    let client = kinesis().await;
    let stream = TestStream::create(&client, "dest-sns", 1).await;
    let put = put_records(&client, &stream, 0, 30, 100, 4).await;
    let (sqs, sns) = (sqs().await, sns().await);
    let (url, queue_arn) = queue(&sqs, &unique_name("sns-failures")).await;
    let topic = sns
        .create_topic()
        .name(unique_name("failures"))
        .send()
        .await
        .expect("CreateTopic")
        .topic_arn
        .expect("topic arn");
    sns.subscribe()
        .topic_arn(&topic)
        .protocol("sqs")
        .endpoint(&queue_arn)
        .attributes("RawMessageDelivery", "true")
        .send()
        .await
        .expect("Subscribe");

    let dir = tempfile::tempdir().unwrap();
    let config = write_config_function(
        dir.path(),
        "dest-sns",
        &stream,
        "starting_position = \"TRIM_HORIZON\"\n",
        "batch_size = 30\nmaximum_retry_attempts = 0\n",
        &with_destination(&topic),
    );
    let mut esm = Esm::start(dir.path(), &config, &[("RECORDER_POISON", "\"n\":10,")]);
    let messages = receive_messages(&sqs, &url, 1).await;
    esm.assert_running();
    esm.stop(Duration::from_secs(30));
    let m = &messages[0];
    assert_eq!(m["KinesisBatchInfo"]["batchSize"], 30);
    assert_eq!(
        m["KinesisBatchInfo"]["startSequenceNumber"],
        put[0].seq.as_str()
    );
    assert_eq!(
        m["KinesisBatchInfo"]["endSequenceNumber"],
        put[29].seq.as_str()
    );
    assert_eq!(m["requestContext"]["approximateInvokeCount"], 1);
    assert_eq!(m["responseContext"]["functionError"], "Unhandled");
    assert_eq!(m["responseContext"]["statusCode"], 200);
    assert_eq!(m["responseContext"]["executedVersion"], "$LATEST");
}

/// A destination that cannot be reached holds the checkpoint: the send is retried
/// (and logged); killed then, esm reads the records again on restart and delivers
/// them once the queue exists.
#[tokio::test(flavor = "multi_thread")]
async fn the_checkpoint_waits_for_the_destination() {
    let client = kinesis().await;
    let stream = TestStream::create(&client, "dest-wait", 1).await;
    let put = put_records(&client, &stream, 0, 20, 100, 4).await;
    let sqs = sqs().await;
    let name = unique_name("late-queue");
    // moto's account; the queue does not exist yet.
    let arn = format!("arn:aws:sqs:{REGION}:123456789012:{name}");

    let dir = tempfile::tempdir().unwrap();
    let config = write_config_function(
        dir.path(),
        "dest-wait",
        &stream,
        "starting_position = \"TRIM_HORIZON\"\n",
        "batch_size = 20\nmaximum_retry_attempts = 0\n",
        &with_destination(&arn),
    );
    let env = [("RECORDER_POISON", "\"n\":5,")];
    let mut esm = Esm::start(dir.path(), &config, &env);
    wait_for_log(
        &mut esm,
        Duration::from_secs(60),
        "two failed sends",
        |log| {
            log.matches("cannot send to the on-failure destination")
                .count()
                >= 2
        },
    );
    esm.kill();

    let (url, created_arn) = queue(&sqs, &name).await;
    assert_eq!(created_arn, arn);
    let mut esm = Esm::start(dir.path(), &config, &env);
    let messages = receive_messages(&sqs, &url, 1).await;
    esm.assert_running();
    esm.stop(Duration::from_secs(30));
    let info = &messages[0]["KinesisBatchInfo"];
    assert_eq!(info["startSequenceNumber"], put[0].seq.as_str());
    assert_eq!(info["endSequenceNumber"], put[19].seq.as_str());
}

#[tokio::test(flavor = "multi_thread")]
async fn without_bisect_the_failing_batch_reaches_the_queue_after_three_invocations() {
    let client = kinesis().await;
    let stream = TestStream::create(&client, "dest-retries", 1).await;
    let put = put_records(&client, &stream, 0, 500, 100, 8).await;
    let sqs = sqs().await;
    let (url, arn) = queue(&sqs, &unique_name("retries")).await;
    let dir = tempfile::tempdir().unwrap();
    let attempts_file = dir.path().join("attempts.jsonl");
    let config = write_config_function(
        dir.path(),
        "dest-retries",
        &stream,
        "starting_position = \"TRIM_HORIZON\"\n",
        "batch_size = 100\nmaximum_retry_attempts = 2\n",
        &with_destination(&arn),
    );
    let attempts_text = attempts_file.display().to_string();
    let mut esm = Esm::start(
        dir.path(),
        &config,
        &[
            ("RECORDER_POISON", "\"n\":250,"),
            ("RECORDER_ATTEMPTS", &attempts_text),
        ],
    );
    let messages = receive_messages(&sqs, &url, 1).await;
    let m = &messages[0];
    let size = m["KinesisBatchInfo"]["batchSize"].as_u64().unwrap() as usize;
    wait_for(
        &mut esm,
        Duration::from_secs(60),
        "the later batches",
        |b| count_records(b) >= 500 - size,
    );
    let batches = esm.stop(Duration::from_secs(30));

    // The failing batch: invoked exactly 3 times, then sent whole.
    let first = m["KinesisBatchInfo"]["startSequenceNumber"]
        .as_str()
        .unwrap()
        .to_string();
    let tries = std::fs::read_to_string(&attempts_file).unwrap();
    let invocations = tries
        .lines()
        .filter(|l| l.contains(&format!("\"first\":\"{first}\"")))
        .count();
    assert_eq!(invocations, 3, "invocations of the failing batch:\n{tries}");
    assert_eq!(m["requestContext"]["approximateInvokeCount"], 3);
    assert_eq!(m["requestContext"]["condition"], "RetryAttemptsExhausted");
    assert_eq!(m["responseContext"]["functionError"], "Unhandled");
    let start = put
        .iter()
        .position(|r| r.seq == first)
        .expect("the batch's first record was put");
    assert!(
        (start..start + size).contains(&250),
        "the batch holds the poison record"
    );
    assert_eq!(
        m["KinesisBatchInfo"]["endSequenceNumber"],
        put[start + size - 1].seq.as_str()
    );
    // Every other record was handled, once, in order: later batches flowed.
    let handled: Vec<&str> = seqs(&batches).collect();
    let expected: Vec<&str> = put
        .iter()
        .enumerate()
        .filter(|(i, _)| !(start..start + size).contains(i))
        .map(|(_, r)| r.seq.as_str())
        .collect();
    assert_eq!(handled, expected);
}

#[tokio::test(flavor = "multi_thread")]
async fn records_past_their_maximum_age_reach_the_queue_uninvoked() {
    let client = kinesis().await;
    let stream = TestStream::create(&client, "dest-age", 1).await;
    let old = put_records(&client, &stream, 0, 50, 100, 4).await;
    let sqs = sqs().await;
    let (url, arn) = queue(&sqs, &unique_name("age")).await;
    // The smallest maximum age Lambda allows is 60 s.
    tokio::time::sleep(Duration::from_secs(62)).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config_function(
        dir.path(),
        "dest-age",
        &stream,
        "starting_position = \"TRIM_HORIZON\"\n",
        "maximum_record_age_in_seconds = 60\n",
        &with_destination(&arn),
    );
    let mut esm = Esm::start(dir.path(), &config, &[]);
    let mut messages = receive_messages(&sqs, &url, 1).await;
    while messages
        .iter()
        .map(|m| m["KinesisBatchInfo"]["batchSize"].as_u64().unwrap())
        .sum::<u64>()
        < 50
    {
        messages.extend(receive_messages(&sqs, &url, 1).await);
    }
    esm.assert_running();
    let batches = esm.stop(Duration::from_secs(30));
    assert_eq!(
        count_records(&batches),
        0,
        "expired records must never be invoked"
    );
    for m in &messages {
        assert_eq!(m["requestContext"]["condition"], "RecordAgeExceeded");
        assert_eq!(m["requestContext"]["approximateInvokeCount"], 0);
        assert!(
            m.get("responseContext").is_none(),
            "a RecordAgeExceeded record has no responseContext"
        );
    }
    assert_eq!(
        messages[0]["KinesisBatchInfo"]["startSequenceNumber"],
        old[0].seq.as_str()
    );
}

/// A poison record with an S3 bucket as destination: exactly one object, at
/// Lambda's key layout, holding the on-failure record plus the invocation event of
/// that record alone as `payload`.
#[tokio::test(flavor = "multi_thread")]
async fn the_poison_record_alone_lands_in_the_s3_bucket_with_its_payload() {
    use base64::Engine as _;
    let poison = 17;
    let run = poison_to_s3("dest-s3", poison).await;
    let record = &run.put[poison];

    let mut object: serde_json::Value = serde_json::from_slice(&run.body).expect("JSON");
    let payload = object
        .as_object_mut()
        .and_then(|o| o.remove("payload"))
        .expect("a payload");
    assert_poison_alone(&object, record, &run.stream);

    // aws/lambda/<mapping-uuid>/<shardId>/YYYY/MM/DD/YYYY-MM-DDTHH.MM.SS-<requestId>
    let at = chrono::DateTime::parse_from_rfc3339(object["timestamp"].as_str().unwrap())
        .unwrap()
        .to_utc();
    assert_eq!(
        run.keys[0],
        format!(
            "aws/lambda/{}/{}/{}-{}",
            esm::core::on_failure::mapping_uuid("dest-s3"),
            record.shard,
            at.format("%Y/%m/%d/%Y-%m-%dT%H.%M.%S"),
            object["requestContext"]["requestId"].as_str().unwrap()
        )
    );

    // The payload: the event the function got for that record alone.
    let records = payload["Records"].as_array().expect("Records");
    assert_eq!(records.len(), 1, "{payload}");
    let r = &records[0];
    assert_eq!(r["kinesis"]["sequenceNumber"], record.seq.as_str());
    assert_eq!(r["kinesis"]["partitionKey"], record.key.as_str());
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(r["kinesis"]["data"].as_str().unwrap())
            .unwrap(),
        record_payload(poison, 100)
    );
    assert_eq!(r["eventSourceARN"], stream_arn(&run.stream).as_str());
    assert_eq!(
        r["eventID"],
        format!("{}:{}", record.shard, record.seq).as_str()
    );
}
