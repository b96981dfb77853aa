//! A source's pin holder: one background worker per source database with
//! live clones or a history window, connected to that database and
//! advertising the oldest xmin among its clones' clone points and the
//! window's marks, so that vacuum is held back in the source alone
//! (`pin::advertised`). The source's slot stays the durable record
//! (`pin::slot`); the holder keeps it acquired, disarmed while it holds.
//!
//! The one rule everything here keeps: at every instant the slot is armed,
//! or this process advertises an xmin no newer than any live clone's T.
//! - Taking over: the slot is armed when found (an unacquired cowclone slot
//!   always is); the holder moves it to the oldest T, advertises that, and
//!   only then disarms it.
//! - Moving up (a clone was dropped): the slot is armed, the advertised xmin
//!   withdrawn, the oldest T recomputed under the source lock that every
//!   clone creation holds until commit (so no clone point newer than the
//!   old pin but older than the new one is in flight), then advertised again
//!   and the slot disarmed. New clones never need the pin to move down:
//!   snapshot xmins never go backwards, and a clone of a past point is of
//!   the window, which the pin already holds.
//! - Following the window: the launcher slides it and computes, under the
//!   source lock, the pin the source then needs; the holder moves its
//!   advertised xmin up to that without a transaction (`follow_window`).
//!   While it holds, the holder runs
//!   no transaction (its end would clear the advertised xmin), so it
//!   notices a dropped clone by its witness file going with the database's
//!   directory, not by reading the catalog; the recount then reads the
//!   catalog, which keeps the clone until its `DROP DATABASE` commits
//!   (the dropping backend wakes the holder again then).
//! - Letting go: a `before_shmem_exit` callback re-arms the slot before the
//!   process leaves the proc array, whatever ends it (SIGTERM, an error,
//!   FATAL). SIGKILL makes the postmaster restart the cluster, which
//!   restores the slot armed from disk.

use std::time::Duration;

use pgrx::bgworkers::{BackgroundWorker, DynamicBackgroundWorker, SignalWakeFlags};
use pgrx::prelude::*;

use crate::lifecycle::materialize::reload_settings_if_asked;
use crate::lifecycle::retention;
use crate::pg::compat;
use crate::pin::snapshot::{older_xid, xid_precedes};
use crate::pin::{advertised, slot};
use crate::state::history::{self, History};
use crate::state::record::{self, CloneRecord};
use crate::state::{wal, witness};

/// How often an idle holder looks at its source's clones.
const RECHECK: Duration = Duration::from_secs(1);

/// The name `pg_stat_activity.backend_type` shows for a source's holder.
pub fn worker_type(source_name: &str) -> String {
    format!("cowclone pin holder for {source_name}")
}

/// Asks the postmaster for a holder of `source`. Fails when every
/// `max_worker_processes` slot is taken; the slot's pin stays in force.
pub fn start(
    source: pg_sys::Oid,
    source_name: &str,
    notify_pid: i32,
) -> Result<DynamicBackgroundWorker, ()> {
    crate::lifecycle::workers::start_dynamic(
        &worker_type(source_name),
        "cowclone_pin_holder_main",
        source,
        notify_pid,
    )
}

fn clone_oids(clones: &[CloneRecord]) -> Vec<u32> {
    clones.iter().map(|c| c.clone).collect()
}

/// The oldest xmin among `clones`' clone points and the history window's
/// marks: what the source's pin must hold.
fn oldest_xmin(clones: &[CloneRecord], history: Option<&History>) -> Option<pg_sys::TransactionId> {
    let clones = record::oldest_clone_point(clones).map(|c| c.point.xmin);
    let marks = history.and_then(History::oldest_xmin);
    let oldest = match (clones, marks) {
        (Some(a), Some(b)) => Some(older_xid(a, b)),
        (a, b) => a.or(b),
    };
    oldest.map(pg_sys::TransactionId::from)
}

/// The source's history window, if its retention is on (the launcher
/// records its marks). Under the source lock.
fn window(source: pg_sys::Oid) -> Option<History> {
    history::retention_of(source).map(|_| history::load(source))
}

struct Holding {
    source: pg_sys::Oid,
    xmin: pg_sys::TransactionId,
    clones: Vec<u32>,
    /// Whether the source had a history window at the last count: its
    /// end (the marks file removed) calls for a recount.
    window_open: bool,
    /// Whether the advertised xmin binds vacuum here (see
    /// `compat::backend_xmins_bind`); if not, the slot stays armed.
    advertising: bool,
}

#[pg_guard]
unsafe extern "C-unwind" fn rearm_at_exit(_code: i32, _arg: pg_sys::Datum) {
    // SAFETY: the process is exiting; no lightweight lock this process may
    // hold is needed any more, and re-arming takes two of them.
    unsafe { pg_sys::LWLockReleaseAll() };
    if slot::has_acquired() {
        // SAFETY: this process holds the slot; the proc array still has its
        // advertised xmin while the slot is armed.
        unsafe { slot::arm_acquired() };
    }
}

/// Moves the record files 0.2.0 left for `source`'s clones into the catalog
/// (with a witness of the current format, WAL-logged); returns the clones
/// whose file may go once this transaction commits. Here rather than in the
/// launcher because writing a catalog needs a database connection.
fn migrate_legacy_records(source: pg_sys::Oid) -> Vec<pg_sys::Oid> {
    let mut moved = Vec::new();
    for legacy in record::legacy_records() {
        if legacy.source != u32::from(source) {
            continue;
        }
        let clone = pg_sys::Oid::from(legacy.clone);
        // SAFETY: a syscache lookup of pg_database, in a transaction.
        if unsafe { pg_sys::get_database_name(clone) }.is_null() {
            continue;
        }
        if !record::has_label(clone) {
            record::save_existing(&legacy);
        }
        moved.push(clone);
    }
    moved
}

/// Takes the source's pin over, in a transaction holding the source lock.
/// None when there is nothing to hold (no clones: the slot, if any, is let
/// go of) or another holder holds it.
fn take_over(source: pg_sys::Oid) -> Option<Holding> {
    let migrated = BackgroundWorker::transaction(move || {
        record::lock_source(source);
        migrate_legacy_records(source)
    });
    for clone in &migrated {
        record::remove_legacy_file(*clone);
    }
    if !migrated.is_empty() {
        pgrx::log!(
            "cowclone: moved {} clone record(s) of 0.2.0 into the catalog",
            migrated.len()
        );
    }
    let taken = BackgroundWorker::transaction(move || {
        record::lock_source(source);
        let clones = record::clones_of(source);
        let name = slot::source_slot_name(source);
        let state = slot::source_slot(source);
        record::restore_lost_witnesses(&clones);
        if clones.is_empty() && history::retention_of(source).is_none() {
            retention::forget(source);
            if matches!(state, Some(s) if s.active_pid == 0 && s.persistent) {
                slot::drop_slot(&name);
                wal::log_pin(source, None);
                pgrx::log!(
                    "cowclone: released the pin of database {}: no clones left",
                    u32::from(source)
                );
            }
            return None;
        }
        match state {
            Some(s) if s.active_pid != 0 => return None,
            // SAFETY: seen inactive under the source lock, which every
            // cowclone process takes before acquiring or making this slot.
            Some(_) => unsafe { slot::acquire(&name) },
            None => {
                let legacy: Vec<pg_sys::Oid> =
                    slot::legacy_slots().into_iter().map(|(c, _)| c).collect();
                if !clones
                    .iter()
                    .all(|c| legacy.contains(&pg_sys::Oid::from(c.clone)))
                {
                    pgrx::warning!(
                        "cowclone: database {} has clones but no pin; pinning it again at their oldest clone point",
                        u32::from(source)
                    );
                }
                // SAFETY: in a transaction, no slot acquired by this process.
                unsafe { slot::create_pinned_conservatively(&name) };
                slot::persist_acquired();
            }
        }
        // SAFETY: registered once the slot is acquired, so it runs before
        // PostgreSQL's own exit callback releases the slot.
        unsafe { pg_sys::before_shmem_exit(Some(rearm_at_exit), pg_sys::Datum::from(0)) };
        // A window without marks yet needs the pin the slot records now:
        // its first mark is taken under it.
        let history = window(source);
        let xmin = oldest_xmin(&clones, history.as_ref())
            // SAFETY: the slot is acquired.
            .unwrap_or_else(|| unsafe { slot::acquired_recorded_xmin() });
        wal::log_pin(source, Some(u32::from(xmin)));
        // SAFETY: the acquired slot is armed; moving it to the oldest clone
        // point is what every clone of this source needs (older per-clone
        // pins of 0.1.0 cover it until they are dropped just below).
        unsafe { slot::record_acquired(xmin) };
        for clone in &clones {
            slot::drop_slot(&slot::legacy_slot_name(pg_sys::Oid::from(clone.clone)));
        }
        Some((xmin, clone_oids(&clones)))
    })?;
    let (xmin, clones) = taken;
    let mut holding = Holding {
        source,
        xmin,
        clones,
        window_open: history::exists(source),
        advertising: compat::backend_xmins_bind(),
    };
    if !holding.advertising {
        pgrx::log!("cowclone: old_snapshot_threshold is set, so vacuum may pass a backend's xmin; the pin of database {} stays in every database", u32::from(source));
    }
    holding.hold();
    Some(holding)
}

impl Holding {
    /// Advertises the pin and disarms the slot.
    fn hold(&mut self) {
        if !self.advertising {
            return;
        }
        // SAFETY: no transaction is open; the slot is armed at `xmin`, so
        // advertising it publishes nothing older than a horizon in force,
        // and disarming leaves the advertised xmin holding the source.
        unsafe {
            advertised::advertise(self.xmin);
            slot::disarm_acquired();
        }
    }

    /// Re-arms the slot and withdraws the advertised xmin, so this process
    /// may run a transaction.
    fn stand_down(&mut self) {
        // SAFETY: the slot is acquired; once armed it holds what the
        // advertised xmin held.
        unsafe {
            slot::arm_acquired();
            advertised::withdraw();
        }
    }

    /// Moves the pin up to what the launcher computed when it slid the
    /// source's window (`History::pin_target`). Moving an advertised xmin
    /// up needs no transaction: a horizon computed before sees the older
    /// one, one computed after the newer, and the target was computed under
    /// the source lock after the marks older than it were dropped, so no
    /// clone made since can need anything older.
    fn follow_window(&mut self) {
        let Some(target) = history::pin_target(self.source) else {
            return;
        };
        self.window_open = true;
        let target = pg_sys::TransactionId::from(target);
        if !xid_precedes(u32::from(self.xmin), u32::from(target)) {
            return;
        }
        // SAFETY: no transaction is open; the slot is acquired (disarmed
        // while advertising), and records the new pin before it is advertised.
        unsafe {
            slot::record_acquired(target);
            if self.advertising {
                advertised::advertise(target);
            }
        }
        wal::log_pin(self.source, Some(u32::from(target)));
        self.xmin = target;
    }

    /// Follows the source's clones. False when none are left (the slot is
    /// dropped and the holder ends).
    fn refresh(&mut self) -> bool {
        if record::aside_asked(self.source) {
            pgrx::log!(
                "cowclone: the pin holder of database {} steps aside for a command that needs the database to itself",
                u32::from(self.source)
            );
            // `rearm_at_exit` puts the slot's pin back in force.
            return false;
        }
        let lost = self.advertising && advertised::current() != self.xmin;
        if lost {
            pgrx::warning!(
                "cowclone: the pin holder of database {} lost its advertised xmin; restoring it",
                u32::from(self.source)
            );
            // SAFETY: as in `stand_down`.
            unsafe { slot::arm_acquired() };
        }
        self.follow_window();
        // The clones the pin was computed for, read under the source lock; a
        // clone added since has a clone point no older than the pin (a
        // newer snapshot, or a point of the window the pin holds) and
        // changes nothing. A DROP DATABASE removes the witness before its
        // transaction commits: a recount then still sees the clone, and
        // counts again (at the next check, or woken at its commit) until it
        // is gone. The end of a window (retention switched off, its marks
        // file removed) calls for a recount too: the pin may move up, or go.
        let due = self.window_open && !history::exists(self.source);
        if !due
            && self
                .clones
                .iter()
                .all(|c| witness::exists(pg_sys::Oid::from(*c)))
        {
            if lost {
                self.hold();
            }
            return true;
        }
        self.stand_down();
        let source = self.source;
        let previous = self.xmin;
        let next = BackgroundWorker::transaction(move || {
            record::lock_source(source);
            // Every record counts until its DROP DATABASE commits: the
            // directory goes earlier, before the drop's WAL record, while a
            // standby's sessions in the clone may still be reading.
            let clones = record::clones_of(source);
            record::restore_lost_witnesses(&clones);
            let history = window(source);
            let has_window = history.is_some();
            // SAFETY: the slot is acquired (and armed).
            let recorded = unsafe { slot::acquired_recorded_xmin() };
            match oldest_xmin(&clones, history.as_ref()).or_else(|| has_window.then_some(recorded))
            {
                Some(xmin) => {
                    if xmin != previous {
                        wal::log_pin(source, Some(u32::from(xmin)));
                    }
                    Some((xmin, clone_oids(&clones)))
                }
                None => {
                    slot::drop_acquired();
                    wal::log_pin(source, None);
                    None
                }
            }
        });
        let Some((xmin, clones)) = next else {
            pgrx::log!(
                "cowclone: released the pin of database {}: no clones or history left",
                u32::from(self.source)
            );
            return false;
        };
        // SAFETY: the slot is acquired and armed; `xmin` is the oldest clone
        // point of every clone of the source, counted under the source lock.
        unsafe { slot::record_acquired(xmin) };
        self.xmin = xmin;
        self.clones = clones;
        self.window_open = history::exists(self.source);
        self.hold();
        true
    }
}

/// Commands that need a database to themselves (CREATE DATABASE ...
/// TEMPLATE, ALTER DATABASE ... RENAME) fail while any process is
/// connected to it. Before one runs on a source, its holder is asked to
/// step aside: it re-arms the slot (the pin holds every database meanwhile)
/// and ends, and no new holder starts until this transaction ends.
pub fn step_aside(source: pg_sys::Oid) {
    // Asked even when no holder has the slot acquired: one may be starting,
    // connected but not holding yet. It sees the request before it holds,
    // or at its next check once it does (woken below, or within a second),
    // and PostgreSQL's commands wait up to 5 s for other sessions to leave.
    if slot::source_slot(source).is_none() {
        return;
    }
    record::ask_aside(source);
    remember_aside(source);
    slot::wake_holder(source);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while slot::source_slot(source).is_some_and(|s| s.active_pid != 0) {
        if std::time::Instant::now() > deadline {
            pgrx::warning!(
                "cowclone: the pin holder of database {} did not step aside within 10 s",
                u32::from(source)
            );
            return;
        }
        pgrx::check_for_interrupts!();
        std::thread::sleep(Duration::from_millis(5));
    }
}

static mut ASIDE: Option<pg_sys::Oid> = None;
static mut ASIDE_CALLBACK: bool = false;

fn remember_aside(source: pg_sys::Oid) {
    // SAFETY: backend-local state of this single-threaded backend.
    unsafe {
        if !ASIDE_CALLBACK {
            pg_sys::RegisterXactCallback(Some(end_aside_at_transaction_end), std::ptr::null_mut());
            ASIDE_CALLBACK = true;
        }
        ASIDE = Some(source);
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn end_aside_at_transaction_end(
    event: pg_sys::XactEvent::Type,
    _arg: *mut std::ffi::c_void,
) {
    if !matches!(
        event,
        pg_sys::XactEvent::XACT_EVENT_COMMIT | pg_sys::XactEvent::XACT_EVENT_ABORT
    ) {
        return;
    }
    // SAFETY: backend-local state; the launcher starts a new holder within a second.
    let aside = unsafe { ASIDE };
    if let Some(source) = aside {
        // SAFETY: as above.
        unsafe { ASIDE = None };
        record::end_aside(source);
    }
}

#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn cowclone_pin_holder_main(arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let source = pg_sys::Oid::from(arg.value() as u32);
    // SAFETY: called once, before anything else touches the database; a
    // source that does not allow connections still needs its pin.
    unsafe {
        pg_sys::BackgroundWorkerInitializeConnectionByOid(
            source,
            pg_sys::InvalidOid,
            pg_sys::BGWORKER_BYPASS_ALLOWCONN,
        )
    };
    if record::aside_asked(source) {
        return;
    }
    let Some(mut holding) = take_over(source) else {
        return;
    };
    while BackgroundWorker::wait_latch(Some(RECHECK)) {
        reload_settings_if_asked();
        if !holding.refresh() {
            return;
        }
    }
    // SIGTERM: `rearm_at_exit` puts the slot's pin back in force.
}
