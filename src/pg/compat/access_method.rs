//! Access method routines and the scan callbacks whose shapes changed:
//! table AM storage and update callbacks, index AM routine fields, TID
//! bitmaps (18 stores offsets compactly), ANALYZE's read stream (17), and
//! table-AM-driven bitmap scans (18).
//!
//! The callbacks whose signatures differ are generic adapters here, over
//! `ShapedScans`, which the table AM implements with shape-free code: the
//! table AM never sees a version, and this module never sees cowclone.

use std::ffi::c_char;

use pgrx::pg_sys;

use super::storage::RelLocator;

/// A table AM's callback giving a relation new storage (TRUNCATE,
/// rewrites): `relation_set_new_filenode` up to 15, `..._filelocator` from 16.
pub type SetNewStorage = unsafe extern "C-unwind" fn(
    pg_sys::Relation,
    *const RelLocator,
    c_char,
    *mut pg_sys::TransactionId,
    *mut pg_sys::MultiXactId,
);

/// A routine's new-storage callback.
pub fn set_new_storage_of(routine: &pg_sys::TableAmRoutine) -> Option<SetNewStorage> {
    #[cfg(before_pg16)]
    return routine.relation_set_new_filenode;
    #[cfg(not(before_pg16))]
    return routine.relation_set_new_filelocator;
}

/// Installs a routine's new-storage callback.
pub fn install_set_new_storage(routine: &mut pg_sys::TableAmRoutine, callback: SetNewStorage) {
    #[cfg(before_pg16)]
    {
        routine.relation_set_new_filenode = Some(callback);
    }
    #[cfg(not(before_pg16))]
    {
        routine.relation_set_new_filelocator = Some(callback);
    }
}

/// What a table AM's `tuple_update` reports about index maintenance:
/// a bool up to 15, `TU_UpdateIndexes` from 16.
#[cfg(before_pg16)]
pub type UpdateIndexes = bool;

#[cfg(not(before_pg16))]
pub type UpdateIndexes = pg_sys::TU_UpdateIndexes::Type;

/// The `UpdateIndexes` value for "every index needs the new row version".
#[cfg(before_pg16)]
pub const UPDATE_ALL_INDEXES: UpdateIndexes = true;

#[cfg(not(before_pg16))]
pub const UPDATE_ALL_INDEXES: UpdateIndexes = pg_sys::TU_UpdateIndexes::TU_All;

// Not in pgrx's bindings. PostgreSQL reports errors by longjmp, not
// unwinding, so it is declared "C"; see store_buffer_tuple for why this one
// call may skip the error boundary.
unsafe extern "C" {
    #[link_name = "ExecStoreBufferHeapTuple"]
    fn ExecStoreBufferHeapTupleUnguarded(
        tuple: pg_sys::HeapTuple,
        slot: *mut pg_sys::TupleTableSlot,
        buffer: pg_sys::Buffer,
    ) -> *mut pg_sys::TupleTableSlot;
}

/// Stores a tuple that lives on a pinned buffer page in a slot (which takes
/// its own pin). This is the per-row call of every scan, so it skips pgrx's
/// error boundary (a sigsetjmp per call, about a tenth of a scan's time)
/// whenever it cannot raise: its one ERROR of its own is for a slot of
/// another type, checked here first. What remains is running out of memory
/// while the slot takes its pin; that ERROR would skip the scan callback's
/// Rust frames, which hold only plain data (nothing to drop or unlock).
///
/// # Safety
/// `tuple` must point into the page of `buffer`, which must be pinned.
pub unsafe fn store_buffer_tuple(
    tuple: pg_sys::HeapTuple,
    slot: *mut pg_sys::TupleTableSlot,
    buffer: pg_sys::Buffer,
) {
    // SAFETY: guaranteed by the caller; the slot's ops pointer identifies its type.
    unsafe {
        if std::ptr::eq((*slot).tts_ops, &raw const pg_sys::TTSOpsBufferHeapTuple) {
            ExecStoreBufferHeapTupleUnguarded(tuple, slot, buffer);
        } else {
            pg_sys::ExecStoreBufferHeapTuple(tuple, slot, buffer);
        }
    }
}

/// Up to 17 `INSERT ... ON CONFLICT` accepts only arbiter indexes whose
/// access method is btree by OID; 18 asks the access method instead.
pub const ARBITERS_MUST_BE_BTREE_BY_OID: bool = cfg!(before_pg18);

/// Makes a wrapper index AM's routine (a copy of the wrapped AM's) keep what
/// cowclone's wrappers promised on 15: no parallel builds (17 lets any AM
/// with `amcanbuildparallel` build in parallel) and no tree height for the
/// planner (18 asks any AM with `amgettreeheight`, which would read the
/// clone's local part, empty until the first write).
///
/// # Safety
/// `routine` must be a valid, writable routine.
pub unsafe fn keep_wrapper_routine_as_on_15(routine: *mut pg_sys::IndexAmRoutine) {
    #[cfg(not(before_pg17))]
    // SAFETY: guaranteed by the caller.
    unsafe {
        (*routine).amcanbuildparallel = false;
    }
    #[cfg(not(before_pg18))]
    // SAFETY: guaranteed by the caller.
    unsafe {
        (*routine).amgettreeheight = None;
    }
    let _ = routine;
}

/// Lets a part's inner index scan count its searches into the wrapper
/// scan's instrumentation (18: EXPLAIN ANALYZE's "Index Searches"), which
/// index_beginscan sets on the wrapper scan only.
///
/// # Safety
/// Both must be valid index scans.
pub unsafe fn share_scan_instrumentation(
    inner: pg_sys::IndexScanDesc,
    outer: pg_sys::IndexScanDesc,
) {
    #[cfg(not(before_pg18))]
    // SAFETY: guaranteed by the caller.
    unsafe {
        (*inner).instrument = (*outer).instrument;
    }
    let _ = (inner, outer);
}

/// One page of a TID bitmap: its block, and either the offsets it names or
/// `None` for a lossy page (every tuple, to be rechecked).
pub struct BitmapPage<'a> {
    pub block: pg_sys::BlockNumber,
    pub offsets: Option<&'a [pg_sys::OffsetNumber]>,
    pub recheck: bool,
}

/// Reads one iteration result (18 stores offsets compactly and hands them
/// out on request, into `offsets`).
///
/// # Safety
/// `result` must be a valid result of tbm_iterate.
unsafe fn bitmap_page<'a>(
    result: *mut pg_sys::TBMIterateResult,
    offsets: &'a mut Vec<pg_sys::OffsetNumber>,
) -> BitmapPage<'a> {
    // SAFETY: guaranteed by the caller.
    unsafe {
        #[cfg(before_pg18)]
        {
            let _ = offsets;
            let ntuples = (*result).ntuples;
            BitmapPage {
                block: (*result).blockno,
                offsets: (ntuples >= 0).then(|| {
                    std::slice::from_raw_parts((*result).offsets.as_ptr(), ntuples as usize)
                }),
                recheck: (*result).recheck,
            }
        }
        #[cfg(not(before_pg18))]
        {
            let lossy = (*result).lossy;
            if !lossy {
                offsets.resize(super::storage::MAX_HEAP_TUPLES_PER_PAGE, 0);
                let n = pg_sys::tbm_extract_page_tuple(
                    result,
                    offsets.as_mut_ptr(),
                    offsets.len() as u32,
                );
                offsets.truncate(n.max(0) as usize);
            }
            BitmapPage {
                block: (*result).blockno,
                offsets: (!lossy).then_some(offsets.as_slice()),
                recheck: (*result).recheck,
            }
        }
    }
}

/// A private TID bitmap of `work_mem` bytes.
///
/// # Safety
/// Inside a transaction; freed with tbm_free.
pub unsafe fn tbm_create() -> *mut pg_sys::TIDBitmap {
    // SAFETY: guaranteed by the caller.
    unsafe {
        let bytes = pg_sys::work_mem as usize * 1024;
        pg_sys::tbm_create(bytes as _, std::ptr::null_mut())
    }
}

/// Calls `each` for every page of a private TID bitmap, in block order.
///
/// # Safety
/// `tbm` must be a valid private bitmap not being iterated.
pub unsafe fn for_each_bitmap_page(tbm: *mut pg_sys::TIDBitmap, mut each: impl FnMut(BitmapPage)) {
    let mut offsets = Vec::new();
    // SAFETY: guaranteed by the caller; the iterator ends before returning.
    unsafe {
        #[cfg(before_pg18)]
        {
            let iterator = pg_sys::tbm_begin_iterate(tbm);
            loop {
                let result = pg_sys::tbm_iterate(iterator);
                if result.is_null() {
                    break;
                }
                each(bitmap_page(result, &mut offsets));
            }
            pg_sys::tbm_end_iterate(iterator);
        }
        #[cfg(not(before_pg18))]
        {
            let mut iterator = pg_sys::tbm_begin_iterate(tbm, std::ptr::null_mut(), 0);
            let mut result: pg_sys::TBMIterateResult = std::mem::zeroed();
            while pg_sys::tbm_iterate(&mut iterator, &mut result) {
                each(bitmap_page(&mut result, &mut offsets));
            }
            pg_sys::tbm_end_iterate(&mut iterator);
        }
    }
}

/// Turns off a bitmap heap scan's read-ahead through the relation's own
/// file (up to 17; from 18 read-ahead is the table AM's, and cowclone's
/// scans do none).
///
/// # Safety
/// `scan` must be a valid bitmap heap scan state.
pub unsafe fn no_bitmap_prefetch(scan: *mut pg_sys::BitmapHeapScanState) {
    // SAFETY: guaranteed by the caller.
    #[cfg(before_pg18)]
    unsafe {
        (*scan).prefetch_maximum = 0;
    }
    #[cfg(not(before_pg18))]
    let _ = scan;
}

/// The scan work a table AM does behind the callbacks whose shape changed
/// between majors (see `install_shaped_scan_callbacks`).
pub trait ShapedScans {
    /// Whether `scan` is the AM's own; others are heapam's, and go to heapam.
    ///
    /// # Safety
    /// `scan` must be a scan the AM's `scan_begin` began.
    unsafe fn is_own_scan(scan: pg_sys::TableScanDesc) -> bool;

    /// Loads the block ANALYZE sampled; false if it is past the end.
    ///
    /// # Safety
    /// `scan` must be one of the AM's own scans.
    unsafe fn analyze_block(
        scan: pg_sys::TableScanDesc,
        block: pg_sys::BlockNumber,
        strategy: pg_sys::BufferAccessStrategy,
    ) -> bool;

    /// Loads one page of a bitmap: whether any of its rows is visible, or
    /// `None` for a block the table does not have.
    ///
    /// # Safety
    /// `scan` must be one of the AM's own scans.
    unsafe fn bitmap_page(scan: pg_sys::TableScanDesc, page: BitmapPage) -> Option<bool>;

    /// The next row of the page `bitmap_page` loaded, if any.
    ///
    /// # Safety
    /// `scan` must be one of the AM's own scans; `slot` the executor's.
    unsafe fn bitmap_tuple(scan: pg_sys::TableScanDesc, slot: *mut pg_sys::TupleTableSlot) -> bool;
}

/// Installs the scan callbacks whose shape changed between majors: ANALYZE's
/// next block (17 hands a read stream instead of a block number) and bitmap
/// scans (18 lets the table AM iterate the bitmap itself).
pub fn install_shaped_scan_callbacks<S: ShapedScans>(routine: &mut pg_sys::TableAmRoutine) {
    routine.scan_analyze_next_block = Some(shaped::scan_analyze_next_block::<S>);
    #[cfg(before_pg18)]
    {
        routine.scan_bitmap_next_block = Some(shaped::scan_bitmap_next_block::<S>);
    }
    routine.scan_bitmap_next_tuple = Some(shaped::scan_bitmap_next_tuple::<S>);
}

/// The callbacks `install_shaped_scan_callbacks` installs: each hands
/// heapam's own scans to heapam and the rest to the `ShapedScans` code.
mod shaped {
    use pgrx::pg_sys;
    use pgrx::prelude::*;

    use super::ShapedScans;

    fn heapam() -> &'static pg_sys::TableAmRoutine {
        // SAFETY: heapam's routine is a static, fully initialised struct.
        unsafe { &*pg_sys::GetHeapamTableAmRoutine() }
    }

    /// Returns heapam's answer for a scan that is not the AM's own.
    macro_rules! heapam_unless_own {
        ($S:ty, $scan:expr, $callback:ident($($arg:expr),*)) => {
            // SAFETY: the scan was begun by the AM's scan_begin, its own or heapam's.
            if !unsafe { <$S>::is_own_scan($scan) } {
                let delegate = heapam().$callback.expect("heapam implements every scan callback");
                #[allow(ffi_unwind_calls)]
                // SAFETY: heapam's callback with the arguments PostgreSQL passed;
                // the boundary turns its longjmp into a Rust-safe error.
                return unsafe {
                    ::pgrx::pg_sys::ffi::pg_guard_ffi_boundary(|| delegate($($arg),*))
                };
            }
        };
    }

    #[cfg(before_pg17)]
    #[pg_guard]
    pub unsafe extern "C-unwind" fn scan_analyze_next_block<S: ShapedScans>(
        scan: pg_sys::TableScanDesc,
        block: pg_sys::BlockNumber,
        strategy: pg_sys::BufferAccessStrategy,
    ) -> bool {
        heapam_unless_own!(S, scan, scan_analyze_next_block(scan, block, strategy));
        // SAFETY: one of the AM's scans; ANALYZE picked the block.
        unsafe { S::analyze_block(scan, block, strategy) }
    }

    /// ANALYZE's stream would read the sampled blocks through the
    /// relation's own file, which for a table with a second source of pages
    /// holds only part of them: the block numbers are taken from it without
    /// reading, and the AM reads them.
    #[cfg(not(before_pg17))]
    #[pg_guard]
    pub unsafe extern "C-unwind" fn scan_analyze_next_block<S: ShapedScans>(
        scan: pg_sys::TableScanDesc,
        stream: *mut pg_sys::ReadStream,
    ) -> bool {
        heapam_unless_own!(S, scan, scan_analyze_next_block(scan, stream));
        loop {
            let mut strategy: pg_sys::BufferAccessStrategy = std::ptr::null_mut();
            // SAFETY: ANALYZE's own stream, never read from.
            let block = unsafe { pg_sys::read_stream_next_block(stream, &mut strategy) };
            if block == pg_sys::InvalidBlockNumber {
                return false;
            }
            // SAFETY: one of the AM's scans.
            if unsafe { S::analyze_block(scan, block, strategy) } {
                return true;
            }
        }
    }

    #[cfg(before_pg18)]
    #[pg_guard]
    pub unsafe extern "C-unwind" fn scan_bitmap_next_block<S: ShapedScans>(
        scan: pg_sys::TableScanDesc,
        result: *mut pg_sys::TBMIterateResult,
    ) -> bool {
        heapam_unless_own!(S, scan, scan_bitmap_next_block(scan, result));
        let mut offsets = Vec::new();
        // SAFETY: the executor's current iteration result for one of the AM's scans.
        unsafe { S::bitmap_page(scan, super::bitmap_page(result, &mut offsets)).unwrap_or(false) }
    }

    #[cfg(before_pg18)]
    #[pg_guard]
    pub unsafe extern "C-unwind" fn scan_bitmap_next_tuple<S: ShapedScans>(
        scan: pg_sys::TableScanDesc,
        result: *mut pg_sys::TBMIterateResult,
        slot: *mut pg_sys::TupleTableSlot,
    ) -> bool {
        heapam_unless_own!(S, scan, scan_bitmap_next_tuple(scan, result, slot));
        // SAFETY: one of the AM's scans, on the page scan_bitmap_next_block loaded.
        unsafe { S::bitmap_tuple(scan, slot) }
    }

    /// From 18 the scan walks the executor's bitmap iterator itself.
    #[cfg(not(before_pg18))]
    #[pg_guard]
    pub unsafe extern "C-unwind" fn scan_bitmap_next_tuple<S: ShapedScans>(
        scan: pg_sys::TableScanDesc,
        slot: *mut pg_sys::TupleTableSlot,
        recheck: *mut bool,
        lossy_pages: *mut u64,
        exact_pages: *mut u64,
    ) -> bool {
        heapam_unless_own!(
            S,
            scan,
            scan_bitmap_next_tuple(scan, slot, recheck, lossy_pages, exact_pages)
        );
        let mut offsets = Vec::new();
        // SAFETY: one of the AM's scans; the executor set its iterator before
        // the first call and the counters are its own.
        unsafe {
            loop {
                if S::bitmap_tuple(scan, slot) {
                    return true;
                }
                let mut result: pg_sys::TBMIterateResult = std::mem::zeroed();
                if !pg_sys::tbm_iterate(&mut (*scan).st.rs_tbmiterator, &mut result) {
                    return false;
                }
                let page = super::bitmap_page(&mut result, &mut offsets);
                *recheck = page.recheck;
                let exact = page.offsets.is_some();
                if S::bitmap_page(scan, page).is_some() {
                    if exact {
                        *exact_pages += 1;
                    } else {
                        *lossy_pages += 1;
                    }
                }
            }
        }
    }
}

/// Ends a run of `index_insert` calls on one index, as `ExecCloseIndices`
/// does: from 17 an AM may keep per-statement insert state (BRIN keeps
/// buffers pinned) that only `index_insert_cleanup` lets go of.
///
/// # Safety
/// `index` open, `info` the IndexInfo the inserts used.
pub unsafe fn index_insert_cleanup(index: pg_sys::Relation, info: *mut pg_sys::IndexInfo) {
    #[cfg(before_pg17)]
    let _ = (index, info);
    #[cfg(not(before_pg17))]
    // SAFETY: guaranteed by the caller.
    unsafe {
        pg_sys::index_insert_cleanup(index, info)
    };
}

/// Deletes from `index` every entry `dead` says is dead (an
/// `index_bulk_delete` with VACUUM's call shape; 16 added the heap to the
/// vacuum info).
///
/// # Safety
/// `index` open under ShareUpdateExclusiveLock or stronger, `heap` its table.
pub unsafe fn bulk_delete_entries(
    index: pg_sys::Relation,
    heap: pg_sys::Relation,
    dead: pg_sys::IndexBulkDeleteCallback,
) {
    // SAFETY: a zeroed IndexVacuumInfo is a valid start; every field the
    // AMs read is set below.
    unsafe {
        let mut info: pg_sys::IndexVacuumInfo = std::mem::zeroed();
        info.index = index;
        #[cfg(not(before_pg16))]
        {
            info.heaprel = heap;
        }
        #[cfg(before_pg16)]
        let _ = heap;
        info.analyze_only = false;
        info.report_progress = false;
        info.estimated_count = true;
        info.message_level = pg_sys::DEBUG2 as i32;
        info.num_heap_tuples = -1.0;
        info.strategy = std::ptr::null_mut();
        let result =
            pg_sys::index_bulk_delete(&mut info, std::ptr::null_mut(), dead, std::ptr::null_mut());
        if !result.is_null() {
            pg_sys::pfree(result.cast());
        }
    }
}
