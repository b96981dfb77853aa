//! What defines a clone and must outlive any one backend: its record
//! (source, clone point, the storage it shadows) in the catalog, its
//! witness file, cowclone's WAL resource manager that carries the witness to
//! standbys and puts pins in force at the end of recovery, building
//! markers, the materializations running now (shared memory), the lock that orders creation with the source guard, and how
//! its TIDs address its two halves. Every later stage reads it; only
//! `create` and `lifecycle` write it.
//!
//! May use: `pg`, `pin`.

pub mod history;
pub mod jobs;
pub mod lineage;
pub mod record;
pub mod tid;
pub mod wal;
pub mod witness;
