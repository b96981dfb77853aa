//! A clone's life after its birth: the source guard, reconciling what
//! crashes left, each source's pin holder, materializing a clone into an ordinary
//! database, and the launcher that starts them.
//!
//! May use: every folder before it (`pg`, `pin`, `state`, `write`, `read`,
//! `create`).

pub mod guard;
pub mod holder;
pub mod materialize;
pub mod reconcile;
pub mod retention;
pub mod workers;
