//! Making a clone: the orchestration of `cow.clone`, reading the source's
//! catalog from another database, the physical catalog copy, sanitizing
//! copied pages as of T, and the relation map.
//!
//! May use: `pg`, `pin`, `state`, `write`, `read` (the access methods a
//! clone's relations are switched to).

pub mod catalog_copy;
pub mod clone;
pub mod nested;
pub mod point;
pub mod relmap;
pub mod sanitize;
pub mod source;
