//! Whether the library was loaded through `shared_preload_libraries`.
//!
//! Clones need hooks in every backend and background workers started by the
//! postmaster, which PostgreSQL only allows while it loads
//! `shared_preload_libraries`. A library loaded later (by `CREATE EXTENSION` or
//! `LOAD`) in a server that did not preload it must refuse to do anything
//! rather than half-work, so the fact is recorded here and checked by every
//! entry point that depends on it.

use std::sync::atomic::{AtomicBool, Ordering};

use pgrx::{pg_sys, PgSqlErrorCode};

use crate::pg::error::CowError;

/// Set in the postmaster while it preloads the library; every backend it
/// forks inherits the value.
static LOADED_BY_POSTMASTER: AtomicBool = AtomicBool::new(false);

/// Records whether the library is being preloaded; true if so, and the
/// caller then installs everything process-wide.
pub fn on_library_load() -> bool {
    // SAFETY: a plain global that PostgreSQL sets before calling the
    // `_PG_init` of each preloaded library and clears afterwards; we only read it.
    let preloading = unsafe { pg_sys::process_shared_preload_libraries_in_progress };
    if preloading {
        LOADED_BY_POSTMASTER.store(true, Ordering::Relaxed);
    }
    preloading
}

pub fn is_preloaded() -> bool {
    LOADED_BY_POSTMASTER.load(Ordering::Relaxed)
}

/// Raises `object_not_in_prerequisite_state` (55000) unless the library was preloaded.
pub fn require_preloaded() {
    if !is_preloaded() {
        CowError::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "cowclone must be loaded via shared_preload_libraries",
            )
        .detail("Clones depend on hooks and background workers that PostgreSQL only installs at server start.")
        .hint("Add 'cowclone' to shared_preload_libraries in postgresql.conf and restart the server.")
        .raise();
    }
}
