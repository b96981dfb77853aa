//! Fetching single rows by TID: row versions for the executor and index
//! scans, the latest version of an updated row, snapshot checks.

use super::*;

#[pg_guard]
pub(super) unsafe extern "C-unwind" fn tuple_tid_valid(
    sscan: pg_sys::TableScanDesc,
    tid: pg_sys::ItemPointer,
) -> bool {
    heap_scan_unless_ours!(sscan, tuple_tid_valid(sscan, tid));
    // SAFETY: a scan begun by scan_begin; the executor passes a valid TID.
    unsafe {
        let scan = cow_scan(sscan);
        match tid::tid_space(&*tid) {
            TidSpace::Source(b) => b < scan.source_blocks,
            TidSpace::Local(b) => b < scan.local_blocks,
        }
    }
}

/// Whether `snapshot` sees a source row that T sees, going by the
/// tombstones it sees. A dirty snapshot sees a row being moved or deleted by
/// a running transaction, and learns that transaction as the row's xmax.
///
/// # Safety
/// `rel` open, `snapshot` valid, inside a transaction.
pub(super) unsafe fn tombstones_allow(
    rel: pg_sys::Relation,
    tid: &pg_sys::ItemPointerData,
    snapshot: pg_sys::Snapshot,
) -> bool {
    // SAFETY: guaranteed by the caller.
    unsafe {
        if snapshot.is_null() {
            return true;
        }
        let dirty = (*snapshot).snapshot_type == pg_sys::SnapshotType::SNAPSHOT_DIRTY;
        if dirty {
            (*snapshot).xmin = pg_sys::InvalidTransactionId;
            (*snapshot).xmax = pg_sys::InvalidTransactionId;
        }
        match tombstone::judge(compat::relfilenode_of(rel), tid, snapshot) {
            Verdict::Visible => true,
            Verdict::Hidden => false,
            Verdict::BeingChanged(xid) => {
                if dirty {
                    (*snapshot).xmax = xid;
                }
                true
            }
        }
    }
}

/// Stores a tuple found on a pinned buffer in a buffer slot, moved to the
/// source TID space. The slot takes its own pin.
///
/// # Safety
/// `slot` must be a buffer heap tuple slot and `buffer` pinned.
pub(super) unsafe fn store_source_tuple(
    mut tuple: pg_sys::HeapTupleData,
    file_block: u32,
    slot: *mut pg_sys::TupleTableSlot,
    buffer: pg_sys::Buffer,
) {
    // SAFETY: guaranteed by the caller; the tuple data lives in the slot
    // itself, as heapam's fetches keep it.
    unsafe {
        tuple.t_self = tid::source_tid(file_block, tuple.t_self.ip_posid);
        let bslot = slot as *mut pg_sys::BufferHeapTupleTableSlot;
        (*bslot).base.tupdata = tuple;
        pg_sys::ExecStoreBufferHeapTuple(&mut (*bslot).base.tupdata, slot, buffer);
        (*slot).tts_tableOid = tuple.t_tableOid;
    }
}

#[pg_guard]
pub(super) unsafe extern "C-unwind" fn tuple_fetch_row_version(
    rel: pg_sys::Relation,
    tid: pg_sys::ItemPointer,
    snapshot: pg_sys::Snapshot,
    slot: *mut pg_sys::TupleTableSlot,
) -> bool {
    // SAFETY: PostgreSQL passes a valid relation, TID and buffer slot.
    unsafe {
        let TidSpace::Source(block) = tid::tid_space(&*tid) else {
            clone_view::refuse_snapshot_before_materialization(rel, snapshot);
            let fetch = heap().tuple_fetch_row_version.expect("heapam fetches");
            return pg_call!(fetch(rel, tid, snapshot, slot));
        };
        let Some(source) = source_of(rel) else {
            return false;
        };
        if block >= source_blocks(Some(source)) {
            return false;
        }
        let t = clone_view::current()
            .expect("a source implies a view")
            .snapshot();
        let buffer = heap_page::read(source, block, std::ptr::null_mut());
        pg_sys::LockBuffer(buffer, pg_sys::BUFFER_LOCK_SHARE as i32);
        let found = heap_page::visible_tuple_at(buffer, block, (*tid).ip_posid, (*rel).rd_id, t);
        pg_sys::LockBuffer(buffer, pg_sys::BUFFER_LOCK_UNLOCK as i32);
        let found = found.filter(|_| tombstones_allow(rel, &*tid, snapshot));
        if let Some(tuple) = found {
            store_source_tuple(tuple, block, slot, buffer);
        }
        pg_sys::ReleaseBuffer(buffer);
        found.is_some()
    }
}

/// A source row's newer versions start at the local row its tombstone
/// names, if it was moved; heapam follows them from there.
#[pg_guard]
pub(super) unsafe extern "C-unwind" fn tuple_get_latest_tid(
    sscan: pg_sys::TableScanDesc,
    tid: pg_sys::ItemPointer,
) {
    // SAFETY: a scan begun by scan_begin and a valid TID; heapam's version
    // only reads the relation and snapshot from the scan's base.
    unsafe {
        let latest = heap().tuple_get_latest_tid.expect("heapam follows TIDs");
        if let TidSpace::Local(_) = tid::tid_space(&*tid) {
            let _local = LocalSizing::enter();
            pg_call!(latest(sscan, tid));
            return;
        }
        let rel = (*sscan).rs_rd;
        let relfilenode = compat::relfilenode_of(rel);
        // Only a move the scan's snapshot sees leads on, and only to a
        // version it sees (heapam's rule: *tid changes to visible versions).
        let snapshot = (*sscan).rs_snapshot;
        let moved = tombstone::for_writer(relfilenode, &*tid)
            .into_iter()
            .find(|t| t.kind == tombstone::MOVED && t.hides_for(snapshot));
        if let Some(moved) = moved {
            let mut successor = moved.successor;
            let _local = LocalSizing::enter();
            pg_call!(latest(sscan, &mut successor));
            let mut slot_tid = successor;
            let fetch = heap().tuple_fetch_row_version.expect("heapam fetches");
            let slot = pg_sys::table_slot_create(rel, std::ptr::null_mut());
            let visible = pg_call!(fetch(rel, &mut slot_tid, snapshot, slot));
            pg_sys::ExecDropSingleTupleTableSlot(slot);
            if visible {
                *tid = successor;
            }
        }
    }
}

#[pg_guard]
pub(super) unsafe extern "C-unwind" fn tuple_satisfies_snapshot(
    rel: pg_sys::Relation,
    slot: *mut pg_sys::TupleTableSlot,
    snapshot: pg_sys::Snapshot,
) -> bool {
    // SAFETY: PostgreSQL passes a buffer slot holding a tuple of `rel`.
    unsafe {
        if let TidSpace::Local(_) = tid::tid_space(&(*slot).tts_tid) {
            let check = heap().tuple_satisfies_snapshot.expect("heapam checks");
            return pg_call!(check(rel, slot, snapshot));
        }
        let bslot = slot as *mut pg_sys::BufferHeapTupleTableSlot;
        let buffer = (*bslot).buffer;
        let t = clone_view::required(&relation_name(rel)).snapshot();
        pg_sys::LockBuffer(buffer, pg_sys::BUFFER_LOCK_SHARE as i32);
        let visible = pg_sys::HeapTupleSatisfiesVisibility((*bslot).base.tuple, t, buffer);
        pg_sys::LockBuffer(buffer, pg_sys::BUFFER_LOCK_UNLOCK as i32);
        visible && tombstones_allow(rel, &(*slot).tts_tid, snapshot)
    }
}

/// An index fetch: source TIDs are resolved here, local ones by heapam.
#[repr(C)]
pub(super) struct CowIndexFetch {
    pub(super) base: pg_sys::IndexFetchTableData,
    pub(super) source: Option<PageSource>,
    pub(super) buffer: pg_sys::Buffer,
    pub(super) block: u32,
    pub(super) local: *mut pg_sys::IndexFetchTableData,
    /// The relation no longer reads its source since this transaction
    /// materialized it: snapshots that do not see it are refused.
    pub(super) materialized: bool,
}

impl CowIndexFetch {
    pub(super) fn release(&mut self) {
        if self.buffer != pg_sys::InvalidBuffer as pg_sys::Buffer {
            // SAFETY: this fetch pinned the buffer and holds no lock on it.
            unsafe { pg_sys::ReleaseBuffer(self.buffer) };
            self.buffer = pg_sys::InvalidBuffer as pg_sys::Buffer;
        }
    }
}

#[pg_guard]
pub(super) unsafe extern "C-unwind" fn index_fetch_begin(
    rel: pg_sys::Relation,
) -> *mut pg_sys::IndexFetchTableData {
    // SAFETY: PostgreSQL passes a valid, open relation; the struct is
    // palloc'd zeroed, then filled in.
    unsafe {
        let source = source_of(rel);
        let fetch = pg_sys::palloc0(std::mem::size_of::<CowIndexFetch>()) as *mut CowIndexFetch;
        (*fetch).base.rel = rel;
        std::ptr::write(&mut (*fetch).source, source);
        (*fetch).materialized = source.is_none()
            && clone_view::current()
                .is_some_and(|view| view.materialized_by(compat::relfilenode_of(rel)).is_some());
        (*fetch).buffer = pg_sys::InvalidBuffer as pg_sys::Buffer;
        let begin = heap().index_fetch_begin.expect("heapam fetches");
        (*fetch).local = pg_call!(begin(rel));
        fetch.cast()
    }
}

#[pg_guard]
pub(super) unsafe extern "C-unwind" fn index_fetch_reset(scan: *mut pg_sys::IndexFetchTableData) {
    // SAFETY: a fetch begun by index_fetch_begin.
    unsafe {
        let fetch = &mut *(scan as *mut CowIndexFetch);
        fetch.release();
        let reset = heap().index_fetch_reset.expect("heapam fetches");
        pg_call!(reset(fetch.local));
    }
}

#[pg_guard]
pub(super) unsafe extern "C-unwind" fn index_fetch_end(scan: *mut pg_sys::IndexFetchTableData) {
    // SAFETY: a fetch begun by index_fetch_begin.
    unsafe {
        let fetch = &mut *(scan as *mut CowIndexFetch);
        fetch.release();
        let end = heap().index_fetch_end.expect("heapam fetches");
        pg_call!(end(fetch.local));
        pg_sys::pfree(scan.cast());
    }
}

/// Resolves an index entry. A source entry is judged with T whatever the
/// query's snapshot, follows its HOT chain in the source, and never reports
/// the row dead: the clone must not mark entries of the source's index.
#[pg_guard]
pub(super) unsafe extern "C-unwind" fn index_fetch_tuple(
    scan: *mut pg_sys::IndexFetchTableData,
    tid: pg_sys::ItemPointer,
    snapshot: pg_sys::Snapshot,
    slot: *mut pg_sys::TupleTableSlot,
    call_again: *mut bool,
    all_dead: *mut bool,
) -> bool {
    // SAFETY: a fetch begun by index_fetch_begin; the executor passes a
    // valid TID, buffer slot and flags.
    unsafe {
        let fetch = &mut *(scan as *mut CowIndexFetch);
        let TidSpace::Source(block) = tid::tid_space(&*tid) else {
            if fetch.materialized {
                clone_view::refuse_snapshot_before_materialization(fetch.base.rel, snapshot);
            }
            let fetch_tuple = heap().index_fetch_tuple.expect("heapam fetches");
            let found = pg_call!(fetch_tuple(
                fetch.local,
                tid,
                snapshot,
                slot,
                call_again,
                all_dead
            ));
            // A dirty snapshot (unique and exclusion checks) reports a
            // running inserter as xmin. A row a materialization is copying
            // in is a source row the check already judged in the source
            // part: waiting for the copier would only deadlock with it.
            let dirty = (*snapshot).snapshot_type == pg_sys::SnapshotType::SNAPSHOT_DIRTY;
            if found && dirty && fetch.source.is_some() && jobs::is_copying((*snapshot).xmin) {
                (*snapshot).xmin = pg_sys::InvalidTransactionId;
                (*snapshot).xmax = pg_sys::InvalidTransactionId;
                *call_again = false;
                return false;
            }
            return found;
        };
        *call_again = false;
        if !all_dead.is_null() {
            *all_dead = false;
        }
        let Some(source) = fetch.source else {
            return false;
        };
        if fetch.buffer == pg_sys::InvalidBuffer as pg_sys::Buffer || fetch.block != block {
            fetch.release();
            fetch.buffer = heap_page::read(source, block, std::ptr::null_mut());
            fetch.block = block;
        }
        let t = clone_view::current()
            .expect("a source implies a view")
            .snapshot();
        let table = (*fetch.base.rel).rd_id;
        pg_sys::LockBuffer(fetch.buffer, pg_sys::BUFFER_LOCK_SHARE as i32);
        let found = heap_page::hot_chain_visible(fetch.buffer, block, (*tid).ip_posid, table, t);
        pg_sys::LockBuffer(fetch.buffer, pg_sys::BUFFER_LOCK_UNLOCK as i32);
        let found = found.filter(|tuple| {
            let member = tid::source_tid(block, tuple.t_self.ip_posid);
            let visible = tombstones_allow(fetch.base.rel, &member, snapshot);
            if visible && (*snapshot).snapshot_type == pg_sys::SnapshotType::SNAPSHOT_MVCC {
                // Named in the clone's TID space: the lock is the clone's, and
                // a clone's write to the row checks exactly this target.
                let xmin = (*tuple.t_data).t_choice.t_heap.t_xmin;
                compat::predicate_lock_row(fetch.base.rel, &member, snapshot, xmin);
            }
            visible
        });
        if let Some(tuple) = found {
            store_source_tuple(tuple, block, slot, fetch.buffer);
        }
        found.is_some()
    }
}
