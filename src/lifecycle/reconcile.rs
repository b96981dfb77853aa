//! Finishing what a crash interrupted.
//!
//! `cow.clone` writes `pg_cowclone/<clone oid>.building` (holding its
//! transaction id) right after creating the database, and removes it when
//! that transaction ends. A marker whose transaction is no longer running
//! therefore means: the clone committed (its database exists; only the
//! marker is stale) or a crash interrupted it (no database): then its
//! directory (with the witness in it) is removed; its record, in the
//! catalog, aborted with it. A record file of 0.2.0 whose database is gone
//! (a crash between DROP DATABASE and forgetting the clone) is removed, and
//! so is a per-clone pin (made before 0.2.0) left with neither database nor
//! record. A source's slot that no clone needs any more is let go by the
//! source's holder or the launcher (`lifecycle::holder`, `lifecycle::workers`).
//! Runs when the launcher starts and at the start of every clone.

use pgrx::pg_sys;

use crate::create::clone;
use crate::pin::slot;
use crate::state::{record, witness};

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

/// Directories with a witness but no database, whose making transaction is
/// over: what a clone in the making leaves when the server it was made on
/// fails over to a standby, or is restored (from a base backup, or to a
/// point in time) while it was being made. Building markers are not in WAL,
/// so the witness, which is, names the transaction. Returns how many.
fn remove_witnessed_orphans() -> usize {
    let Ok(witnesses) = witness::all() else {
        return 0;
    };
    let mut removed = 0;
    for (database, found) in witnesses {
        let Some(w) = found else { continue };
        let oid = pg_sys::Oid::from(database);
        if database_exists(oid) || (w.creating_xid != 0 && transaction_running(w.creating_xid)) {
            continue;
        }
        // SAFETY: a lock on a shared object, released at transaction end; it
        // waits out a DROP DATABASE still removing the directory.
        unsafe {
            pg_sys::LockSharedObject(
                pg_sys::DatabaseRelationId,
                oid,
                0,
                pg_sys::AccessExclusiveLock as i32,
            );
        }
        if database_exists(oid) || !witness::exists(oid) {
            continue;
        }
        clone::remove_clone_files(oid);
        pgrx::log!(
            "cowclone: removed the directory of clone {database} of database {}, whose making never committed",
            w.source
        );
        removed += 1;
    }
    removed
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
            slot::drop_slot(&slot::legacy_slot_name(clone));
            record::remove_legacy_file(clone);
            pgrx::log!(
                "cowclone: removed clone {} interrupted by a crash",
                u32::from(clone)
            );
            removed += 1;
        }
        record::unmark_building(clone);
    }
    removed += remove_witnessed_orphans();
    for stored in record::legacy_records() {
        let clone = pg_sys::Oid::from(stored.clone);
        if !database_exists(clone) && !record::marker_path(clone).exists() {
            record::forget_clone(clone, pg_sys::Oid::from(stored.source));
            removed += 1;
        }
    }
    // A per-clone pin (made before 0.2.0) whose clone left no record.
    for (clone, state) in slot::legacy_slots() {
        if !state.persistent
            || state.active_pid != 0
            || database_exists(clone)
            || record::marker_path(clone).exists()
            // No database: no label either (it goes with its database).
            || record::legacy_state_path(clone).exists()
        {
            continue;
        }
        if slot::drop_slot(&slot::legacy_slot_name(clone)) {
            pgrx::log!(
                "cowclone: released pin {} whose clone no longer exists",
                slot::legacy_slot_name(clone)
            );
            removed += 1;
        }
    }
    removed
}
