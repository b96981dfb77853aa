//! What a backend connected to a clone sees: the clone view (its source and
//! T), heap pages judged with a snapshot, the `cow` table access method, the
//! wrapper index access methods, and the planner/executor/utility hooks
//! that route statements to them. The table AM's write callbacks are entry
//! points into `write`.
//!
//! May use: `pg`, `pin`, `state`, `write`. The table and index AMs use each
//! other (one concept: a relation read through two halves).

pub mod clone_view;
pub mod heap_page;
pub mod hooks;
pub mod indexam;
pub mod tableam;
