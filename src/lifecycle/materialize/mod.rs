//! Materializing a clone: every row it still reads from its source is
//! copied into its own storage, one table per transaction (`copy`), until
//! the database no longer depends on its source at all. Then its tables and
//! indexes become plain `heap`, `btree`, ... relations, its record becomes
//! a lineage (it was a clone of the source at T), its witness goes, and its
//! source's pin moves up or goes.
//!
//! The work is done by a background worker connected to the clone, one per
//! clone (`cow.materialize` starts it and waits, or queues the job for the
//! launcher to start). What is queued and what is done are in the catalog,
//! so a job resumes where it was after a restart or a crash: a table whose
//! transaction did not commit is redone. Progress and cancellation go
//! through shared memory (`state::jobs`).
//!
//! Nested clones (a later issue) will have clones of their own: a clone that
//! is the source of another must keep serving it, so `request` refuses it
//! (0A000) until that is built.

mod copy;
mod page;
pub mod request;

use std::time::{Duration, Instant};

use pgrx::bgworkers::{BackgroundWorker, DynamicBackgroundWorker, SignalWakeFlags};
use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use pgrx::prelude::*;
use pgrx::{pg_sys, PgSqlErrorCode};

use crate::pg::error::CowError;
use crate::pg::failpoint;
use crate::pg::page::BLCKSZ;
use crate::pin::slot;
use crate::pin::snapshot::xid_precedes;
use crate::state::jobs::{self, Phase};
use crate::state::{lineage, record, witness};

/// How long one attempt at a table's switch lock waits before letting the
/// readers queued behind it through (and trying again).
pub(crate) const SWITCH_LOCK_TIMEOUT_MS: i32 = 200;

/// `cow.materialize_rate_limit`: source bytes copied per second, in MB (0: no limit).
static RATE_LIMIT: GucSetting<i32> = GucSetting::<i32>::new(0);

pub fn define_settings() {
    GucRegistry::define_int_guc(
        c"cow.materialize_rate_limit",
        c"Megabytes of source pages a materialization copies per second (0: as fast as it can).",
        c"Read by running materializers at every page; a change takes effect after a reload.",
        &RATE_LIMIT,
        0,
        1_000_000,
        GucContext::Sighup,
        GucFlags::default(),
    );
}

fn now() -> i64 {
    // SAFETY: reads the clock.
    unsafe { pg_sys::GetCurrentTimestamp() }
}

/// Sets a setting for the rest of the (sub)transaction, as SET LOCAL would.
pub(crate) fn set_local_setting(name: &std::ffi::CStr, value: &str) {
    let value = std::ffi::CString::new(value).expect("a setting's value has no NUL");
    // SAFETY: a documented setting, set by a superuser worker for this
    // (sub)transaction only.
    unsafe {
        pg_sys::set_config_option(
            name.as_ptr(),
            value.as_ptr(),
            pg_sys::GucContext::PGC_SUSET,
            pg_sys::GucSource::PGC_S_SESSION,
            pg_sys::GucAction::GUC_ACTION_LOCAL,
            true,
            0,
            false,
        );
    }
}

/// The clone's relations of the kinds `relkinds` (an SQL list of `"char"`s)
/// with access method cow, in OID order.
fn relations_on_cow(relkinds: &str) -> Vec<pg_sys::Oid> {
    let query = format!(
        "SELECT c.oid FROM pg_catalog.pg_class c JOIN pg_catalog.pg_am a ON a.oid = c.relam \
         WHERE a.amname = 'cow' AND c.relkind IN ({relkinds}) ORDER BY c.oid"
    );
    Spi::connect(|client| {
        client
            .select(&query, None, &[])
            .map(|rows| {
                rows.filter_map(|row| row.get::<pg_sys::Oid>(1).ok().flatten())
                    .collect::<Vec<_>>()
            })
            .unwrap_or_else(|e| {
                CowError::internal(format!("listing the clone's tables: {e}")).raise()
            })
    })
}

/// The tables and materialized views that may still read their source.
fn candidate_tables() -> Vec<pg_sys::Oid> {
    relations_on_cow("'r', 'm'")
}

/// Every table, materialized view and partitioned table left on cow,
/// whoever made it (their TOAST tables and indexes go with them).
fn cow_tables() -> Vec<pg_sys::Oid> {
    relations_on_cow("'r', 'm', 'p'")
}

/// The pace of a job: its progress in shared memory, the rate limit, and
/// where a cancel or a shutdown is noticed.
pub(crate) struct Pace {
    clone: u32,
    window_start: Instant,
    window_bytes: u64,
    window_rate: i32,
    pub(crate) rows: u64,
}

impl Pace {
    fn new(clone: u32) -> Self {
        Pace {
            clone,
            window_start: Instant::now(),
            window_bytes: 0,
            window_rate: 0,
            rows: 0,
        }
    }

    fn start_relation(&mut self, name: &str, blocks: u32) {
        let now = now();
        jobs::update(self.clone, |j| {
            j.phase = Phase::Copying;
            jobs::set_relation(j, name, blocks as u64, now);
        });
    }

    /// One source page read (and copied if it had rows the clone sees).
    fn block_done(&mut self) {
        jobs::update(self.clone, |j| {
            j.relation_blocks_done += 1;
            j.bytes_done += BLCKSZ as u64;
        });
        self.window_bytes += BLCKSZ as u64;
        self.throttle();
        self.check();
    }

    fn switching(&mut self) {
        jobs::update(self.clone, |j| j.phase = Phase::Switching);
        self.check();
    }

    fn waiting_for_lock(&mut self) {
        sleep(Duration::from_millis(20));
        self.check();
    }

    /// Sleeps as long as the job is ahead of `cow.materialize_rate_limit`.
    fn throttle(&mut self) {
        reload_settings_if_asked();
        let rate = RATE_LIMIT.get();
        if rate != self.window_rate {
            self.window_rate = rate;
            self.window_start = Instant::now();
            self.window_bytes = 0;
        }
        if rate <= 0 {
            return;
        }
        let due =
            Duration::from_secs_f64(self.window_bytes as f64 / (rate as f64 * 1024.0 * 1024.0));
        let elapsed = self.window_start.elapsed();
        if due > elapsed {
            sleep(due - elapsed);
        }
    }

    /// Raises 57014 if the job was cancelled; serves interrupts.
    fn check(&self) {
        pg_sys::check_for_interrupts!();
        if jobs::get(self.clone).is_some_and(|j| j.cancel) {
            CowError::new(
                PgSqlErrorCode::ERRCODE_QUERY_CANCELED,
                "materialization cancelled",
            )
            .raise();
        }
    }
}

pub(crate) fn reload_settings_if_asked() {
    if BackgroundWorker::sighup_received() {
        // SAFETY: what a worker does on SIGHUP, between two pages.
        unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
    }
}

fn sleep(duration: Duration) {
    // SAFETY: waits on this process's latch; postmaster death ends the process.
    unsafe {
        pg_sys::WaitLatch(
            pg_sys::MyLatch,
            (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
            duration.as_millis().max(1) as std::ffi::c_long,
            pg_sys::PG_WAIT_EXTENSION,
        );
        pg_sys::ResetLatch(pg_sys::MyLatch);
    }
}

/// Runs `work` in a transaction of its own with a snapshot (detoasting and
/// SPI need one), committed when it returns.
fn in_transaction<R>(work: impl FnOnce() -> R) -> R {
    // SAFETY: a worker outside any transaction starts and commits its own.
    unsafe {
        pg_sys::StartTransactionCommand();
        pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
    }
    let result = work();
    // SAFETY: as above.
    unsafe {
        if pg_sys::ActiveSnapshotSet() {
            pg_sys::PopActiveSnapshot();
        }
        pg_sys::CommitTransactionCommand();
    }
    result
}

pub fn worker_type(clone_name: &str) -> String {
    format!("cowclone materializer for {clone_name}")
}

/// Asks the postmaster for the materializer of `clone`.
pub fn start(
    clone: pg_sys::Oid,
    clone_name: &str,
    notify_pid: i32,
) -> Result<DynamicBackgroundWorker, ()> {
    crate::lifecycle::workers::start_dynamic(
        &worker_type(clone_name),
        "cowclone_materializer_main",
        clone,
        notify_pid,
    )
}

/// About how many source bytes the job copies: the shadowed relations' sizes.
fn shadowed_bytes(record: &record::CloneRecord) -> u64 {
    let view = crate::read::clone_view::current();
    record
        .shadowed
        .iter()
        .filter_map(|s| view?.source_locator(pg_sys::Oid::from(s.relfilenode)))
        .map(|locator| crate::read::clone_view::source_block_count(locator) as u64 * BLCKSZ as u64)
        .sum()
}

/// What the job did, for `cow.materialize`'s row.
#[derive(Default)]
struct Done {
    tables: u32,
}

/// The job, from queueing it to the lineage.
fn run(clone: pg_sys::Oid) -> Done {
    let started = in_transaction(|| {
        let record = record::read_record(clone)?;
        if lineage::job(clone).is_none() {
            lineage::set_job(clone, Some(&format!("requested {}", now())));
        }
        let tables = candidate_tables();
        let bytes = shadowed_bytes(&record);
        jobs::update(u32::from(clone), |j| {
            j.relations_total = tables.len() as u32;
            j.bytes_total = bytes;
        });
        Some(tables)
    });
    let Some(tables) = started else {
        return Done::default(); // materialized already
    };
    jobs::update(u32::from(clone), |j| j.phase = Phase::Copying);
    let mut pace = Pace::new(u32::from(clone));
    let mut done = Done::default();
    for table in tables {
        pace.check();
        // SAFETY: a transaction of the materializer, connected to the clone.
        let copied = in_transaction(|| unsafe { copy::materialize_table(clone, table, &mut pace) });
        if let Some(copied) = copied {
            done.tables += 1;
            if !copied.indexes_with_source_entries.is_empty() {
                // SAFETY: as above; the table reads no source any more.
                in_transaction(|| unsafe {
                    for index in &copied.indexes_with_source_entries {
                        copy::drop_source_entries(*index);
                    }
                });
            }
        }
        jobs::update(u32::from(clone), |j| {
            j.relations_done += 1;
            j.copying_xid = 0;
        });
        failpoint::reached("materialize_between_tables");
    }
    finish(clone, &mut pace);
    done
}

/// The last steps, once no table reads its source: waiting out snapshots
/// that do not see every table's copy, the plain access methods, and the
/// lineage in place of the record.
fn finish(clone: pg_sys::Oid, pace: &mut Pace) {
    let latest = in_transaction(|| {
        let record = record::read_record(clone)?;
        record
            .materialized
            .iter()
            .map(|m| m.xid)
            .reduce(|a, b| if xid_precedes(a, b) { b } else { a })
            .or(Some(0))
    });
    let Some(latest) = latest else {
        return;
    };
    jobs::update(u32::from(clone), |j| j.phase = Phase::WaitingForSnapshots);
    if latest != 0 {
        // SAFETY: waits for every transaction of this database whose
        // snapshot may not see the last table's copy, holding no lock.
        in_transaction(|| unsafe { pg_sys::WaitForOlderSnapshots(latest.into(), false) });
    }
    jobs::update(u32::from(clone), |j| j.phase = Phase::Finishing);
    for table in in_transaction(cow_tables) {
        pace.check();
        // SAFETY: as above; the lock keeps every scan off the relation while
        // its access method changes.
        in_transaction(|| unsafe {
            copy::lock_patiently(table, pg_sys::AccessExclusiveLock as i32, pace);
            make_plain(table);
        });
    }
    let source = in_transaction(|| {
        let record = record::read_record(clone)?;
        let leftover = cow_tables();
        if !leftover.is_empty() {
            CowError::internal(format!(
                "{} tables still use access method cow",
                leftover.len()
            ))
            .raise();
        }
        lineage::replace_record(&record);
        lineage::set_job(clone, None);
        failpoint::reached("materialize_finish");
        Some(pg_sys::Oid::from(record.source))
    });
    if let Some(source) = source {
        // After the commit: a crash in between leaves a witness beside a
        // lineage, which the launcher removes (`workers`).
        witness::remove(u32::from(clone));
        slot::wake_holder(source);
        pgrx::log!(
            "cowclone: database {} is materialized: it no longer reads its source",
            u32::from(clone)
        );
    }
}

/// Gives a table, its TOAST table and their indexes the plain access
/// methods (heap; the AM each wrapper wraps).
///
/// # Safety
/// In a transaction holding the table's AccessExclusiveLock.
unsafe fn make_plain(table: pg_sys::Oid) {
    // SAFETY: guaranteed by the caller.
    unsafe {
        let rel = pg_sys::relation_open(table, pg_sys::NoLock as i32);
        let mut relations = vec![(table, pg_sys::HEAP_TABLE_AM_OID)];
        let toast = (*(*rel).rd_rel).reltoastrelid;
        let mut tables = vec![rel];
        if toast != pg_sys::InvalidOid {
            relations.push((toast, pg_sys::HEAP_TABLE_AM_OID));
            tables.push(pg_sys::relation_open(
                toast,
                pg_sys::AccessExclusiveLock as i32,
            ));
        }
        for &r in &tables {
            for index in crate::pg::relation::index_oids(r) {
                let index_rel = pg_sys::index_open(index, pg_sys::AccessExclusiveLock as i32);
                let relam = (*(*index_rel).rd_rel).relam;
                pg_sys::index_close(index_rel, pg_sys::NoLock as i32);
                if let Some(wrapped) = crate::read::indexam::wraps(relam) {
                    relations.push((index, wrapped));
                }
            }
        }
        for r in tables {
            pg_sys::relation_close(r, pg_sys::NoLock as i32);
        }
        set_local_setting(c"allow_system_table_mods", "on");
        for &(oid, am) in &relations {
            Spi::run_with_args(
                "UPDATE pg_catalog.pg_class SET relam = $1 WHERE oid = $2",
                &[am.into(), oid.into()],
            )
            .unwrap_or_else(|e| {
                CowError::internal(format!("changing an access method: {e}")).raise()
            });
        }
        pg_sys::CommandCounterIncrement();
        for &(oid, _) in &relations {
            give_unlogged_index_its_init_fork(oid);
        }
    }
}

/// A clone's unlogged index has an empty init fork (its local part is
/// built on first use, so an empty file was right for the wrapper): a plain
/// index needs the empty index its AM writes there, or the next crash
/// leaves it without a metapage.
///
/// # Safety
/// In a transaction holding the index's table's AccessExclusiveLock; the
/// index's access method is its plain one in this transaction.
unsafe fn give_unlogged_index_its_init_fork(oid: pg_sys::Oid) {
    // SAFETY: guaranteed by the caller.
    unsafe {
        let rel = pg_sys::relation_open(oid, pg_sys::NoLock as i32);
        let is_index = (*(*rel).rd_rel).relkind == pg_sys::RELKIND_INDEX as i8;
        let unlogged = (*(*rel).rd_rel).relpersistence == pg_sys::RELPERSISTENCE_UNLOGGED as i8;
        if is_index && unlogged {
            let smgr = pg_sys::RelationGetSmgr(rel);
            let init = pg_sys::ForkNumber::INIT_FORKNUM;
            if !pg_sys::smgrexists(smgr, init) {
                pg_sys::smgrcreate(smgr, init, false);
            }
            if pg_sys::smgrnblocks(smgr, init) == 0 {
                let build_empty = (*(*rel).rd_indam)
                    .ambuildempty
                    .expect("every AM builds empty indexes");
                pg_call!(build_empty(rel));
            }
        }
        pg_sys::relation_close(rel, pg_sys::NoLock as i32);
    }
}

/// Marks the job's process gone, whatever ends it, so the launcher resumes
/// a job whose worker was terminated.
#[pg_guard]
unsafe extern "C-unwind" fn on_worker_exit(_code: std::ffi::c_int, arg: pg_sys::Datum) {
    let clone = arg.value() as u32;
    // SAFETY: this process's pid.
    let me = unsafe { pg_sys::MyProcPid };
    jobs::update(clone, |j| {
        if j.pid == me {
            j.pid = 0;
            j.copying_xid = 0;
        }
    });
}

#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn cowclone_materializer_main(arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP);
    // A terminated materializer ends at its next page with FATAL, leaving
    // the job queued (the launcher resumes it); a cancel (SIGINT) cancels it.
    // SAFETY: before any work.
    unsafe { crate::pg::compat::terminate_at_interrupt_checks() };
    let clone = pg_sys::Oid::from(arg.value() as u32);
    // SAFETY: called once, first; a clone that does not allow connections
    // can still be materialized.
    unsafe {
        pg_sys::BackgroundWorkerInitializeConnectionByOid(
            clone,
            pg_sys::InvalidOid,
            pg_sys::BGWORKER_BYPASS_ALLOWCONN,
        )
    };
    // SAFETY: this process's pid.
    let me = unsafe { pg_sys::MyProcPid };
    if !jobs::claim(u32::from(clone), me, now()) {
        pgrx::log!(
            "cowclone: materialization of database {} already running, or no job slot free",
            u32::from(clone)
        );
        return;
    }
    // SAFETY: registered once; runs before the process leaves shared memory.
    unsafe {
        pg_sys::before_shmem_exit(Some(on_worker_exit), pg_sys::Datum::from(u32::from(clone)))
    };
    let outcome = PgTryBuilder::new(|| Ok(run(clone)))
        .catch_others(|e| {
            let (code, message) = match &e {
                pg_sys::panic::CaughtError::PostgresError(r)
                | pg_sys::panic::CaughtError::ErrorReport(r)
                | pg_sys::panic::CaughtError::RustPanic { ereport: r, .. } => {
                    (r.sql_error_code(), r.message().to_string())
                }
            };
            Err((code, message))
        })
        .execute();
    match outcome {
        Ok(done) => {
            pgrx::log!(
                "cowclone: materialized {} table(s) of database {}",
                done.tables,
                u32::from(clone)
            );
            jobs::finish(u32::from(clone), Phase::Done, None);
        }
        Err((code, message)) => {
            // SAFETY: the error left this worker's transaction aborted (or
            // none); ending it makes a new one possible.
            unsafe { pg_sys::AbortCurrentTransaction() };
            let cancelled = code == PgSqlErrorCode::ERRCODE_QUERY_CANCELED;
            // A failed or cancelled job is not resumed: its queue entry goes.
            PgTryBuilder::new(|| {
                in_transaction(|| lineage::set_job(clone, None));
            })
            .catch_others(|_| {
                // SAFETY: as above.
                unsafe { pg_sys::AbortCurrentTransaction() };
            })
            .execute();
            if cancelled {
                pgrx::log!(
                    "cowclone: materialization of database {} cancelled",
                    u32::from(clone)
                );
                jobs::finish(u32::from(clone), Phase::Cancelled, Some("cancelled"));
            } else {
                pgrx::warning!(
                    "cowclone: materialization of database {} failed: {message}",
                    u32::from(clone)
                );
                jobs::finish(u32::from(clone), Phase::Failed, Some(&message));
            }
        }
    }
}
