//! Index builds over both halves: source rows as of T (or none, for the
//! empty local part of a wrapper index), then the local heap.

use super::*;

thread_local! {
    /// Set while a wrapper index builds its empty local part: the build's
    /// table scan then finds nothing.
    static BUILDING_EMPTY: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `build` with table scans for index builds finding no rows.
pub fn with_empty_build_scans<R>(build: impl FnOnce() -> R) -> R {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            BUILDING_EMPTY.with(|b| b.set(false));
        }
    }
    BUILDING_EMPTY.with(|b| b.set(true));
    let _reset = Reset;
    build()
}

/// Evaluates an index predicate as ExecQual does (NULL is false).
///
/// # Safety
/// `qual` was prepared for `econtext`'s executor state.
pub(super) unsafe fn exec_qual(
    qual: *mut pg_sys::ExprState,
    econtext: *mut pg_sys::ExprContext,
) -> bool {
    // SAFETY: guaranteed by the caller.
    unsafe {
        if qual.is_null() {
            return true;
        }
        let old = pg_sys::MemoryContextSwitchTo((*econtext).ecxt_per_tuple_memory);
        let mut isnull = false;
        let eval = (*qual)
            .evalfunc
            .expect("prepared expressions have an evaluator");
        let result = pg_call!(eval(qual, econtext, &mut isnull));
        pg_sys::MemoryContextSwitchTo(old);
        !isnull && result.value() != 0
    }
}

/// Feeds an index build every source row T sees, with source TIDs. Rows
/// moved or deleted since are passed as dead, so a unique index does not
/// count a row and its new local version twice.
///
/// # Safety
/// `table` is a shadowed table, `index` and `info` its index being built.
pub(super) unsafe fn build_from_source_rows(
    table: pg_sys::Relation,
    index: pg_sys::Relation,
    info: *mut pg_sys::IndexInfo,
    callback: pg_sys::IndexBuildCallback,
    state: *mut std::ffi::c_void,
) -> f64 {
    // SAFETY: guaranteed by the caller; every pinned buffer is released and
    // the executor state freed before returning.
    unsafe {
        let Some(source) = source_of(table) else {
            return 0.0;
        };
        let blocks = source_blocks(Some(source));
        let t = clone_view::current()
            .expect("a source implies a view")
            .snapshot();
        let hidden =
            tombstone::hidden_set(compat::relfilenode_of(table), pg_sys::GetLatestSnapshot());
        let estate = pg_sys::CreateExecutorState();
        let econtext = pg_sys::MakePerTupleExprContext(estate);
        let slot = pg_sys::table_slot_create(table, std::ptr::null_mut());
        (*econtext).ecxt_scantuple = slot;
        let predicate = pg_sys::ExecPrepareQual((*info).ii_Predicate, estate);
        let mut values = [pg_sys::Datum::from(0); pg_sys::INDEX_MAX_KEYS as usize];
        let mut isnull = [false; pg_sys::INDEX_MAX_KEYS as usize];
        let mut offsets = [0u16; MAX_TUPLES_PER_PAGE];
        let callback = callback.expect("index builds pass a callback");
        let mut rows = 0.0;
        for block in 0..blocks {
            pgrx::check_for_interrupts!();
            let buffer = heap_page::read(source, block, std::ptr::null_mut());
            pg_sys::LockBuffer(buffer, pg_sys::BUFFER_LOCK_SHARE as i32);
            let (count, _) =
                heap_page::collect_visible(buffer, block, (*table).rd_id, t, &mut offsets);
            pg_sys::LockBuffer(buffer, pg_sys::BUFFER_LOCK_UNLOCK as i32);
            for &offset in &offsets[..count] {
                let tid_block = block + tid::SOURCE_BLOCK_BASE;
                let mut tuple = heap_page::tuple_at(buffer, tid_block, offset, (*table).rd_id);
                compat::store_buffer_tuple(&mut tuple, slot, buffer);
                pg_sys::MemoryContextReset((*econtext).ecxt_per_tuple_memory);
                if !exec_qual(predicate, econtext) {
                    continue;
                }
                pg_sys::FormIndexDatum(
                    info,
                    slot,
                    estate,
                    values.as_mut_ptr(),
                    isnull.as_mut_ptr(),
                );
                let mut tid = tid::source_tid(block, offset);
                let alive = hidden.binary_search(&(block, offset)).is_err();
                pg_call!(callback(
                    index,
                    &mut tid,
                    values.as_mut_ptr(),
                    isnull.as_mut_ptr(),
                    alive,
                    state
                ));
                rows += 1.0;
            }
            clear_slot(slot);
            pg_sys::ReleaseBuffer(buffer);
        }
        pg_sys::ExecDropSingleTupleTableSlot(slot);
        pg_sys::FreeExecutorState(estate);
        // FormIndexDatum cached compiled expressions in the freed state;
        // heapam's pass over the local heap must compile its own.
        (*info).ii_ExpressionsState = std::ptr::null_mut();
        (*info).ii_PredicateState = std::ptr::null_mut();
        rows
    }
}

/// Index builds: source rows first (for a shadowed table), then heapam's
/// own build scan of the local heap, on a heap view.
#[pg_guard]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe extern "C-unwind" fn index_build_range_scan(
    table: pg_sys::Relation,
    index: pg_sys::Relation,
    info: *mut pg_sys::IndexInfo,
    allow_sync: bool,
    anyvisible: bool,
    progress: bool,
    start: pg_sys::BlockNumber,
    numblocks: pg_sys::BlockNumber,
    callback: pg_sys::IndexBuildCallback,
    state: *mut std::ffi::c_void,
    scan: pg_sys::TableScanDesc,
) -> f64 {
    // SAFETY: as above; a caller-provided scan (parallel builds) is never
    // one of ours, as shadowed tables get no parallel builds.
    unsafe {
        if BUILDING_EMPTY.with(|b| b.get()) {
            if !scan.is_null() {
                pg_sys::table_endscan(scan);
            }
            return 0.0;
        }
        let mut rows = 0.0;
        let mut scan = scan;
        if !scan.is_null() && is_cow_scan(scan) {
            // amcheck's heapallindexed check begins its own scan of the
            // table (one of ours) for the build to use; ours reads both
            // parts below, with the transaction's snapshot.
            pg_sys::table_endscan(scan);
            scan = std::ptr::null_mut();
        }
        // A wrapper index's local part covers local rows only (BRIN's
        // summarization asks for block ranges of it).
        let local_part_only = crate::read::indexam::is_shadowed_index(index);
        if is_shadowed(table) && !local_part_only {
            let relam = (*(*index).rd_rel).relam;
            let brin = relam == pg_sys::BRIN_AM_OID
                || crate::read::indexam::wraps(relam) == Some(pg_sys::BRIN_AM_OID);
            if brin || start != 0 || numblocks != pg_sys::InvalidBlockNumber || !scan.is_null() {
                refuse("build a BRIN or parallel index on", table)
            }
            rows += build_from_source_rows(table, index, info, callback, state);
        }
        let view = heap_view(table);
        // A parallel build hands over a heapam scan it began on the table
        // itself, and heapam's build checks the scan's relation too, then
        // ends the scan. So the scan is moved to the view, holding a
        // reference to it for the end of the scan to release, and the
        // reference the scan took on the table is released here.
        if !scan.is_null() {
            pg_sys::RelationIncrementReferenceCount(view.rel);
            (*scan).rs_rd = view.rel;
        }
        let build = heap().index_build_range_scan.expect("heapam builds");
        rows += pg_call!(build(
            view.rel, index, info, allow_sync, anyvisible, progress, start, numblocks, callback,
            state, scan
        ));
        if !scan.is_null() {
            pg_sys::RelationDecrementReferenceCount(table);
        }
        view.close();
        rows
    }
}

/// CREATE INDEX CONCURRENTLY's second pass: source rows never change, and
/// the build indexed every one, so only the local heap has rows to add.
#[pg_guard]
pub(super) unsafe extern "C-unwind" fn index_validate_scan(
    table: pg_sys::Relation,
    index: pg_sys::Relation,
    info: *mut pg_sys::IndexInfo,
    snapshot: pg_sys::Snapshot,
    state: *mut pg_sys::ValidateIndexState,
) {
    // SAFETY: as above.
    unsafe {
        let view = heap_view(table);
        let validate = heap().index_validate_scan.expect("heapam validates");
        pg_call!(validate(view.rel, index, info, snapshot, state));
        view.close();
    }
}
