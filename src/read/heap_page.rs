//! Reading heap pages pinned in shared buffers, the clone's own or its
//! source's, and judging their tuples with a snapshot.
//!
//! Nothing here ever writes a source page: no pruning, no freezing, no
//! killed-item hints. The only change a visibility check may make is setting
//! hint bits through the buffer manager, which PostgreSQL itself does on
//! every read. The clone's own pages are pruned on access, as heapam's scans
//! prune theirs (`prune_local`).

use pgrx::pg_sys;

use crate::pg::compat::{self, RelLocator};
use crate::pg::page::{
    self, HEAP_HOT_UPDATED, HEAP_ONLY_TUPLE, HEAP_XMAX_INVALID, HEAP_XMAX_IS_MULTI,
    HEAP_XMAX_LOCK_ONLY, HEAP_XMIN_COMMITTED, HEAP_XMIN_FROZEN, HEAP_XMIN_INVALID, LP_NORMAL,
    LP_REDIRECT,
};

/// The most tuples a heap page holds (PostgreSQL's `MaxHeapTuplesPerPage`).
pub const MAX_TUPLES_PER_PAGE: usize = compat::MAX_HEAP_TUPLES_PER_PAGE;

/// Where a page comes from.
#[derive(Clone, Copy)]
pub enum PageSource {
    /// The source's storage of a shadowed relation.
    Source {
        locator: RelLocator,
        permanent: bool,
    },
    /// The clone's own (local) heap.
    Local(pg_sys::Relation),
}

/// Pins a heap page.
///
/// # Safety
/// `block` must exist in the relation's main fork; the caller releases the buffer.
pub unsafe fn read(
    from: PageSource,
    block: u32,
    strategy: pg_sys::BufferAccessStrategy,
) -> pg_sys::Buffer {
    let main = pg_sys::ForkNumber::MAIN_FORKNUM;
    let normal = pg_sys::ReadBufferMode::RBM_NORMAL;
    // SAFETY: guaranteed by the caller.
    unsafe {
        match from {
            PageSource::Source { locator, permanent } => {
                compat::read_buffer_shared(locator, block, strategy, permanent)
            }
            PageSource::Local(rel) => {
                pg_sys::ReadBufferExtended(rel, main, block, normal, strategy)
            }
        }
    }
}

/// Lets PostgreSQL prune a page of the clone's own heap before a scan reads
/// it, as heapam's scans do: it removes dead HOT chains only when the page
/// is nearly full and nobody else has it pinned, so updates find room for
/// their next version on the same page. Without it a clone's updated rows
/// spread over new pages between VACUUMs.
///
/// # Safety
/// `buffer` is a pinned, unlocked page of `rel`'s own (local) storage; a
/// source page must never be passed.
pub unsafe fn prune_local(rel: pg_sys::Relation, buffer: pg_sys::Buffer) {
    // SAFETY: guaranteed by the caller; heap_page_prune_opt takes its own
    // cleanup lock conditionally and WAL-logs what it changes.
    unsafe { pg_sys::heap_page_prune_opt(rel, buffer) }
}

/// The page of a pinned buffer, as bytes.
///
/// # Safety
/// The buffer must be pinned and locked for as long as the slice is used.
pub unsafe fn page_bytes<'a>(buffer: pg_sys::Buffer) -> &'a [u8] {
    // SAFETY: guaranteed by the caller; a buffer page is BLCKSZ bytes.
    unsafe { std::slice::from_raw_parts(pg_sys::BufferGetPage(buffer) as *const u8, page::BLCKSZ) }
}

/// The tuple at a normal line pointer, with `t_self` its position in the
/// page's own file (not yet moved to a TID space).
///
/// # Safety
/// The buffer must be pinned and locked; `offset` must be a normal line pointer.
pub unsafe fn tuple_at(
    buffer: pg_sys::Buffer,
    block: u32,
    offset: u16,
    table: pg_sys::Oid,
) -> pg_sys::HeapTupleData {
    // SAFETY: guaranteed by the caller.
    unsafe {
        let bytes = page_bytes(buffer);
        let lp = page::line_pointer(bytes, offset as usize);
        pg_sys::HeapTupleData {
            t_len: lp.len as u32,
            t_self: crate::state::tid::make_tid(block, offset),
            t_tableOid: table,
            t_data: (bytes.as_ptr() as *mut u8).add(lp.off as usize) as pg_sys::HeapTupleHeader,
        }
    }
}

/// The tuple at `offset` if it is a normal line pointer.
///
/// # Safety
/// The buffer must be pinned and at least share-locked.
pub unsafe fn normal_tuple_at(
    buffer: pg_sys::Buffer,
    block: u32,
    offset: u16,
    table: pg_sys::Oid,
) -> Option<pg_sys::HeapTupleData> {
    // SAFETY: guaranteed by the caller.
    unsafe {
        let bytes = page_bytes(buffer);
        if offset == 0 || offset as usize > page::max_offset(bytes) {
            return None;
        }
        if page::line_pointer(bytes, offset as usize).flags != LP_NORMAL {
            return None;
        }
        Some(tuple_at(buffer, block, offset, table))
    }
}

/// The tuple at `offset` if it is a normal line pointer the snapshot sees.
///
/// # Safety
/// The buffer must be pinned and at least share-locked.
pub unsafe fn visible_tuple_at(
    buffer: pg_sys::Buffer,
    block: u32,
    offset: u16,
    table: pg_sys::Oid,
    snapshot: pg_sys::Snapshot,
) -> Option<pg_sys::HeapTupleData> {
    // SAFETY: guaranteed by the caller.
    unsafe {
        let mut tuple = normal_tuple_at(buffer, block, offset, table)?;
        pg_sys::HeapTupleSatisfiesVisibility(&mut tuple, snapshot, buffer).then_some(tuple)
    }
}

/// Offsets of every tuple on the page the snapshot sees, ascending; returns
/// how many and the page's highest offset.
///
/// # Safety
/// The buffer must be pinned and at least share-locked.
pub unsafe fn collect_visible(
    buffer: pg_sys::Buffer,
    block: u32,
    table: pg_sys::Oid,
    snapshot: pg_sys::Snapshot,
    out: &mut [u16; MAX_TUPLES_PER_PAGE],
) -> (usize, u16) {
    // SAFETY: guaranteed by the caller.
    unsafe {
        let bytes = page_bytes(buffer);
        let max = page::max_offset(bytes).min(MAX_TUPLES_PER_PAGE) as u16;
        let mut count = 0;
        if page::is_all_visible(bytes) && is_mvcc(snapshot) {
            // Every tuple is visible to every snapshot not older than the
            // oldest xmin of the VACUUM that set the flag; any change to the
            // page since would have cleared it. That xmin never passes a
            // pinned clone point, so T sees them all too (heapam takes the
            // same shortcut for current snapshots).
            for offset in 1..=max {
                if page::line_pointer(bytes, offset as usize).flags == LP_NORMAL {
                    out[count] = offset;
                    count += 1;
                }
            }
            return (count, max);
        }
        for offset in 1..=max {
            if visible_tuple_at(buffer, block, offset, table, snapshot).is_some() {
                out[count] = offset;
                count += 1;
            }
        }
        (count, max)
    }
}

/// # Safety
/// `snapshot` must be valid.
unsafe fn is_mvcc(snapshot: pg_sys::Snapshot) -> bool {
    // SAFETY: guaranteed by the caller.
    unsafe {
        (*snapshot).snapshot_type == pg_sys::SnapshotType::SNAPSHOT_MVCC
            && !(*snapshot).takenDuringRecovery
    }
}

/// Follows the HOT chain that starts at `offset` (an index entry's target)
/// and returns the member the snapshot sees, if any. An MVCC snapshot sees
/// at most one member of a chain.
///
/// # Safety
/// The buffer must be pinned and at least share-locked.
pub unsafe fn hot_chain_visible(
    buffer: pg_sys::Buffer,
    block: u32,
    start: u16,
    table: pg_sys::Oid,
    snapshot: pg_sys::Snapshot,
) -> Option<pg_sys::HeapTupleData> {
    // SAFETY: guaranteed by the caller; every offset is checked against the
    // page's line pointer array before it is dereferenced.
    unsafe {
        let bytes = page_bytes(buffer);
        let max = page::max_offset(bytes);
        let mut offset = start;
        let mut at_chain_start = true;
        let mut expected_xmin: Option<u32> = None;
        // A chain is never longer than the page has line pointers.
        for _ in 0..=max {
            if offset == 0 || offset as usize > max {
                return None;
            }
            let lp = page::line_pointer(bytes, offset as usize);
            if lp.flags == LP_REDIRECT && at_chain_start {
                offset = lp.off;
                at_chain_start = false;
                continue;
            }
            if lp.flags != LP_NORMAL {
                return None;
            }
            let mut tuple = tuple_at(buffer, block, offset, table);
            let header = &*tuple.t_data;
            // A heap-only tuple cannot start a chain: the entry is stale.
            if at_chain_start && header.t_infomask2 & HEAP_ONLY_TUPLE != 0 {
                return None;
            }
            if let Some(xmin) = expected_xmin {
                if xmin_of(header) != xmin {
                    return None;
                }
            }
            if pg_sys::HeapTupleSatisfiesVisibility(&mut tuple, snapshot, buffer) {
                return Some(tuple);
            }
            if !is_hot_updated(header) {
                return None;
            }
            offset = header.t_ctid.ip_posid;
            at_chain_start = false;
            expected_xmin = Some(update_xid(tuple.t_data));
        }
        None
    }
}

fn xmin_of(header: &pg_sys::HeapTupleHeaderData) -> u32 {
    if header.t_infomask & HEAP_XMIN_FROZEN == HEAP_XMIN_FROZEN {
        u32::from(pg_sys::FrozenTransactionId)
    } else {
        // SAFETY: heap tuples on a page use the t_heap arm of the union.
        u32::from(unsafe { header.t_choice.t_heap.t_xmin })
    }
}

fn is_hot_updated(header: &pg_sys::HeapTupleHeaderData) -> bool {
    let xmin_invalid =
        header.t_infomask & (HEAP_XMIN_COMMITTED | HEAP_XMIN_INVALID) == HEAP_XMIN_INVALID;
    header.t_infomask2 & HEAP_HOT_UPDATED != 0
        && header.t_infomask & HEAP_XMAX_INVALID == 0
        && !xmin_invalid
}

/// The xid that updated a tuple (HeapTupleHeaderGetUpdateXid).
///
/// # Safety
/// `header` must point to a tuple on a pinned, locked page.
pub unsafe fn update_xid(header: pg_sys::HeapTupleHeader) -> u32 {
    // SAFETY: guaranteed by the caller.
    unsafe {
        let mask = (*header).t_infomask;
        if mask & HEAP_XMAX_INVALID == 0
            && mask & HEAP_XMAX_IS_MULTI != 0
            && mask & HEAP_XMAX_LOCK_ONLY == 0
        {
            u32::from(pg_sys::HeapTupleGetUpdateXid(header))
        } else {
            u32::from((*header).t_choice.t_heap.t_xmax)
        }
    }
}
