//! The clone point T and what keeps it readable: T as an MVCC snapshot, and
//! the pin that holds the source's vacuum at the oldest T among its clones —
//! a replication slot per source as the durable record, an xmin advertised
//! by a process connected to the source as the pin in force.
//!
//! May use: `pg`.

pub mod advertised;
pub mod age;
pub mod exact;
pub mod slot;
pub mod snapshot;
