"""Aggregates user records into KPL aggregated records with AWS's own Python
package (aws_kinesis_agg), for esm's KPL end-to-end tests.

Reads user records as JSON lines on stdin, {"partition_key": ..., "data": BASE64}
(and optionally "explicit_hash_key"), packs them in order, at most PER (argv[1]) to
an aggregate (and never past KPL's 1 MB record size), and writes one JSON line per
aggregated Kinesis record on stdout: {"partition_key", "explicit_hash_key", "data":
BASE64 of the aggregated bytes, "user_records": N}. Put them with PutRecords as
they are.
"""

import base64
import json
import sys

from aws_kinesis_agg.aggregator import AggRecord


def emit(record, count):
    partition_key, explicit_hash_key, data = record.get_contents()
    line = {
        "partition_key": partition_key,
        "explicit_hash_key": explicit_hash_key,
        "data": base64.b64encode(data).decode("ascii"),
        "user_records": count,
    }
    sys.stdout.write(json.dumps(line) + "\n")


def main():
    per = int(sys.argv[1])
    record, count = AggRecord(), 0
    for line in sys.stdin:
        if not line.strip():
            continue
        user = json.loads(line)
        args = (
            user["partition_key"],
            base64.b64decode(user["data"]),
            user.get("explicit_hash_key"),
        )
        if count == per or not record.add_user_record(*args):
            emit(record, count)
            record, count = AggRecord(), 0
            if not record.add_user_record(*args):
                raise SystemExit("a user record does not fit in an aggregate")
        count += 1
    if count:
        emit(record, count)


if __name__ == "__main__":
    main()
