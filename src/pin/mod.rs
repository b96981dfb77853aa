//! The clone point T and what keeps it readable: T as an MVCC snapshot, the
//! pin that holds the source's vacuum at T, and its age.
//!
//! May use: `pg`.

pub mod snapshot;
