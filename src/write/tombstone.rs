//! Tombstones: how a clone records its writes to source rows, which it
//! never changes.
//!
//! Each write to a source row X inserts one row in `cow.tombstone`, in the
//! writing transaction, so it is as durable and as visible as the write:
//!
//! * `m` (moved): X was updated; its new version is the local row `successor`.
//! * `d` (deleted): X was deleted.
//! * a row lock, one kind per heapam lock mode: `k` (FOR KEY SHARE), `s`
//!   (FOR SHARE), `n` (FOR NO KEY UPDATE), `l` (FOR UPDATE). X stays visible.
//!   The record exists so that other writers of X wait for the locker when
//!   their modes conflict, as they wait for a heap row's xmax.
//!
//! A snapshot sees X unless it sees a moved or deleted tombstone for X; the
//! successor carries the same xmin and command id as its tombstone, so every
//! snapshot sees exactly one of the two. Writers of X serialize on X's
//! heavyweight tuple lock while they decide, then on the deciding
//! transaction, as heapam writers do.

use std::sync::OnceLock;

use pgrx::pg_sys;
use pgrx::PgSqlErrorCode;

use crate::pg::error::CowError;
use crate::state::tid::{tid_space, TidSpace};

pub const MOVED: u8 = b'm';
pub const DELETED: u8 = b'd';
pub const LOCKED: u8 = b'l';
const LOCK_KINDS: [(u8, pg_sys::LockTupleMode::Type); 4] = [
    (b'k', pg_sys::LockTupleMode::LockTupleKeyShare),
    (b's', pg_sys::LockTupleMode::LockTupleShare),
    (b'n', pg_sys::LockTupleMode::LockTupleNoKeyExclusive),
    (LOCKED, pg_sys::LockTupleMode::LockTupleExclusive),
];

/// The tombstone kind recording a row lock of `mode`.
pub fn lock_kind(mode: pg_sys::LockTupleMode::Type) -> u8 {
    LOCK_KINDS
        .iter()
        .find(|(_, m)| *m == mode)
        .map_or(LOCKED, |(kind, _)| *kind)
}

/// The lock mode a tombstone kind records; moves and deletes hold X as
/// FOR UPDATE does.
pub fn lock_mode(kind: u8) -> pg_sys::LockTupleMode::Type {
    LOCK_KINDS
        .iter()
        .find(|(k, _)| *k == kind)
        .map_or(pg_sys::LockTupleMode::LockTupleExclusive, |(_, mode)| *mode)
}

/// Whether a tombstone kind is a row lock (the row stays visible).
pub fn is_lock(kind: u8) -> bool {
    LOCK_KINDS.iter().any(|(k, _)| *k == kind)
}

/// Attribute numbers of `cow.tombstone`.
const ATT_RELFILENODE: i16 = 1;
const ATT_SOURCE_TID: i16 = 2;
const ATT_KIND: i16 = 3;
const ATT_SUCCESSOR: i16 = 4;

/// `cow.tombstone` and its index, looked up once per backend (a backend's
/// database never changes).
fn relation_oids() -> (pg_sys::Oid, pg_sys::Oid) {
    static OIDS: OnceLock<(u32, u32)> = OnceLock::new();
    let (table, index) = *OIDS.get_or_init(|| {
        // SAFETY: catalog lookups by name inside a transaction.
        unsafe {
            let namespace = pg_sys::get_namespace_oid(c"cow".as_ptr(), true);
            let table = pg_sys::get_relname_relid(c"tombstone".as_ptr(), namespace);
            let index = pg_sys::get_relname_relid(c"tombstone_source".as_ptr(), namespace);
            if table == pg_sys::InvalidOid || index == pg_sys::InvalidOid {
                CowError::new(
                    PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                    "table cow.tombstone is missing in this clone",
                )
                .hint("The source's cowclone extension predates writable clones; update it with ALTER EXTENSION cowclone UPDATE and clone again.")
                .raise();
            }
            (u32::from(table), u32::from(index))
        }
    });
    (pg_sys::Oid::from(table), pg_sys::Oid::from(index))
}

/// One tombstone as a writer or reader sees it.
#[derive(Clone, Copy, Debug)]
pub struct Tombstone {
    /// The source row it is about.
    pub source: pg_sys::ItemPointerData,
    pub kind: u8,
    pub successor: pg_sys::ItemPointerData,
    pub xmin: pg_sys::TransactionId,
    pub cmin: pg_sys::CommandId,
    /// Written by this transaction.
    pub own: bool,
    /// Written by another transaction still running.
    pub in_progress: bool,
}

/// Whether any tombstone exists at all: the common case for a clone only
/// read from, checked before every per-row lookup.
pub fn none_written() -> bool {
    let (table, _) = relation_oids();
    // SAFETY: the table exists (checked above); an AccessShareLock is enough to size it.
    unsafe {
        let rel = pg_sys::relation_open(table, pg_sys::AccessShareLock as i32);
        let blocks = pg_sys::RelationGetNumberOfBlocksInFork(rel, pg_sys::ForkNumber::MAIN_FORKNUM);
        pg_sys::relation_close(rel, pg_sys::AccessShareLock as i32);
        blocks == 0
    }
}

fn dirty_snapshot() -> pg_sys::SnapshotData {
    // SAFETY: SnapshotData is plain data; a zeroed one with the dirty type is
    // what InitDirtySnapshot makes.
    let mut snapshot: pg_sys::SnapshotData = unsafe { std::mem::zeroed() };
    snapshot.snapshot_type = pg_sys::SnapshotType::SNAPSHOT_DIRTY;
    snapshot
}

/// Every tombstone of one source relation, of the row `tid` or of all its
/// rows, read with a dirty snapshot: committed ones, this transaction's, and
/// other running transactions' (`in_progress`). Snapshots are applied by
/// `Tombstone::seen_by`, not by scanning with them: an MVCC index scan of
/// `cow.tombstone` would take serializable read locks on its pages, and
/// every unrelated tombstone insert would then look like a conflict.
///
/// # Safety
/// Inside a transaction.
unsafe fn scan(
    relfilenode: pg_sys::Oid,
    tid: Option<&pg_sys::ItemPointerData>,
    mut each: impl FnMut(Tombstone),
) {
    let (table, index) = relation_oids();
    // SAFETY: guaranteed by the caller; the scan keys point at values that
    // outlive the scan.
    unsafe {
        let rel = pg_sys::table_open(table, pg_sys::AccessShareLock as i32);
        let mut keys: [pg_sys::ScanKeyData; 2] = std::mem::zeroed();
        pg_sys::ScanKeyInit(
            &mut keys[0],
            ATT_RELFILENODE,
            pg_sys::BTEqualStrategyNumber as u16,
            pg_sys::Oid::from(pg_sys::F_OIDEQ),
            pg_sys::Datum::from(relfilenode),
        );
        let mut wanted = tid.copied().unwrap_or(std::mem::zeroed());
        pg_sys::ScanKeyInit(
            &mut keys[1],
            ATT_SOURCE_TID,
            pg_sys::BTEqualStrategyNumber as u16,
            pg_sys::Oid::from(pg_sys::F_TIDEQ),
            pg_sys::Datum::from(&raw mut wanted),
        );
        let nkeys = if tid.is_some() { 2 } else { 1 };
        let mut dirty = dirty_snapshot();
        let sscan =
            pg_sys::systable_beginscan(rel, index, true, &mut dirty, nkeys, keys.as_mut_ptr());
        loop {
            let tuple = pg_sys::systable_getnext(sscan);
            if tuple.is_null() {
                break;
            }
            let desc = (*rel).rd_att;
            // Every column is NOT NULL.
            let attribute = |number: i16| {
                let mut isnull = false;
                pg_sys::heap_getattr(tuple, number as i32, desc, &mut isnull)
            };
            let header = (*tuple).t_data;
            let xmin = (*header).t_choice.t_heap.t_xmin;
            each(Tombstone {
                source: *attribute(ATT_SOURCE_TID).cast_mut_ptr::<pg_sys::ItemPointerData>(),
                kind: attribute(ATT_KIND).value() as u8,
                successor: *attribute(ATT_SUCCESSOR).cast_mut_ptr::<pg_sys::ItemPointerData>(),
                xmin,
                cmin: (*header).t_choice.t_heap.t_field3.t_cid,
                own: pg_sys::TransactionIdIsCurrentTransactionId(xmin),
                // A dirty snapshot learns a running inserter as its xmin.
                in_progress: dirty.xmin != pg_sys::InvalidTransactionId,
            });
        }
        pg_sys::systable_endscan(sscan);
        pg_sys::table_close(rel, pg_sys::AccessShareLock as i32);
    }
}

/// Every tombstone of one relation (committed, this transaction's and
/// running ones), for a materialization copying its rows.
///
/// # Safety
/// Inside a transaction.
pub unsafe fn all_of(relfilenode: pg_sys::Oid) -> Vec<Tombstone> {
    let mut found = Vec::new();
    // SAFETY: guaranteed by the caller.
    unsafe { scan(relfilenode, None, |t| found.push(t)) };
    found
}

/// Deletes every tombstone of a relation that no longer reads its source
/// (its rows were materialized). The caller holds the table's
/// AccessExclusiveLock, so no writer can add one meanwhile.
///
/// # Safety
/// Inside a transaction that may write.
pub unsafe fn forget(relfilenode: pg_sys::Oid) -> u64 {
    let (table, index) = relation_oids();
    // SAFETY: guaranteed by the caller; every tuple returned is deleted
    // before the next is fetched.
    unsafe {
        let rel = pg_sys::table_open(table, pg_sys::RowExclusiveLock as i32);
        let mut key: pg_sys::ScanKeyData = std::mem::zeroed();
        pg_sys::ScanKeyInit(
            &mut key,
            ATT_RELFILENODE,
            pg_sys::BTEqualStrategyNumber as u16,
            pg_sys::Oid::from(pg_sys::F_OIDEQ),
            pg_sys::Datum::from(relfilenode),
        );
        let sscan = pg_sys::systable_beginscan(rel, index, true, std::ptr::null_mut(), 1, &mut key);
        let mut deleted = 0;
        loop {
            let tuple = pg_sys::systable_getnext(sscan);
            if tuple.is_null() {
                break;
            }
            pg_sys::simple_heap_delete(rel, &mut (*tuple).t_self);
            deleted += 1;
        }
        pg_sys::systable_endscan(sscan);
        pg_sys::table_close(rel, pg_sys::RowExclusiveLock as i32);
        deleted
    }
}

/// Every tombstone of `tid` a writer must know of.
///
/// # Safety
/// Inside a transaction.
pub unsafe fn for_writer(
    relfilenode: pg_sys::Oid,
    tid: &pg_sys::ItemPointerData,
) -> Vec<Tombstone> {
    let mut found = Vec::new();
    // SAFETY: guaranteed by the caller.
    unsafe { scan(relfilenode, Some(tid), |t| found.push(t)) };
    found
}

impl Tombstone {
    /// Whether the tombstone moves or deletes its row for `snapshot`: a
    /// move or delete the snapshot sees. Dirty and self snapshots see every
    /// finished one (and this transaction's); MVCC snapshots this
    /// transaction's from earlier commands and others' committed before
    /// them. Any-row, TOAST and non-vacuumable snapshots see no tombstone.
    ///
    /// # Safety
    /// `snapshot` valid.
    pub unsafe fn hides_for(&self, snapshot: pg_sys::Snapshot) -> bool {
        use pg_sys::SnapshotType::*;
        if is_lock(self.kind) {
            return false;
        }
        // SAFETY: guaranteed by the caller.
        unsafe {
            match (*snapshot).snapshot_type {
                SNAPSHOT_MVCC => {
                    if self.own {
                        self.cmin < (*snapshot).curcid
                    } else {
                        !self.in_progress && !pg_sys::XidInMVCCSnapshot(self.xmin, snapshot)
                    }
                }
                SNAPSHOT_SELF | SNAPSHOT_DIRTY => !self.in_progress,
                _ => false,
            }
        }
    }
}

/// Snapshots that see every source row T sees whatever the clone wrote
/// (any-row, TOAST, non-vacuumable), and every snapshot while no tombstone
/// was ever written.
///
/// # Safety
/// `snapshot` valid, inside a transaction.
unsafe fn ignores_tombstones(snapshot: pg_sys::Snapshot) -> bool {
    use pg_sys::SnapshotType::*;
    // SAFETY: guaranteed by the caller.
    let kind = unsafe { (*snapshot).snapshot_type };
    matches!(
        kind,
        SNAPSHOT_ANY | SNAPSHOT_TOAST | SNAPSHOT_NON_VACUUMABLE | SNAPSHOT_HISTORIC_MVCC
    ) || none_written()
}

/// What a snapshot makes of a source row T sees.
pub enum Verdict {
    Visible,
    Hidden,
    /// Visible, being deleted or moved by this running transaction (what a
    /// dirty snapshot reports as the row's xmax).
    BeingChanged(pg_sys::TransactionId),
}

/// Whether `snapshot` sees the source row `tid` (which T sees).
///
/// # Safety
/// Inside a transaction; `snapshot` valid.
pub unsafe fn judge(
    relfilenode: pg_sys::Oid,
    tid: &pg_sys::ItemPointerData,
    snapshot: pg_sys::Snapshot,
) -> Verdict {
    // SAFETY: guaranteed by the caller.
    unsafe {
        if ignores_tombstones(snapshot) {
            return Verdict::Visible;
        }
        let found = for_writer(relfilenode, tid);
        if found.iter().any(|t| t.hides_for(snapshot)) {
            return Verdict::Hidden;
        }
        let dirty = (*snapshot).snapshot_type == pg_sys::SnapshotType::SNAPSHOT_DIRTY;
        match found.iter().find(|t| !is_lock(t.kind) && t.in_progress) {
            Some(running) if dirty => Verdict::BeingChanged(running.xmin),
            _ => Verdict::Visible,
        }
    }
}

/// Source TIDs (file block, offset) of one relation that `snapshot` does
/// not see, sorted, for scans that visit whole pages.
///
/// # Safety
/// Inside a transaction; `snapshot` valid.
pub unsafe fn hidden_set(relfilenode: pg_sys::Oid, snapshot: pg_sys::Snapshot) -> Vec<(u32, u16)> {
    // SAFETY: guaranteed by the caller.
    unsafe {
        if ignores_tombstones(snapshot) {
            return Vec::new();
        }
        let mut hidden = Vec::new();
        scan(relfilenode, None, |t| {
            if t.hides_for(snapshot) {
                if let TidSpace::Source(block) = tid_space(&t.source) {
                    hidden.push((block, t.source.ip_posid));
                }
            }
        });
        hidden.sort_unstable();
        hidden.dedup();
        hidden
    }
}

/// Records a write to the source row `tid` in this transaction, with the
/// writing statement's command id (the new row version's), so a snapshot
/// sees both or neither, whatever advanced the command counter meanwhile.
///
/// # Safety
/// Inside a transaction that may write; the caller holds `tid`'s tuple lock.
pub unsafe fn record(
    relfilenode: pg_sys::Oid,
    tid: &pg_sys::ItemPointerData,
    kind: u8,
    successor: Option<&pg_sys::ItemPointerData>,
    cid: pg_sys::CommandId,
) {
    let (table, index) = relation_oids();
    // SAFETY: guaranteed by the caller; values outlive heap_form_tuple,
    // which copies them, and index_insert, which forms its own tuple.
    unsafe {
        let rel = pg_sys::table_open(table, pg_sys::RowExclusiveLock as i32);
        let index_rel = pg_sys::index_open(index, pg_sys::RowExclusiveLock as i32);
        let mut key = *tid;
        let mut next = successor.copied().unwrap_or(*tid);
        let mut values = [
            pg_sys::Datum::from(relfilenode),
            pg_sys::Datum::from(&raw mut key),
            pg_sys::Datum::from(kind as i8),
            pg_sys::Datum::from(&raw mut next),
        ];
        let mut nulls = [false; 4];
        let tuple = pg_sys::heap_form_tuple((*rel).rd_att, values.as_mut_ptr(), nulls.as_mut_ptr());
        pg_sys::heap_insert(rel, tuple, cid, 0, std::ptr::null_mut());
        let info = pg_sys::BuildIndexInfo(index_rel);
        pg_sys::index_insert(
            index_rel,
            values.as_mut_ptr(),
            nulls.as_mut_ptr(),
            &mut (*tuple).t_self,
            rel,
            pg_sys::IndexUniqueCheck::UNIQUE_CHECK_NO,
            false,
            info,
        );
        pg_sys::heap_freetuple(tuple);
        pg_sys::index_close(index_rel, pg_sys::RowExclusiveLock as i32);
        pg_sys::table_close(rel, pg_sys::RowExclusiveLock as i32);
    }
}

pgrx::extension_sql!(
    r#"
-- One row per write a clone made to a source row (see src/tombstone.rs).
-- Empty outside clones; a clone gets its own, empty, at the clone point.
CREATE TABLE cow.tombstone (
    relfilenode oid NOT NULL,
    source_tid tid NOT NULL,
    kind "char" NOT NULL,
    successor tid NOT NULL
);
CREATE INDEX tombstone_source ON cow.tombstone (relfilenode, source_tid);
COMMENT ON TABLE cow.tombstone IS 'cowclone: writes a clone made to its source''s rows (moved, deleted, locked)';
REVOKE ALL ON cow.tombstone FROM PUBLIC;
"#,
    name = "tombstone_table",
    requires = ["require_preloaded_at_create"],
);
