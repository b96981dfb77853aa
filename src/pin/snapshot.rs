//! The clone point T, taken with its source pinned.
//!
//! The cloning backend may be connected to any database, and its own
//! snapshot holds back vacuum only there; so T is pinned through the
//! source's slot (`slot`), which the source's holder later takes over.

use pgrx::{pg_sys, PgSqlErrorCode};
use serde::{Deserialize, Serialize};

use crate::pg::error::CowError;
use crate::pin::slot;

/// T as stored: never depends on pg_subtrans later, because running
/// subtransactions are listed explicitly in `running`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClonePoint {
    pub xmin: u32,
    pub xmax: u32,
    /// Every transaction (top-level or sub) running at T.
    pub running: Vec<u32>,
    pub lsn: u64,
    /// TimestampTz (microseconds since 2000-01-01).
    pub taken_at: i64,
}

/// Whether `a` precedes `b` in PostgreSQL's circular transaction id order.
pub fn xid_precedes(a: u32, b: u32) -> bool {
    // SAFETY: a pure comparison of two transaction ids.
    unsafe { pg_sys::TransactionIdPrecedes(a.into(), b.into()) }
}

/// The older of two transaction ids.
pub fn older_xid(a: u32, b: u32) -> u32 {
    if xid_precedes(b, a) {
        b
    } else {
        a
    }
}

/// A registered snapshot, unregistered when dropped.
pub struct HeldSnapshot(pub pg_sys::Snapshot);

impl HeldSnapshot {
    /// A fresh MVCC snapshot of the whole cluster, registered until dropped.
    pub fn latest() -> Self {
        // SAFETY: inside a transaction; RegisterSnapshot copies the static
        // snapshot GetLatestSnapshot returns.
        Self(unsafe { pg_sys::RegisterSnapshot(pg_sys::GetLatestSnapshot()) })
    }
}

impl Drop for HeldSnapshot {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            // SAFETY: the snapshot was registered by `pin_and_take`; unregistering cannot raise.
            unsafe { pg_sys::UnregisterSnapshot(self.0) };
        }
    }
}

/// How `pin_and_take` made sure T is pinned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PinTaken {
    /// The source's slot already existed. Its pin, in force through the slot
    /// or through its holder, is no newer than any clone point taken now: it
    /// is the oldest clone point of clones made earlier, and snapshot xmins
    /// never go backwards. The caller's lock on the source keeps it from
    /// moving up past T until T's clone is committed and counted.
    Existing,
    /// This backend created the source's slot; it holds it (ephemeral) until
    /// `slot::persist_acquired` and `slot::release_acquired`.
    Created,
}

/// Pins the source, conservatively if it had no pin yet, tells `announce`
/// the xmin of the pin in force and whether this call made the slot (so
/// standbys pin it before T exists: see `state::wal`), then takes T and
/// pins T. The caller holds `record::lock_source(source)` until commit.
pub fn pin_and_take(
    source: pg_sys::Oid,
    announce: impl FnOnce(u32, PinTaken),
) -> (HeldSnapshot, ClonePoint, PinTaken) {
    if slot::has_acquired() {
        CowError::new(
            PgSqlErrorCode::ERRCODE_OBJECT_IN_USE,
            "this session already holds a replication slot",
        )
        .raise();
    }
    let (taken, pin) = match slot::source_slot(source) {
        // Under the source lock only a persistent slot is a pin: an
        // ephemeral one is a failed first clone's, about to go.
        Some(existing) if !existing.persistent => CowError::new(
            PgSqlErrorCode::ERRCODE_OBJECT_IN_USE,
            format!(
                "the pin of database {} is being released by a failed clone",
                u32::from(source)
            ),
        )
        .hint("Retry the clone.")
        .raise(),
        Some(existing) => (PinTaken::Existing, existing.xmin),
        None => {
            // SAFETY: in a transaction, with no slot acquired (checked above).
            unsafe { slot::create_pinned_conservatively(&slot::source_slot_name(source)) };
            (PinTaken::Created, slot::acquired_pin())
        }
    };
    announce(pin, taken);
    let held = HeldSnapshot::latest();
    let snapshot = held.0;
    // SAFETY: `held` is a registered MVCC snapshot; the slot, when this
    // backend made it, is still acquired, and T's xmin is no older than the
    // conservative pin it replaces.
    unsafe {
        if taken == PinTaken::Created {
            slot::pin_acquired_at((*snapshot).xmin);
        }
        let point = point_of(&held);
        (held, point, taken)
    }
}

/// The point a registered snapshot just taken stands for: its running
/// transactions, then the WAL insert position and the clock, read after it
/// (`exact::refine` makes it exact at that position).
pub fn point_of(held: &HeldSnapshot) -> ClonePoint {
    // SAFETY: `held` is a registered MVCC snapshot.
    unsafe {
        let snapshot = held.0;
        ClonePoint {
            xmin: u32::from((*snapshot).xmin),
            xmax: u32::from((*snapshot).xmax),
            running: running_transactions(snapshot),
            lsn: pg_sys::GetXLogInsertRecPtr(),
            taken_at: pg_sys::GetCurrentTimestamp(),
        }
    }
}

/// T's running transactions with subtransactions resolved now, while this
/// backend's snapshot still keeps pg_subtrans for them.
///
/// # Safety
/// `snapshot` must be a registered MVCC snapshot.
unsafe fn running_transactions(snapshot: pg_sys::Snapshot) -> Vec<u32> {
    // SAFETY: guaranteed by the caller; xip/subxip hold xcnt/subxcnt entries.
    unsafe {
        let snap = &*snapshot;
        let top: Vec<u32> = (0..snap.xcnt as usize)
            .map(|i| u32::from(*snap.xip.add(i)))
            .collect();
        let mut running = top.clone();
        if !snap.suboverflowed {
            running
                .extend((0..snap.subxcnt.max(0) as usize).map(|i| u32::from(*snap.subxip.add(i))));
        } else {
            let first_normal = u32::from(pg_sys::FirstNormalTransactionId);
            let mut xid = u32::from(snap.xmin);
            while xid != u32::from(snap.xmax) {
                if !top.contains(&xid) && xid >= first_normal {
                    let parent = u32::from(pg_sys::SubTransGetTopmostTransaction(xid.into()));
                    if parent != xid && top.contains(&parent) {
                        running.push(xid);
                    }
                }
                xid = xid.wrapping_add(1);
            }
        }
        running.sort_unstable();
        running
    }
}

/// A clone point as an MVCC snapshot this backend owns, for reading the
/// source as of the point while the clone is made. Every transaction
/// running at the point is in `xip`, so pg_subtrans is never consulted. Not
/// registered: it must not become this backend's advertised xmin, which
/// may be newer (the point's own pin is the source's).
pub struct PointSnapshot {
    _running: Box<[pg_sys::TransactionId]>,
    snapshot: Box<pg_sys::SnapshotData>,
}

impl PointSnapshot {
    pub fn new(point: &ClonePoint) -> Self {
        let mut running: Box<[pg_sys::TransactionId]> = point
            .running
            .iter()
            .map(|&xid| pg_sys::TransactionId::from(xid))
            .collect();
        // SAFETY: SnapshotData is a plain C struct for which all-zero is a
        // valid (empty) value; the fields an MVCC check reads are set below.
        let mut snapshot: Box<pg_sys::SnapshotData> = Box::new(unsafe { std::mem::zeroed() });
        snapshot.snapshot_type = pg_sys::SnapshotType::SNAPSHOT_MVCC;
        snapshot.xmin = pg_sys::TransactionId::from(point.xmin);
        snapshot.xmax = pg_sys::TransactionId::from(point.xmax);
        snapshot.xip = running.as_mut_ptr();
        snapshot.xcnt = running.len() as u32;
        snapshot.suboverflowed = false;
        snapshot.takenDuringRecovery = false;
        snapshot.copied = true;
        crate::pg::compat::set_snapshot_lsn(&mut snapshot, point.lsn);
        Self {
            _running: running,
            snapshot,
        }
    }

    pub fn as_ptr(&mut self) -> pg_sys::Snapshot {
        &mut *self.snapshot
    }
}
