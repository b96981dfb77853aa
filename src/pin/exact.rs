//! Exact points: a snapshot that sees exactly the transactions whose commit
//! record ends at or before a WAL position L.
//!
//! A snapshot PostgreSQL takes is not quite that: a transaction leaves the
//! proc array only after its commit record is written (and, with
//! synchronous replication, acknowledged), so a snapshot may still count as
//! running a transaction whose commit record precedes it. `refine` turns a
//! snapshot taken just before L into the exact point at L:
//! 1. wait for every commit in its critical section to leave it (what a
//!    checkpoint waits for): from then on, every commit record before L
//!    has its commit-log entry;
//! 2. every transaction the snapshot counted as running, or that started
//!    since, and that the commit log now says committed, committed either
//!    before L or after: the commit records between L and now, read from
//!    WAL, tell which.
//!
//! `advance` moves an exact point forward to any later L by the commit and
//! abort records in between, which is how a clone as of a past instant is
//! made from the newest mark before it (`state::history`).

use std::collections::HashSet;

use pgrx::{pg_sys, PgSqlErrorCode};

use crate::pg::compat::{self, WalReader, XactEnd, XactRecord};
use crate::pg::error::CowError;
use crate::pin::snapshot::{older_xid, xid_precedes as precedes, ClonePoint};

fn normal(xid: u32) -> bool {
    xid >= u32::from(pg_sys::FirstNormalTransactionId)
}

/// Every transaction-end record that starts in [from, to) and ends by `to`,
/// until `each` returns false.
pub fn xact_records(from: u64, to: u64, mut each: impl FnMut(&XactRecord) -> bool) {
    let to = compat::without_page_header(to);
    if from >= to {
        return;
    }
    let mut reader = WalReader::open(from);
    loop {
        let (_, _, start, end) = reader.read();
        if start >= to || end > to {
            return;
        }
        if let Some(record) = reader.xact_record() {
            if !each(&record) {
                return;
            }
        }
        if reader.next_position() >= to {
            return;
        }
    }
}

/// The exact point at `taken.lsn`, for a snapshot `taken` whose `lsn` was
/// read after the snapshot was taken.
pub fn refine(taken: &ClonePoint) -> ClonePoint {
    compat::wait_for_commits_in_flight();
    // SAFETY: reads the next transaction id under its lock.
    let next_xid = u32::from(unsafe { pg_sys::ReadNextTransactionId() });
    let mut candidates: Vec<u32> = taken.running.clone();
    let mut xid = taken.xmax;
    while precedes(xid, next_xid) {
        if normal(xid) {
            candidates.push(xid);
        }
        xid = xid.wrapping_add(1);
    }
    // SAFETY: commit-log lookups of transactions no older than the
    // snapshot's xmin, which the caller's pin keeps in the commit log.
    let committed_now: Vec<u32> = candidates
        .iter()
        .copied()
        .filter(|&x| unsafe { pg_sys::TransactionIdDidCommit(x.into()) })
        .collect();
    let mut committed_after = HashSet::new();
    if !committed_now.is_empty() {
        let now = compat::flushed_insert_position();
        xact_records(taken.lsn, now, |r| {
            if r.end_kind == XactEnd::Commit {
                committed_after.extend(r.xids.iter().copied());
            }
            true
        });
    }
    let before: HashSet<u32> = committed_now
        .into_iter()
        .filter(|x| !committed_after.contains(x))
        .collect();
    let mut running: Vec<u32> = candidates
        .into_iter()
        .filter(|x| !before.contains(x))
        .collect();
    running.sort_unstable();
    running.dedup();
    finish(running, next_xid, taken.lsn, taken.taken_at)
}

fn finish(running: Vec<u32>, xmax: u32, lsn: u64, taken_at: i64) -> ClonePoint {
    let xmin = running.iter().copied().reduce(older_xid).unwrap_or(xmax);
    ClonePoint {
        xmin,
        xmax,
        running,
        lsn,
        taken_at,
    }
}

/// Where `advance` stops.
#[derive(Clone, Copy, Debug)]
pub enum Until {
    /// At this WAL position.
    Lsn(u64),
    /// Before the first commit stamped later than `time`, or at `limit`
    /// (an insert position read after every commit stamped by then was
    /// written) if there is none.
    Time { time: i64, limit: u64 },
}

/// The exact point at a position after `mark`, by the transaction ends
/// between them. Its time is the newest commit timestamp it includes (the
/// mark's if none), or the requested time.
pub fn advance(mark: &ClonePoint, until: Until) -> ClonePoint {
    let limit = match until {
        Until::Lsn(lsn) => lsn,
        Until::Time { limit, .. } => limit,
    };
    if limit < mark.lsn {
        CowError::new(
            PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
            "cowclone: a point was resolved from a later mark",
        )
        .raise();
    }
    compat::flush_to(limit);
    let mut finished: HashSet<u32> = HashSet::new();
    let mut xmax = mark.xmax;
    let mut position = limit;
    let mut newest_commit = mark.taken_at;
    xact_records(mark.lsn, limit, |r| {
        if r.end_kind == XactEnd::Commit {
            if let Until::Time { time, .. } = until {
                if r.time > time {
                    position = r.start;
                    return false;
                }
            }
            newest_commit = newest_commit.max(r.time);
            for &x in &r.xids {
                if !precedes(x, xmax) {
                    xmax = x.wrapping_add(1);
                }
            }
        }
        finished.extend(r.xids.iter().copied());
        true
    });
    let mut running: Vec<u32> = mark
        .running
        .iter()
        .copied()
        .filter(|x| !finished.contains(x))
        .collect();
    let mut xid = mark.xmax;
    while precedes(xid, xmax) {
        if normal(xid) && !finished.contains(&xid) {
            running.push(xid);
        }
        xid = xid.wrapping_add(1);
    }
    running.sort_unstable();
    running.dedup();
    let taken_at = match until {
        Until::Lsn(_) => newest_commit,
        Until::Time { time, .. } => time,
    };
    finish(running, xmax, position, taken_at)
}
