//! The launcher: a background worker started with the server that, once,
//! removes what a clone interrupted by a crash left behind (`reconcile`),
//! and then, every second, makes sure each source with live clones has a
//! pin holder (`holder`) and lets go of source slots no clone needs.
//!
//! Holders are dynamic workers: they need a `max_worker_processes` slot
//! each. When none is free, the source's slot keeps its pin in force in
//! every database (never no pin), a WARNING says so once, and the launcher
//! tries again every second.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use pgrx::bgworkers::{
    BackgroundWorker, BackgroundWorkerBuilder, BackgroundWorkerStatus, BgWorkerStartTime,
    DynamicBackgroundWorker, SignalWakeFlags,
};
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;

use crate::lifecycle::materialize::reload_settings_if_asked;
use crate::lifecycle::{holder, materialize, reconcile, retention};
use crate::pg::error::CowError;
use crate::pin::slot;
use crate::state::{history, jobs, lineage, record, wal, witness};

const TICK: Duration = Duration::from_secs(1);

pub fn register() {
    BackgroundWorkerBuilder::new("cowclone launcher")
        .set_type("cowclone launcher")
        .set_library("cowclone")
        .set_function("cowclone_launcher_main")
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        .set_restart_time(Some(Duration::from_secs(5)))
        .load();
}

/// Starts a holder for `source` unless one holds its slot; a WARNING (to the
/// client, from `cow.clone`) when no worker slot is free.
pub fn ensure_holder(source: pg_sys::Oid, source_name: &str) {
    if slot::source_slot(source).is_some_and(|s| s.active_pid != 0) {
        return;
    }
    if holder::start(source, source_name, 0).is_err() {
        no_worker_slot(source_name).warn();
    }
}

/// Asks the postmaster for one of cowclone's dynamic workers: `function`
/// in this library, given `argument` (an OID), not restarted when it ends.
/// Fails when every `max_worker_processes` slot is taken.
pub(super) fn start_dynamic(
    worker_type: &str,
    function: &str,
    argument: pg_sys::Oid,
    notify_pid: i32,
) -> Result<DynamicBackgroundWorker, ()> {
    BackgroundWorkerBuilder::new(worker_type)
        .set_type(worker_type)
        .set_library("cowclone")
        .set_function(function)
        .set_argument(Some(pg_sys::Datum::from(u32::from(argument))))
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        .set_restart_time(None)
        .set_notify_pid(notify_pid)
        .load_dynamic()
        .map_err(|_| ())
}

fn no_worker_slot(source_name: &str) -> CowError {
    // SAFETY: a start-up setting, fixed for the life of the server.
    let max = unsafe { pg_sys::max_worker_processes };
    CowError::new(
        PgSqlErrorCode::ERRCODE_WARNING,
        format!("could not start the pin holder of database \"{source_name}\""),
    )
    .detail(format!(
        "All {max} background worker slots (max_worker_processes) are in use. Until a holder starts, the pin of \"{source_name}\"'s clones holds back VACUUM in every database of the cluster."
    ))
    .hint("Raise max_worker_processes (takes a restart), or drop clones of other sources; cowclone retries every second.")
}

#[derive(Default)]
struct Launcher {
    starting: BTreeMap<u32, DynamicBackgroundWorker>,
    warned: BTreeSet<u32>,
    materializers: BTreeMap<u32, DynamicBackgroundWorker>,
    warned_materializers: BTreeSet<u32>,
    /// When each source with history retention is marked next.
    next_marks: BTreeMap<u32, Instant>,
}

impl Launcher {
    /// Starts a materializer for every queued job nobody runs: one queued
    /// without waiting, or one whose worker was ended before it finished.
    fn resume_materializations(&mut self) {
        let queued = BackgroundWorker::transaction(lineage::jobs);
        // SAFETY: this process's pid, for start and stop notices.
        let me = unsafe { pg_sys::MyProcPid };
        for &clone in &queued {
            let running = jobs::get(clone).is_some_and(|j| j.is_running());
            let pending = self.materializers.get(&clone).is_some_and(|h| {
                matches!(h.pid(), Err(BackgroundWorkerStatus::NotYetStarted))
                    || (h.pid().is_ok() && !jobs::get(clone).is_some_and(|j| j.phase.is_over()))
            });
            if running || pending {
                continue;
            }
            match materialize::start(pg_sys::Oid::from(clone), &clone.to_string(), me) {
                Ok(handle) => {
                    self.warned_materializers.remove(&clone);
                    self.materializers.insert(clone, handle);
                }
                Err(()) => {
                    if self.warned_materializers.insert(clone) {
                        pgrx::warning!(
                            "cowclone: could not start the materializer of database {clone}: all max_worker_processes slots are in use; retrying every second"
                        );
                    }
                }
            }
        }
        self.materializers.retain(|c, _| queued.contains(c));
    }

    /// Marks the history of every source with retention whose mark is due
    /// (`retention`). Here rather than in the holder: a transaction of the
    /// holder's would end its advertised xmin, and standing it down meanwhile
    /// would hold back every database at the window's start; the launcher's
    /// own snapshots are as new as any.
    fn record_histories(&mut self) {
        reload_settings_if_asked();
        let retained = BackgroundWorker::transaction(history::retained);
        let now = Instant::now();
        for &(source, _) in &retained {
            if self.next_marks.get(&source).is_some_and(|&at| at > now) {
                continue;
            }
            self.next_marks
                .insert(source, now + retention::mark_interval());
            let oid = pg_sys::Oid::from(source);
            BackgroundWorker::transaction(move || retention::record_history(oid));
        }
        self.next_marks
            .retain(|s, _| retained.iter().any(|(r, _)| r == s));
    }

    fn tick(&mut self) {
        self.resume_materializations();
        self.record_histories();
        // A materialization commits the lineage, then removes the witness:
        // a crash in between leaves one behind.
        for clone in BackgroundWorker::transaction(lineage::materialized_without_database) {
            if witness::exists(pg_sys::Oid::from(clone)) {
                witness::remove(clone);
                pgrx::log!("cowclone: removed the witness of materialized database {clone}");
            }
        }
        let (sources, uncertain) = BackgroundWorker::transaction(sources_with_clones);
        let slots = slot::source_slots();
        for (&source, name) in &sources {
            let oid = pg_sys::Oid::from(source);
            let held = slots
                .iter()
                .any(|(s, state)| *s == oid && state.active_pid != 0);
            if held {
                self.warned.remove(&source);
                continue;
            }
            if record::aside_asked(oid) {
                continue;
            }
            let pending = self.starting.get(&source).is_some_and(|h| {
                matches!(h.pid(), Ok(_) | Err(BackgroundWorkerStatus::NotYetStarted))
            });
            if pending {
                continue;
            }
            // SAFETY: this process's pid, for start and stop notices.
            let me = unsafe { pg_sys::MyProcPid };
            match holder::start(oid, name, me) {
                Ok(handle) => {
                    self.starting.insert(source, handle);
                }
                Err(()) => {
                    if self.warned.insert(source) {
                        no_worker_slot(name).warn();
                    }
                }
            }
        }
        self.starting.retain(|s, _| sources.contains_key(s));
        let unneeded: Vec<pg_sys::Oid> = slots
            .iter()
            .filter(|(s, state)| {
                !sources.contains_key(&u32::from(*s)) && state.persistent && state.active_pid == 0
            })
            .map(|(s, _)| *s)
            .collect();
        if !unneeded.is_empty() && !uncertain {
            BackgroundWorker::transaction(move || release_unneeded(&unneeded));
        }
        if !slot::history_slots().is_empty() {
            BackgroundWorker::transaction(release_unneeded_history);
        }
    }
}

/// Every source with clones, by name, and whether some clone's source
/// could not be known (its record stored out of line, which a process
/// without a database connection cannot read, and no readable witness):
/// then no slot may be released. Writes lost witnesses of the records it
/// can read. In a transaction.
fn sources_with_clones() -> (BTreeMap<u32, String>, bool) {
    let mut sources = BTreeMap::new();
    let mut uncertain = false;
    let clones = record::clones_without_database();
    let readable: Vec<record::CloneRecord> = clones.iter().filter_map(|(_, r)| r.clone()).collect();
    record::restore_lost_witnesses(&readable);
    for (clone, found) in clones {
        let source = match &found {
            Some(r) => Some((r.source, r.source_name.clone())),
            None => witness::read(clone).map(|w| (w.source, w.source.to_string())),
        };
        match source {
            Some((source, name)) => {
                sources.entry(source).or_insert(name);
            }
            None => uncertain = true,
        }
    }
    // A source with a history window keeps its pin (and so a holder) too.
    for (source, _) in history::retained() {
        sources.entry(source).or_insert_with(|| {
            // SAFETY: a syscache lookup of pg_database, in a transaction.
            let name = unsafe { pg_sys::get_database_name(pg_sys::Oid::from(source)) };
            if name.is_null() {
                source.to_string()
            } else {
                // SAFETY: a palloc'd NUL-terminated name.
                unsafe { std::ffi::CStr::from_ptr(name) }
                    .to_string_lossy()
                    .into_owned()
            }
        });
    }
    (sources, uncertain)
}

/// Drops history slots of sources whose retention is off (a failed
/// `cow.set_retention`, or a holder that ended before it forgot them),
/// rechecked under each source's lock.
fn release_unneeded_history() {
    let retained: Vec<u32> = history::retained().into_iter().map(|(s, _)| s).collect();
    for (source, state) in slot::history_slots() {
        if retained.contains(&u32::from(source)) || state.active_pid != 0 {
            continue;
        }
        record::lock_source(source);
        if history::retention_of(source).is_none() {
            slot::drop_slot(&slot::history_slot_name(source));
            history::remove(source);
            pgrx::log!(
                "cowclone: released the history of database {}: its retention is off",
                u32::from(source)
            );
        }
    }
}

/// Drops source slots no clone needs, rechecked under each source's lock
/// (a first clone being made holds it, with the slot acquired), and tells
/// standbys.
fn release_unneeded(sources: &[pg_sys::Oid]) {
    for &source in sources {
        record::lock_source(source);
        let idle = slot::source_slot(source).is_some_and(|s| s.persistent && s.active_pid == 0);
        let (needed, uncertain) = sources_with_clones();
        if idle && !uncertain && !needed.contains_key(&u32::from(source)) {
            slot::drop_slot(&slot::source_slot_name(source));
            wal::log_pin(source, None);
            pgrx::log!(
                "cowclone: released the pin of database {}: no clones left",
                u32::from(source)
            );
        }
    }
}

#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn cowclone_launcher_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    // No database: pg_database, shared locks and replication slots are all it needs.
    BackgroundWorker::connect_worker_to_spi(None, None);
    let removed = BackgroundWorker::transaction(reconcile::remove_interrupted_clones);
    pgrx::log!("cowclone launcher: {removed} interrupted clone(s) cleaned up");
    let mut launcher = Launcher::default();
    loop {
        launcher.tick();
        if !BackgroundWorker::wait_latch(Some(TICK)) {
            break;
        }
    }
    // Ended by SIGTERM: exit code 1 lets the postmaster start it again
    // (unless the server is shutting down).
    // SAFETY: the documented way for a worker to end with a status.
    unsafe { pg_sys::proc_exit(1) };
}
