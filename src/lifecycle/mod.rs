//! A clone's life after its birth: the source guard, reconciling what
//! crashes left, and background workers.
//!
//! May use: every folder before it (`pg`, `pin`, `state`, `write`, `read`,
//! `create`).

pub mod guard;
pub mod reconcile;
pub mod workers;
