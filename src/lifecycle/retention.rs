//! History retention (issue #19): a source's owner asks that points of the
//! last `keep` can be cloned; the source's pin holder records a mark every
//! `cow.retention_mark_interval` and slides the window.
//!
//! What a window costs, and who pays: the pin holds the source's vacuum at
//! the window's oldest mark (the source alone, like a clone's pin: other
//! databases pay nothing), and a slot of its own keeps the source's WAL
//! from that mark on (every database's WAL, since WAL is the cluster's; as
//! `max_slot_wal_keep_size` allows: when PostgreSQL invalidates the slot,
//! the history is lost and the window starts again).

use std::time::Duration;

use pgrx::datum::Interval;
use pgrx::prelude::*;
use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting, PgSqlErrorCode};

use crate::create::point::sorted_map;
use crate::create::source::SourceDatabase;
use crate::lifecycle::materialize::request::owned_database;
use crate::pg::error::CowError;
use crate::pin::exact;
use crate::pin::slot;
use crate::pin::snapshot::{self, older_xid, xid_precedes, HeldSnapshot};
use crate::state::history::{self, History, Mark};
use crate::state::{record, witness};

/// `cow.retention_mark_interval`, in seconds.
static MARK_INTERVAL: GucSetting<i32> = GucSetting::<i32>::new(10);

pub fn define_settings() {
    GucRegistry::define_int_guc(
        c"cow.retention_mark_interval",
        c"Seconds between two marks of a source's history (cow.set_retention).",
        c"A point in the window is found from the newest mark before it plus the WAL in between, so this bounds the WAL a clone as of a past point reads.",
        &MARK_INTERVAL,
        1,
        3600,
        GucContext::Sighup,
        GucFlags::UNIT_S,
    );
}

pub fn mark_interval() -> Duration {
    Duration::from_secs(MARK_INTERVAL.get().max(1) as u64)
}

fn now() -> i64 {
    // SAFETY: reads the clock.
    unsafe { pg_sys::GetCurrentTimestamp() }
}

/// Records a mark of `source` now and slides its window to `keep_micros`;
/// makes the history slot first if it is missing or was invalidated (the
/// history then starts again). In a transaction holding the source lock,
/// in a process with no slot acquired (the launcher), while the source's
/// pin is in force: the mark's snapshot is newer than it.
pub fn mark(source: pg_sys::Oid, keep_micros: i64) -> History {
    let mut history = history::load(source);
    let kept = slot::history_slot(source);
    if kept.is_none_or(|s| s.restart_lsn == 0) {
        if !history.marks.is_empty() {
            pgrx::warning!(
                "cowclone: the history of database {} was lost (its WAL slot was invalidated or dropped, for example by max_slot_wal_keep_size); its window starts again now",
                u32::from(source)
            );
        }
        history.marks.clear();
        if kept.is_some() {
            slot::drop_slot(&slot::history_slot_name(source));
        }
        // SAFETY: no slot acquired here; the caller holds the source lock.
        unsafe { slot::create_history_slot(source) };
    }
    let held = HeldSnapshot::latest();
    let point = exact::refine(&snapshot::point_of(&held));
    drop(held);
    let relmap = sorted_map(&SourceDatabase::open(source, pg_sys::DEFAULTTABLESPACE_OID));
    history.marks.push(Mark { point, relmap });
    history.slide(now() - keep_micros);
    history.pin_target = pin_target(source, &history);
    history::save(&history);
    if let Some(start) = history.start() {
        // SAFETY: as above; the marks before `start` are gone from the file.
        unsafe { slot::advance_history_slot(source, start.point.lsn) };
    }
    history
}

/// The oldest xmin `source`'s clones and `history`'s marks need, or None
/// if some clone's clone point cannot be known here (its record stored out
/// of line, and no witness): then the pin does not move.
fn pin_target(source: pg_sys::Oid, history: &History) -> Option<u32> {
    let mut oldest = history.oldest_xmin()?;
    for (clone, found) in record::clones_without_database() {
        let xmin = match found {
            Some(r) if r.source == u32::from(source) => r.point.xmin,
            Some(_) => continue,
            None => match witness::read(clone) {
                Some(w) if w.source != u32::from(source) => continue,
                Some(w) if w.pin_xmin != 0 => w.pin_xmin,
                _ => return None,
            },
        };
        oldest = older_xid(oldest, xmin);
    }
    Some(oldest)
}

/// The launcher's part, every `cow.retention_mark_interval` for each source
/// with retention on: a mark, the window slid, the pin target computed. In
/// a transaction of a process with no slot acquired. The source lock
/// orders it with clone creation (which reads the marks) and the holder.
pub fn record_history(source: pg_sys::Oid) {
    record::lock_source(source);
    let Some(keep) = history::retention_of(source) else {
        return;
    };
    match slot::source_slot(source) {
        Some(s) if s.persistent => {}
        // Another process is making the slot: next time.
        Some(_) => return,
        None => {
            // The first mark of a source with no clones: pinned from
            // before its snapshot, as a first clone is.
            // SAFETY: in a transaction, with no slot acquired; the source
            // lock is held.
            unsafe {
                slot::create_pinned_conservatively(&slot::source_slot_name(source));
            }
            slot::persist_acquired();
            slot::release_acquired();
        }
    }
    let history = mark(source, keep);
    // With no holder (none could start), the slot's pin is the one in force:
    // move it up to the target here, or the window would pin the source
    // ever further back.
    if let (Some(target), Some(state)) = (history.pin_target, slot::source_slot(source)) {
        if state.active_pid == 0 && state.persistent && xid_precedes(state.xmin, target) {
            // SAFETY: the slot is inactive, seen under the source lock that
            // every cowclone process takes before acquiring it; no slot is
            // acquired here; the target holds everything the source needs.
            unsafe {
                slot::acquire(&slot::source_slot_name(source));
                slot::record_acquired(pg_sys::TransactionId::from(target));
            }
            slot::release_acquired();
        }
    }
}

/// Ends `source`'s history: its slot and marks go. In a transaction holding
/// the source lock, in a process with no slot acquired.
pub fn forget(source: pg_sys::Oid) {
    if slot::history_slot(source).is_some() {
        slot::drop_slot(&slot::history_slot_name(source));
    }
    history::remove(source);
}

/// An interval as microseconds (a month counted as 30 days, as PostgreSQL's
/// `extract(epoch ...)` does).
fn micros(keep: &Interval) -> i64 {
    i64::from(keep.months()) * 30 * 86_400_000_000
        + i64::from(keep.days()) * 86_400_000_000
        + keep.micros()
}

/// `cow.set_retention(db, keep)`: NULL or a zero interval switches it off.
pub fn set_retention(db: Option<&str>, keep: Option<Interval>) -> bool {
    let Some(db) = db else {
        CowError::new(
            PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
            "cow.set_retention needs a database name",
        )
        .raise()
    };
    crate::pg::preload::require_preloaded();
    // SAFETY: reads shared recovery state.
    if unsafe { pg_sys::RecoveryInProgress() } {
        CowError::new(
            PgSqlErrorCode::ERRCODE_READ_ONLY_SQL_TRANSACTION,
            "cannot change history retention during recovery",
        )
        .hint("Run cow.set_retention on the primary.")
        .raise();
    }
    let source = owned_database(db, "set the history retention of");
    let keep_micros = keep.as_ref().map(micros).filter(|&k| k != 0);
    if keep_micros.is_some_and(|k| k < 0) {
        CowError::new(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "a history retention cannot be negative",
        )
        .raise();
    }
    record::lock_source(source);
    if record::read_record(source).is_some() {
        CowError::new(
            PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            format!("database \"{db}\" is a clone"),
        )
        .detail("History retention of a clone is not supported yet.")
        .raise();
    }
    // SAFETY: a start-up setting.
    if keep_micros.is_some()
        && unsafe { pg_sys::wal_level } < pg_sys::WalLevel::WAL_LEVEL_REPLICA as i32
    {
        CowError::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "history retention needs wal_level replica or logical",
        )
        .raise();
    }
    let was = history::retention_of(source);
    history::set_retention(source, keep_micros);
    match keep_micros {
        // Made here, so that a server without a free replication slot
        // says so to the caller (53400); the holder records the marks.
        Some(_) if slot::history_slot(source).is_none() && !slot::has_acquired() => {
            // SAFETY: no slot acquired; the source lock is held.
            unsafe { slot::create_history_slot(source) };
        }
        None if was.is_some() && !slot::has_acquired() => forget(source),
        _ => {}
    }
    keep_micros.is_some()
}

/// One row of `cow.retention`.
pub struct RetentionRow {
    pub database: u32,
    pub keep_micros: i64,
    pub start: Option<Mark>,
    pub newest: Option<Mark>,
    pub marks: i64,
    pub wal_kept_bytes: Option<i64>,
    pub slot_name: String,
}

pub fn rows() -> Vec<RetentionRow> {
    // SAFETY: reads shared recovery state.
    let standby = unsafe { pg_sys::RecoveryInProgress() };
    // SAFETY: a plain read of the WAL insert position (not during recovery).
    let insert = if standby {
        0
    } else {
        unsafe { pg_sys::GetXLogInsertRecPtr() }
    };
    history::retained()
        .into_iter()
        .map(|(database, keep_micros)| {
            let oid = pg_sys::Oid::from(database);
            // No marks are recorded during recovery; a file a base backup
            // carried is the primary's, of no use here.
            let history = if standby {
                History::default()
            } else {
                history::load(oid)
            };
            let kept = slot::history_slot(oid);
            RetentionRow {
                database,
                keep_micros,
                start: history.marks.first().cloned(),
                newest: history.marks.last().cloned(),
                marks: history.marks.len() as i64,
                wal_kept_bytes: kept
                    .filter(|s| s.restart_lsn != 0)
                    .map(|s| insert.saturating_sub(s.restart_lsn) as i64),
                slot_name: slot::history_slot_name(oid),
            }
        })
        .collect()
}
