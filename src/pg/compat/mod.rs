//! The one place that knows which PostgreSQL major the extension is built
//! for. Everything else calls these functions; a new major means a new arm
//! here, not `cfg`s scattered through the code.
//!
//! A leaf: it uses pgrx and nothing of cowclone's own (the layout check in
//! `pg_test/tests/layout.rs` keeps it so). Where a difference is the shape of
//! a callback, the callback is a generic adapter here over a trait the
//! caller implements (`ShapedScans`).
//!
//! Tested on PostgreSQL 15, 16, 17 and 18. The `pg14` feature exists, but
//! 14 would need bridges this module does not have (the code uses 15's
//! `datlocprovider`, `indnullsnotdistinct` and `RelationMapCopy`), and no
//! PostgreSQL 14 can be installed on these machines to write them against.
//! The version boundaries (`before_pg16`, `before_pg17`, `before_pg18`) come
//! from build.rs.

mod access_method;
mod catalog;
mod locking;
mod storage;
mod wal;

pub use access_method::*;
pub use catalog::*;
pub use locking::*;
pub use storage::*;
pub use wal::*;
