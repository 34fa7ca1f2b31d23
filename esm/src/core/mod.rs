//! The semantics: what Lambda's event source mapping decides, as pure code.
//!
//! Nothing in here does I/O, spawns tasks, reads a clock or draws a random number:
//! time and jitter are passed in as values. That is what lets unit and property tests
//! drive batching, pacing, failure decisions and the shard graph with simulated time,
//! and what lets a reader change one Lambda rule in one file. The adapters around it
//! (`source`, `invoke`, `store`) do the I/O; `runner` wires the two together.
//! [`filter`] decides which records a function never sees (Lambda's `FilterCriteria`);
//! [`kpl`] turns a KPL aggregated Kinesis record into the user records it carries.

pub mod backoff;
pub mod batch;
pub mod checkpoint;
pub mod event;
pub mod failure;
pub mod filter;
pub mod kpl;
pub mod lease;
pub mod lineage;
pub mod on_failure;
pub mod pacing;
pub mod partition;
pub mod record;
pub mod response;
pub mod shard;
pub mod window;
