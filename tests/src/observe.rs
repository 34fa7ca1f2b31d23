//! Reading a running esm from the outside, as a scraper or a probe would: its
//! server's address (from its log), plain HTTP GETs, and the Prometheus text parsed
//! into samples.

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use crate::{wait_for_log, Esm};

/// Adds `[server] listen = LISTEN` to the config file at `config`.
pub fn add_server(config: &Path, listen: &str) {
    let text = std::fs::read_to_string(config).expect("read config");
    let text = text.replacen(
        "[[mapping]]",
        &format!("[server]\nlisten = \"{listen}\"\n\n[[mapping]]"),
        1,
    );
    std::fs::write(config, text).expect("write config");
}

/// The address esm's server listens on, from its log line (waits for it).
pub fn server_addr(esm: &mut Esm) -> SocketAddr {
    const LINE: &str = "serving /metrics, /healthz, /readyz and /status";
    wait_for_log(esm, Duration::from_secs(30), LINE, |log| log.contains(LINE));
    let log = esm.log_text();
    let line = log
        .lines()
        .find(|l| l.contains(LINE))
        .expect("the server's line");
    let addr = line
        .split_whitespace()
        .find_map(|word| word.strip_prefix("listen="))
        .expect("listen= in the server's line");
    addr.parse().expect("a socket address")
}

/// `GET path` from `addr`: the status code and the body.
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("send the request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .expect("read the response");
    let (head, body) = response
        .split_once("\r\n\r\n")
        .expect("a response with a head and a body");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status code");
    (status, body.to_string())
}

/// One sample of a Prometheus text exposition.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// The sample's name (`esm_polled_events_total`, `…_bucket`).
    pub name: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its value.
    pub value: f64,
}

/// The samples of a Prometheus text exposition (comments skipped).
pub fn parse_metrics(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').expect("a sample line");
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let labels = labels
                .split(',')
                .filter(|l| !l.is_empty())
                .map(|pair| {
                    let (k, v) = pair.split_once('=').expect("label=value");
                    (k.to_string(), v.trim_matches('"').to_string())
                })
                .collect();
            Sample {
                name: name.to_string(),
                labels,
                value: value.parse().expect("a number"),
            }
        })
        .collect()
}

/// The value of the sample named `name` whose labels include `labels`, summed over
/// the samples that match (0 when none does).
pub fn metric(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).is_some_and(|x| x == v))
        })
        .map(|s| s.value)
        .sum()
}

/// Scrapes esm's `/metrics`.
pub fn scrape(addr: SocketAddr) -> Vec<Sample> {
    let (status, body) = http_get(addr, "/metrics");
    assert_eq!(status, 200, "/metrics answered {status}: {body}");
    parse_metrics(&body)
}
