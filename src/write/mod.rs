//! Copy-on-write: tombstones (`cow.tombstone`) and claiming a source row on
//! its first update, delete or lock.
//!
//! May use: `pg`, `pin`, `state`. The table AM in read calls into it, never
//! the other way.

pub mod claim;
pub mod tombstone;
