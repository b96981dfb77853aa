//! What `cow.materialize`, `cow.cancel_materialize` and
//! `cow.materialize_progress` do on the caller's side: checks, starting or
//! queueing the job, waiting for it.

use std::time::{Duration, Instant};

use pgrx::prelude::*;
use pgrx::{pg_sys, PgSqlErrorCode};

use super::{now, sleep, start};
use crate::create::clone::{database_oid, with_database_row};
use crate::pg::error::CowError;
use crate::pg::preload;
use crate::state::jobs::{self, Phase};
use crate::state::{lineage, record};

/// What `cow.materialize` returns.
pub struct Outcome {
    pub status: &'static str,
    pub tables: i64,
    pub bytes: i64,
    pub elapsed_ms: f64,
}

/// The clone's OID, once the caller may change it: its owner (with the
/// owner's privileges) or a superuser, as for ALTER DATABASE.
pub(crate) fn owned_database(name: &str, action: &str) -> pg_sys::Oid {
    let clone = database_oid(name);
    if clone == pg_sys::InvalidOid {
        CowError::new(
            PgSqlErrorCode::ERRCODE_INVALID_CATALOG_NAME,
            format!("database \"{name}\" does not exist"),
        )
        .raise();
    }
    let owner = with_database_row(clone, name, |_, form| form.datdba);
    // SAFETY: a privilege check of the current user in a transaction.
    if !unsafe { pg_sys::has_privs_of_role(pg_sys::GetUserId(), owner) } {
        CowError::new(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("must be owner of database \"{name}\" to {action} it"),
        )
        .raise();
    }
    clone
}

fn refuse_on_standby() {
    // SAFETY: reads shared recovery state.
    if unsafe { pg_sys::RecoveryInProgress() } {
        CowError::new(
            PgSqlErrorCode::ERRCODE_READ_ONLY_SQL_TRANSACTION,
            "cannot materialize a clone during recovery",
        )
        .hint("Run cow.materialize on the primary; the result reaches this standby through WAL.")
        .raise();
    }
}

/// `cow.materialize(clone, wait)`.
pub fn materialize(name: &str, wait: bool) -> Outcome {
    let started = Instant::now();
    preload::require_preloaded();
    refuse_on_standby();
    // SAFETY: the check VACUUM makes (25001): the job commits per table.
    unsafe { pg_sys::PreventInTransactionBlock(true, c"cow.materialize()".as_ptr()) };
    let clone = owned_database(name, "materialize");
    if record::read_record(clone).is_none() {
        if lineage::all().iter().any(|l| l.clone == u32::from(clone)) {
            pgrx::notice!("database \"{name}\" is materialized already");
            return Outcome {
                status: "materialized",
                tables: 0,
                bytes: 0,
                elapsed_ms: 0.0,
            };
        }
        CowError::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("database \"{name}\" is not a clone"),
        )
        .raise();
    }
    // Its own clones need nothing of it: a clone of a clone reads the root
    // source and copies of its parent's storage (`create::nested`).
    if !wait {
        if lineage::job(clone).is_none() {
            lineage::set_job(clone, Some(&format!("requested {}", now())));
        }
        return Outcome {
            status: "queued",
            tables: 0,
            bytes: 0,
            elapsed_ms: started.elapsed().as_secs_f64() * 1000.0,
        };
    }
    let Ok(job) = run_and_wait(clone, name) else {
        // SAFETY: a start-up setting.
        let max = unsafe { pg_sys::max_worker_processes };
        CowError::new(
            PgSqlErrorCode::ERRCODE_CONFIGURATION_LIMIT_EXCEEDED,
            format!("could not start the materializer of \"{name}\""),
        )
        .detail(format!("All {max} background worker slots (max_worker_processes) are in use."))
        .hint("Queue it with cow.materialize(..., wait => false): the launcher starts it once a slot frees.")
        .raise();
    };
    let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
    match job.phase {
        Phase::Done => Outcome {
            status: "materialized",
            tables: job.relations_done as i64,
            bytes: job.bytes_done as i64,
            elapsed_ms,
        },
        Phase::Cancelled => CowError::new(
            PgSqlErrorCode::ERRCODE_QUERY_CANCELED,
            format!("materialization of \"{name}\" was cancelled"),
        )
        .detail("The tables materialized before the cancel stay the clone's own; the others still read the source.")
        .raise(),
        _ => CowError::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("materialization of \"{name}\" failed: {}", job.error_text()),
        )
        .detail("The tables materialized before the failure stay the clone's own; the others still read the source, which the clone answers from exactly as before.")
        .hint("See the server log; cow.materialize can be run again.")
        .raise(),
    }
}

/// Joins the running job of `clone`, or starts its materializer, and waits
/// for the job to end. Err if no worker slot is free to start one.
fn run_and_wait(clone: pg_sys::Oid, name: &str) -> Result<jobs::Job, ()> {
    // Taken before looking: a worker the launcher starts meanwhile has
    // started_at after it, and is the one waited for.
    let asked = now();
    let running = jobs::get(u32::from(clone)).filter(jobs::Job::is_running);
    let since = running.map_or(asked, |j| j.started_at);
    if running.is_none() {
        // SAFETY: this backend's pid, for the worker's start notice.
        start(clone, name, unsafe { pg_sys::MyProcPid })?;
    }
    Ok(wait_for(clone, since))
}

/// Waits until the job of `clone` begun at or after `since` ends; a cancel
/// of this wait (a statement timeout, a cancel request) cancels the job.
fn wait_for(clone: pg_sys::Oid, since: i64) -> jobs::Job {
    let waited = Instant::now();
    PgTryBuilder::new(|| loop {
        sleep(Duration::from_millis(50));
        pg_sys::check_for_interrupts!();
        let job = jobs::get(u32::from(clone)).filter(|j| j.started_at >= since);
        match job {
            Some(j) if j.phase.is_over() => return j,
            Some(j) if j.pid != 0 => {}
            // Its worker went without ending it (terminated): the launcher resumes it.
            Some(_) if lineage::job(clone).is_some() => {}
            Some(j) => return j,
            None if waited.elapsed() > Duration::from_secs(30) => CowError::new(
                PgSqlErrorCode::ERRCODE_CONFIGURATION_LIMIT_EXCEEDED,
                "the materializer did not start",
            )
            .hint("See the server log; cowclone runs at most 8 materializations at once.")
            .raise(),
            None => {}
        }
    })
    .catch_others(|e| {
        jobs::update(u32::from(clone), |j| j.cancel = true);
        e.rethrow()
    })
    .execute()
}

/// `cow.cancel_materialize(clone)`: true if a job was running or queued.
pub fn cancel(name: &str) -> bool {
    preload::require_preloaded();
    let clone = owned_database(name, "cancel the materialization of");
    if let Some(job) = jobs::get(u32::from(clone)).filter(jobs::Job::is_running) {
        jobs::update(u32::from(clone), |j| j.cancel = true);
        let ended = wait_for(clone, job.started_at);
        return ended.phase == Phase::Cancelled;
    }
    if lineage::job(clone).is_some() {
        lineage::set_job(clone, None);
        return true;
    }
    false
}

/// One row of `cow.materialize_progress`.
pub struct Progress {
    pub clone: pg_sys::Oid,
    pub pid: Option<i32>,
    pub phase: &'static str,
    pub relation: Option<String>,
    pub blocks_done: i64,
    pub blocks_total: i64,
    pub bytes_done: i64,
    pub bytes_total: i64,
    pub relations_done: i64,
    pub relations_total: i64,
    pub started_at: i64,
    pub rate_mb_s: Option<f64>,
    pub seconds_left: Option<f64>,
    pub error: Option<String>,
}

pub fn progress() -> Vec<Progress> {
    let now = now();
    jobs::all()
        .into_iter()
        .map(|j| {
            let seconds = (now - j.started_at) as f64 / 1e6;
            let rate = (seconds > 0.0 && j.bytes_done > 0).then(|| j.bytes_done as f64 / seconds);
            let left = rate
                .filter(|_| !j.phase.is_over())
                .map(|r| j.bytes_total.saturating_sub(j.bytes_done) as f64 / r);
            let relation = j.relation_name();
            let error = j.error_text();
            Progress {
                clone: pg_sys::Oid::from(j.clone),
                pid: (j.pid != 0).then_some(j.pid),
                phase: j.phase.label(),
                relation: (!relation.is_empty()).then_some(relation),
                blocks_done: j.relation_blocks_done as i64,
                blocks_total: j.relation_blocks_total as i64,
                bytes_done: j.bytes_done as i64,
                bytes_total: j.bytes_total as i64,
                relations_done: j.relations_done as i64,
                relations_total: j.relations_total as i64,
                started_at: j.started_at,
                rate_mb_s: rate.map(|r| r / (1024.0 * 1024.0)),
                seconds_left: left,
                error: (!error.is_empty()).then_some(error),
            }
        })
        .collect()
}

/// `cow.drop_database(db, force)`: DROP DATABASE, after materializing every
/// clone of `db` when `force` (PostgreSQL's own `DROP DATABASE ... WITH
/// (FORCE)` keeps its meaning, and stays refused while clones exist).
pub fn drop_database(name: &str, force: bool) {
    preload::require_preloaded();
    refuse_on_standby();
    // SAFETY: the check DROP DATABASE makes (25001).
    unsafe { pg_sys::PreventInTransactionBlock(true, c"cow.drop_database()".as_ptr()) };
    let database = database_oid(name);
    if force && database != pg_sys::InvalidOid {
        for clone in record::clones_of(database) {
            // None if the clone is being dropped.
            let Some(clone_name) = crate::lifecycle::guard::database_name(clone.clone) else {
                continue;
            };
            pgrx::notice!("materializing clone \"{clone_name}\" of \"{name}\"");
            materialize_waiting(&clone_name);
        }
    }
    run_top_level_drop(name);
}

/// `materialize` without the transaction-block check its caller made.
fn materialize_waiting(name: &str) {
    let clone = owned_database(name, "materialize");
    if record::read_record(clone).is_none() {
        return;
    }
    let Ok(job) = run_and_wait(clone, name) else {
        CowError::new(
            PgSqlErrorCode::ERRCODE_CONFIGURATION_LIMIT_EXCEEDED,
            format!("could not start the materializer of \"{name}\""),
        )
        .hint("Raise max_worker_processes, or materialize the clones one by one later.")
        .raise();
    };
    if job.phase != Phase::Done {
        CowError::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!(
                "could not materialize clone \"{name}\": {}",
                job.error_text()
            ),
        )
        .detail("Nothing was dropped.")
        .raise();
    }
}

/// Runs `DROP DATABASE name` as the top-level statement it stands for:
/// the caller refused transaction blocks, and nothing follows it in this
/// transaction. Every utility hook (the source guard's included) sees it.
fn run_top_level_drop(name: &str) {
    let dbname = std::ffi::CString::new(name).expect("a database name has no NUL");
    let sql = std::ffi::CString::new(format!("DROP DATABASE {}", quote_identifier(name)))
        .expect("no NUL");
    // SAFETY: palloc0'd nodes, filled in as the parser and planner fill
    // them for this statement; ProcessUtility reads them only.
    unsafe {
        let stmt =
            pg_sys::palloc0(std::mem::size_of::<pg_sys::DropdbStmt>()) as *mut pg_sys::DropdbStmt;
        (*stmt).type_ = pg_sys::NodeTag::T_DropdbStmt;
        (*stmt).dbname = pg_sys::pstrdup(dbname.as_ptr());
        (*stmt).missing_ok = false;
        (*stmt).options = std::ptr::null_mut();
        let planned =
            pg_sys::palloc0(std::mem::size_of::<pg_sys::PlannedStmt>()) as *mut pg_sys::PlannedStmt;
        (*planned).type_ = pg_sys::NodeTag::T_PlannedStmt;
        (*planned).commandType = pg_sys::CmdType::CMD_UTILITY;
        (*planned).canSetTag = true;
        (*planned).utilityStmt = stmt.cast();
        (*planned).stmt_location = -1;
        pg_sys::ProcessUtility(
            planned,
            pg_sys::pstrdup(sql.as_ptr()),
            false,
            pg_sys::ProcessUtilityContext::PROCESS_UTILITY_TOPLEVEL,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            pg_sys::None_Receiver,
            std::ptr::null_mut(),
        );
    }
}

fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}
