//! A clone's life after its birth: the source guard, reconciling what
//! crashes left, each source's pin holder, and the launcher that starts them.
//!
//! May use: every folder before it (`pg`, `pin`, `state`, `write`, `read`,
//! `create`).

pub mod guard;
pub mod holder;
pub mod reconcile;
pub mod workers;
