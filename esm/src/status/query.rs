//! `esm status --config FILE`: the status of the mappings in FILE, from the running
//! instance's `/status` when `[server]` is set and it answers, else from the store
//! when no instance holds it; and the table it prints.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;

use super::{MappingStatus, ShardStatus, StatusReport};
use crate::config::{Config, StoreConfig};
use crate::store::dynamodb::DynamoStore;
use crate::store::local::{LocalStore, FILE_NAME};
use crate::store::{CheckpointStore, StoreError};

/// How long `esm status` waits for the running instance.
const ASK_TIMEOUT: Duration = Duration::from_secs(5);

/// Where a status report came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// The running instance's `/status` at this URL.
    Server(String),
    /// The store at this path; no instance is running.
    Store(String),
    /// The fleet's lease table (described); instances may be running.
    Table(String),
}

/// Why `esm status` has nothing to show (exit code 1).
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// Neither the server nor the store could be read.
    #[error("{0}")]
    Unavailable(String),
}

/// The status of `config`'s mappings, and where it was read.
pub async fn query(config: &Config) -> Result<(StatusReport, Source), QueryError> {
    let asked = match &config.server {
        Some(server) => {
            let url = format!("http://{}/status", reachable(server.listen));
            match get_status(reachable(server.listen)).await {
                Ok(report) => return Ok((report, Source::Server(url))),
                Err(e) => Some(format!("the running esm at {url} did not answer ({e})")),
            }
        }
        None => None,
    };
    let path = match &config.store {
        StoreConfig::Local { path, .. } => path,
        StoreConfig::DynamoDb { table, region, .. } => {
            // The table is shared by the fleet: it always answers, owners included.
            let region = crate::store::dynamodb::table_region(config, region.as_deref());
            let place = format!("DynamoDB table {table} ({region})");
            return match DynamoStore::open(table, &region, false).await {
                Ok(store) => Ok((
                    rows_of(config, &store)
                        .await
                        .map_err(|e| QueryError::Unavailable(e.to_string()))?,
                    Source::Table(place),
                )),
                Err(e) => Err(QueryError::Unavailable(format!(
                    "{}the {place} cannot be read: {e}",
                    asked.map(|a| format!("{a}, and ")).unwrap_or_default()
                ))),
            };
        }
    };
    match from_store(config, path).await {
        Ok(report) => Ok((report, Source::Store(path.display().to_string()))),
        Err(store) => Err(QueryError::Unavailable(match asked {
            Some(asked) => format!("{asked}, and {store}"),
            None if store.contains("in use") => format!(
                "{store}, and the config has no [server] to ask it: add [server] listen = \"127.0.0.1:9090\" to see a running esm's status"
            ),
            None => store,
        })),
    }
}

/// The address to connect to for a server listening on `listen`: an unspecified
/// address (`0.0.0.0`, `::`) is reached on loopback.
fn reachable(listen: SocketAddr) -> SocketAddr {
    match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), listen.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), listen.port())
        }
        _ => listen,
    }
}

/// `GET /status` from the server at `addr`.
async fn get_status(addr: SocketAddr) -> Result<StatusReport, String> {
    let (status, body) = tokio::time::timeout(ASK_TIMEOUT, http_get(addr, "/status"))
        .await
        .map_err(|_| format!("no answer within {}s", ASK_TIMEOUT.as_secs()))??;
    if status != StatusCode::OK {
        return Err(format!("it answered {status}"));
    }
    serde_json::from_slice(&body).map_err(|e| format!("its answer is not a status document: {e}"))
}

/// One HTTP/1.1 GET.
async fn http_get(addr: SocketAddr, path: &str) -> Result<(StatusCode, Bytes), String> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let request = Request::get(path)
        .header(hyper::header::HOST, addr.to_string())
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, body))
}

/// The checkpoints in the local store at `path`, when no instance holds it.
async fn from_store(config: &Config, path: &Path) -> Result<StatusReport, String> {
    if !path.join(FILE_NAME).exists() {
        return Err(format!(
            "there is no checkpoint store at {} (esm has not run with this config)",
            path.display()
        ));
    }
    let store = LocalStore::open(path).map_err(|e| match e {
        StoreError::InUse { .. } => format!(
            "the checkpoint store at {} is in use by a running esm",
            path.display()
        ),
        other => other.to_string(),
    })?;
    rows_of(config, &store).await.map_err(|e| e.to_string())
}

/// The status of `config`'s enabled mappings as `store` holds it (no instance is
/// asked: a shard is `finished`, `held` by its lease owner, or `stopped`).
async fn rows_of(config: &Config, store: &dyn CheckpointStore) -> Result<StatusReport, StoreError> {
    let mut mappings = Vec::new();
    for m in config.mappings.iter().filter(|m| m.enabled) {
        let stored = store.load(&m.name).await?;
        let shards = stored
            .into_iter()
            .map(|(shard_id, row)| ShardStatus {
                shard_id,
                state: if row.checkpoint.finished {
                    "finished"
                } else if row.lease.owner.is_some() {
                    "held"
                } else {
                    "stopped"
                }
                .to_owned(),
                lease_owner: row.lease.owner,
                checkpoint: row.checkpoint.checkpoint.map(|p| p.to_string()),
                ..ShardStatus::default()
            })
            .collect();
        mappings.push(MappingStatus {
            name: m.name.clone(),
            listed: false,
            ready: false,
            shards,
        });
    }
    Ok(StatusReport {
        ready: false,
        mappings,
    })
}

/// The report as a table: one row per mapping and shard.
pub fn table(report: &StatusReport) -> String {
    let header = [
        "MAPPING",
        "SHARD",
        "STATE",
        "LEASE OWNER",
        "CHECKPOINT",
        "ITERATOR AGE",
        "BEHIND",
    ];
    let dash = || "-".to_owned();
    let millis = |ms: Option<i64>| ms.map_or_else(dash, |ms| format!("{ms} ms"));
    let mut rows: Vec<[String; 7]> = vec![header.map(str::to_owned)];
    for m in &report.mappings {
        if m.shards.is_empty() {
            rows.push([
                m.name.clone(),
                dash(),
                if m.listed {
                    "no shards"
                } else {
                    "not listed yet"
                }
                .to_owned(),
                dash(),
                dash(),
                dash(),
                dash(),
            ]);
        }
        for s in &m.shards {
            rows.push([
                m.name.clone(),
                s.shard_id.clone(),
                s.state.clone(),
                s.lease_owner.clone().unwrap_or_else(dash),
                s.checkpoint.clone().unwrap_or_else(dash),
                millis(
                    s.iterator_age_ms
                        .map(|a| i64::try_from(a).unwrap_or(i64::MAX)),
                ),
                millis(s.millis_behind_latest),
            ]);
        }
    }
    crate::table::render(&rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_has_a_row_per_shard_with_its_checkpoint() {
        let report = StatusReport {
            ready: true,
            mappings: vec![
                MappingStatus {
                    name: "orders".into(),
                    listed: true,
                    ready: true,
                    shards: vec![ShardStatus {
                        shard_id: "shardId-000000000000".into(),
                        state: "reading".into(),
                        checkpoint: Some("4959".into()),
                        iterator_age_ms: Some(120),
                        millis_behind_latest: Some(0),
                        ..ShardStatus::default()
                    }],
                },
                MappingStatus {
                    name: "idle".into(),
                    ..MappingStatus::default()
                },
            ],
        };
        assert_eq!(
            table(&report),
            "MAPPING  SHARD                 STATE           LEASE OWNER  CHECKPOINT  ITERATOR AGE  BEHIND\n\
             orders   shardId-000000000000  reading         -            4959        120 ms        0 ms\n\
             idle     -                     not listed yet  -            -           -             -\n"
        );
    }

    #[test]
    fn an_unspecified_listen_address_is_asked_on_loopback() {
        assert_eq!(
            reachable("0.0.0.0:9090".parse().unwrap()),
            "127.0.0.1:9090".parse().unwrap()
        );
        assert_eq!(
            reachable("[::]:9090".parse().unwrap()),
            "[::1]:9090".parse().unwrap()
        );
        assert_eq!(
            reachable("10.0.0.5:9090".parse().unwrap()),
            "10.0.0.5:9090".parse().unwrap()
        );
    }
}
