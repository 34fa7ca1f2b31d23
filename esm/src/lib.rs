//! esm: a self-hosted, Lambda-compatible event source mapping runtime for Amazon
//! Kinesis Data Streams.
//!
//! A record flows `source` → lane (`core::shard`: batcher, failure rules) → `invoke`
//! → checkpoint tracker → `store`:
//!
//! - [`core`] — Lambda's semantics as pure code (the shard state machine with its
//!   lanes and checkpoint tracker, batching, events, failure decisions, pacing, the
//!   shard graph), time and randomness passed in;
//! - [`source`] — ListShards and GetRecords, behind the `ShardSource` seam;
//! - [`invoke`] — running the function (in-process handlers, registered in a
//!   [`Registry`], or worker processes over the Lambda Runtime API);
//! - [`destination`] — where records given up go (SQS, SNS);
//! - [`store`] — checkpoints;
//! - [`replay`] — re-running failed batches from their on-failure records;
//! - [`runner`] — a loop per mapping, and per shard a thin driver that carries out
//!   what the shard state machine decides;
//! - [`config`] and [`cli`]: the user-facing contract.
//!
//! To run in-process handlers, a binary registers them and hands over to the CLI:
//! see [`cli`].

pub mod checkpoint_tool;
pub mod cli;
pub mod config;
pub mod core;
pub mod destination;
pub mod exit;
pub mod invoke;
pub mod logging;
pub mod metrics;
pub mod replay;
pub mod runner;
pub mod server;
pub mod source;
pub mod status;
pub mod store;
pub mod table;

#[cfg(test)]
mod sim_clock;

pub use handler_sdk;
pub use invoke::Registry;
