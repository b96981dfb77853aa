//! Finishing what a crash interrupted.
//!
//! `cow.clone` writes `pg_cowclone/<clone oid>.building` (holding its
//! transaction id) right after creating the database, and removes it when
//! that transaction ends. A marker whose transaction is no longer running
//! therefore means: the clone committed (its database exists; only the
//! marker is stale) or a crash interrupted it (no database): then its
//! directory, state file and pin are removed. A state file whose database is
//! gone (a crash between DROP DATABASE and forgetting the clone) is removed
//! with its pin, and so is a cowclone pin left with neither database nor
//! record. Runs at server start and at the start of every clone.

use pgrx::pg_sys;

use crate::create::clone;
use crate::pin::snapshot;
use crate::state::record;

fn database_exists(oid: pg_sys::Oid) -> bool {
    // SAFETY: a syscache probe of the shared catalog pg_database, in a transaction.
    unsafe {
        pg_sys::SearchSysCacheExists(
            pg_sys::SysCacheIdentifier::DATABASEOID as i32,
            pg_sys::Datum::from(oid),
            pg_sys::Datum::from(0),
            pg_sys::Datum::from(0),
            pg_sys::Datum::from(0),
        )
    }
}

fn transaction_running(xid: u32) -> bool {
    // SAFETY: reads the proc array.
    unsafe { pg_sys::TransactionIdIsInProgress(pg_sys::TransactionId::from(xid)) }
}

/// Removes every clone a crash interrupted; returns how many.
pub fn remove_interrupted_clones() -> usize {
    let mut removed = 0;
    for (clone, xid) in record::building_markers() {
        if transaction_running(xid) {
            continue;
        }
        // Serialize with any other backend reconciling the same clone.
        // SAFETY: a lock on a shared object, released at transaction end.
        unsafe {
            pg_sys::LockSharedObject(
                pg_sys::DatabaseRelationId,
                clone,
                0,
                pg_sys::AccessExclusiveLock as i32,
            );
        }
        if !record::marker_path(clone).exists() {
            continue;
        }
        if !database_exists(clone) {
            clone::remove_clone_files(clone);
            snapshot::drop_pin(clone);
            record::remove_record(clone);
            pgrx::log!(
                "cowclone: removed clone {} interrupted by a crash",
                u32::from(clone)
            );
            removed += 1;
        }
        record::unmark_building(clone);
    }
    for stored in record::all_records() {
        let clone = pg_sys::Oid::from(stored.clone);
        if !database_exists(clone) && !record::marker_path(clone).exists() {
            record::forget_clone(clone);
            removed += 1;
        }
    }
    // A pin whose clone left no record (its state file is gone).
    for clone in snapshot::persistent_pins() {
        if database_exists(clone)
            || record::marker_path(clone).exists()
            || record::read_record(clone).is_some()
        {
            continue;
        }
        if snapshot::drop_pin(clone) {
            pgrx::log!(
                "cowclone: released pin {} whose clone no longer exists",
                snapshot::slot_name(clone)
            );
            removed += 1;
        }
    }
    removed
}
