//! TABLESAMPLE and ANALYZE: sampling the clone's rows, as T sees the
//! source's and as heapam judges the local ones.

use super::*;

#[pg_guard]
pub(super) unsafe extern "C-unwind" fn scan_sample_next_block(
    sscan: pg_sys::TableScanDesc,
    scanstate: *mut pg_sys::SampleScanState,
) -> bool {
    heap_scan_unless_ours!(sscan, scan_sample_next_block(sscan, scanstate));
    // SAFETY: a scan begun by scan_begin; the executor passes its sample
    // state, whose tsmroutine is the sampling method's.
    unsafe {
        let scan = cow_scan(sscan);
        let total = scan.total_blocks();
        if total == 0 {
            return false;
        }
        let tsm = (*scanstate).tsmroutine;
        let block = match (*tsm).NextSampleBlock {
            Some(next_block) => pg_call!(next_block(scanstate, total)),
            None if scan.block == NO_BLOCK => 0,
            None if scan.block + 1 < total => scan.block + 1,
            None => pg_sys::InvalidBlockNumber,
        };
        if block == pg_sys::InvalidBlockNumber || block >= total {
            scan.release();
            return false;
        }
        scan.load(block);
        true
    }
}

#[pg_guard]
pub(super) unsafe extern "C-unwind" fn scan_sample_next_tuple(
    sscan: pg_sys::TableScanDesc,
    scanstate: *mut pg_sys::SampleScanState,
    slot: *mut pg_sys::TupleTableSlot,
) -> bool {
    heap_scan_unless_ours!(sscan, scan_sample_next_tuple(sscan, scanstate, slot));
    // SAFETY: as in scan_sample_next_block, whose page is pinned.
    unsafe {
        let scan = cow_scan(sscan);
        let next_tuple = (*(*scanstate).tsmroutine)
            .NextSampleTuple
            .expect("every sampling method picks tuples");
        loop {
            pgrx::check_for_interrupts!();
            let offset = pg_call!(next_tuple(scanstate, scan.block, scan.max_offset));
            if offset == 0 {
                clear_slot(slot);
                return false;
            }
            if let Ok(position) = scan.offsets[..scan.count].binary_search(&offset) {
                scan.index = position as isize;
                scan.store(slot);
                return true;
            }
        }
    }
}

/// Pins the block ANALYZE sampled (compat's `ShapedScans` adapter calls
/// this); false if it is past the end.
///
/// # Safety
/// `sscan` must be one of our scans.
pub(super) unsafe fn analyze_block(
    sscan: pg_sys::TableScanDesc,
    blockno: pg_sys::BlockNumber,
    bstrategy: pg_sys::BufferAccessStrategy,
) -> bool {
    // SAFETY: guaranteed by the caller.
    let scan = unsafe { cow_scan(sscan) };
    if blockno >= scan.total_blocks() {
        scan.release();
        return false;
    }
    let own = scan.strategy;
    scan.strategy = bstrategy;
    scan.pin(blockno);
    scan.strategy = own;
    scan.analyzed = false;
    true
}

/// ANALYZE samples what the clone sees: source rows T sees (the others do
/// not exist for the clone, live or dead), and local rows judged as heapam's
/// ANALYZE judges them.
#[pg_guard]
pub(super) unsafe extern "C-unwind" fn scan_analyze_next_tuple(
    sscan: pg_sys::TableScanDesc,
    oldest_xmin: pg_sys::TransactionId,
    liverows: *mut f64,
    deadrows: *mut f64,
    slot: *mut pg_sys::TupleTableSlot,
) -> bool {
    heap_scan_unless_ours!(
        sscan,
        scan_analyze_next_tuple(sscan, oldest_xmin, liverows, deadrows, slot)
    );
    // SAFETY: a scan whose page scan_analyze_next_block pinned; the counters
    // are ANALYZE's own.
    unsafe {
        let scan = cow_scan(sscan);
        if scan.block == NO_BLOCK {
            clear_slot(slot);
            return false;
        }
        if !scan.analyzed {
            pg_sys::LockBuffer(scan.buffer, pg_sys::BUFFER_LOCK_SHARE as i32);
            let (live, dead) = classify_for_analyze(scan, oldest_xmin);
            pg_sys::LockBuffer(scan.buffer, pg_sys::BUFFER_LOCK_UNLOCK as i32);
            *liverows += live as f64;
            *deadrows += dead as f64;
            scan.analyzed = true;
            scan.index = -1;
        }
        if ((scan.index + 1) as usize) < scan.count {
            scan.index += 1;
            scan.store(slot);
            return true;
        }
        scan.release();
        clear_slot(slot);
        false
    }
}

/// Fills `scan.offsets` with the tuples to sample; returns (live, dead).
///
/// # Safety
/// The scan's buffer must be pinned and share-locked.
pub(super) unsafe fn classify_for_analyze(
    scan: &mut CowScan,
    oldest_xmin: pg_sys::TransactionId,
) -> (usize, usize) {
    // SAFETY: guaranteed by the caller.
    unsafe {
        let table = (*scan.base.rs_rd).rd_id;
        if scan.from_source {
            let t = clone_view::current()
                .expect("source blocks imply a view")
                .snapshot();
            let (count, max) = heap_page::collect_visible(
                scan.buffer,
                scan.file_block,
                table,
                t,
                &mut scan.offsets,
            );
            scan.count = count;
            scan.max_offset = max;
            // Rows the clone moved or deleted are not dead for VACUUM to
            // find: they are the source's, and counting them would call
            // autovacuum forever.
            let dropped = scan.drop_hidden();
            return (count - dropped, 0);
        }
        let max = crate::pg::page::max_offset(heap_page::page_bytes(scan.buffer))
            .min(MAX_TUPLES_PER_PAGE) as u16;
        let (mut live, mut dead, mut count) = (0, 0, 0);
        for offset in 1..=max {
            let Some(mut tuple) =
                heap_page::normal_tuple_at(scan.buffer, scan.file_block, offset, table)
            else {
                continue;
            };
            use pg_sys::HTSV_Result::*;
            let sample =
                match pg_sys::HeapTupleSatisfiesVacuum(&mut tuple, oldest_xmin, scan.buffer) {
                    HEAPTUPLE_LIVE => true,
                    HEAPTUPLE_DEAD | HEAPTUPLE_RECENTLY_DEAD => {
                        dead += 1;
                        false
                    }
                    HEAPTUPLE_INSERT_IN_PROGRESS => pg_sys::TransactionIdIsCurrentTransactionId(
                        (*tuple.t_data).t_choice.t_heap.t_xmin,
                    ),
                    HEAPTUPLE_DELETE_IN_PROGRESS => {
                        let mine = pg_sys::TransactionIdIsCurrentTransactionId(
                            heap_page::update_xid(tuple.t_data).into(),
                        );
                        if mine {
                            dead += 1;
                        }
                        !mine
                    }
                    _ => false,
                };
            if sample {
                live += 1;
                scan.offsets[count] = offset;
                count += 1;
            }
        }
        scan.count = count;
        scan.max_offset = max;
        (live, dead)
    }
}
