//! Bitmap heap scans: one page of the bitmap at a time (the callbacks
//! whose shape changed in 18 are compat's adapters over these).

use super::*;

/// Loads the next page of a bitmap scan (compat's `ShapedScans` adapters
/// call this): the rows at `page.offsets` (following HOT chains), or every
/// visible row of a lossy page. Whether any is visible; `None` for a block
/// the table does not have (as heapam skips one).
///
/// # Safety
/// `sscan` must be one of our scans.
pub(super) unsafe fn bitmap_page(
    sscan: pg_sys::TableScanDesc,
    page: compat::BitmapPage,
) -> Option<bool> {
    // SAFETY: guaranteed by the caller.
    unsafe {
        let scan = cow_scan(sscan);
        scan.release();
        let block = page.block;
        let virtual_block = match tid::tid_space(&tid::make_tid(block, 1)) {
            TidSpace::Source(b) if b < scan.source_blocks => b,
            TidSpace::Local(b) if b < scan.local_blocks => scan.source_blocks + b,
            _ => return None,
        };
        let (_, _, _, snapshot, _) = scan.locate(virtual_block);
        scan.pin(virtual_block);
        pg_sys::LockBuffer(scan.buffer, pg_sys::BUFFER_LOCK_SHARE as i32);
        let table = (*scan.base.rs_rd).rd_id;
        let mut count = 0;
        if let Some(roots) = page.offsets {
            for &root in roots {
                if let Some(tuple) = heap_page::hot_chain_visible(
                    scan.buffer,
                    scan.file_block,
                    root,
                    table,
                    snapshot,
                ) {
                    scan.offsets[count] = tuple.t_self.ip_posid;
                    count += 1;
                }
            }
            scan.count = count;
        } else {
            let (count, max) = heap_page::collect_visible(
                scan.buffer,
                scan.file_block,
                table,
                snapshot,
                &mut scan.offsets,
            );
            scan.count = count;
            scan.max_offset = max;
        }
        scan.drop_hidden();
        scan.serializable_checks(snapshot, true);
        pg_sys::LockBuffer(scan.buffer, pg_sys::BUFFER_LOCK_UNLOCK as i32);
        scan.index = -1;
        Some(scan.count > 0)
    }
}

/// The next row of the page `bitmap_page` loaded, if any.
///
/// # Safety
/// `sscan` must be one of our scans; `slot` the caller's.
pub(super) unsafe fn bitmap_tuple(
    sscan: pg_sys::TableScanDesc,
    slot: *mut pg_sys::TupleTableSlot,
) -> bool {
    // SAFETY: guaranteed by the caller.
    unsafe {
        let scan = cow_scan(sscan);
        if scan.block == NO_BLOCK || (scan.index + 1) as usize >= scan.count {
            return false;
        }
        scan.index += 1;
        scan.store(slot);
        true
    }
}
