//! Sequential and TID-range scans: a virtual block space of the source's
//! blocks first, then the local ones, each page judged with its snapshot.

use super::*;

pub(super) const NO_BLOCK: u32 = u32::MAX;

/// Marks a scan as one of ours in `rs_flags`, in a bit PostgreSQL's scan
/// options never use. Scans of a `cow` relation without a source part are
/// heapam's own, and every scan callback hands those back to heapam.
pub(super) const COW_SCAN: u32 = 1 << 30;

/// # Safety
/// `scan` must be a scan begun by `scan_begin`.
pub(super) unsafe fn is_cow_scan(scan: pg_sys::TableScanDesc) -> bool {
    // SAFETY: guaranteed by the caller; both kinds start with TableScanDescData.
    unsafe { (*scan).rs_flags & COW_SCAN != 0 }
}

/// A scan of a shadowed table. `base` comes first so PostgreSQL can treat a
/// pointer to it as its own TableScanDesc.
#[repr(C)]
pub(super) struct CowScan {
    pub(super) base: pg_sys::TableScanDescData,
    pub(super) source: Option<PageSource>,
    pub(super) source_blocks: u32,
    pub(super) local_blocks: u32,
    pub(super) strategy: pg_sys::BufferAccessStrategy,
    /// The virtual block loaded, or NO_BLOCK.
    pub(super) block: u32,
    pub(super) buffer: pg_sys::Buffer,
    /// Block number the loaded page's TIDs carry, and the block in its file.
    pub(super) tid_block: u32,
    pub(super) file_block: u32,
    pub(super) from_source: bool,
    pub(super) count: usize,
    pub(super) max_offset: u16,
    pub(super) offsets: [u16; MAX_TUPLES_PER_PAGE],
    /// Position in `offsets`: -1 before the first, `count` after the last.
    pub(super) index: isize,
    pub(super) tuple: pg_sys::HeapTupleData,
    pub(super) tid_range: Option<(pg_sys::ItemPointerData, pg_sys::ItemPointerData)>,
    pub(super) analyzed: bool,
    /// Source rows (file block, offset) the scan's snapshot sees tombstones
    /// for, sorted; palloc'd in the scan's memory context.
    pub(super) hidden: *mut (u32, u16),
    pub(super) hidden_len: usize,
}

impl CowScan {
    pub(super) fn total_blocks(&self) -> u32 {
        self.source_blocks + self.local_blocks
    }

    /// Where a virtual block lives: (page source, block in its file, TID block, snapshot).
    pub(super) fn locate(&self, block: u32) -> (PageSource, u32, u32, pg_sys::Snapshot, bool) {
        if block < self.source_blocks {
            let view = clone_view::current().expect("a scan with source blocks has a view");
            (
                self.source.expect("source blocks imply a source"),
                block,
                block + tid::SOURCE_BLOCK_BASE,
                view.snapshot(),
                true,
            )
        } else {
            let local = block - self.source_blocks;
            (
                PageSource::Local(self.base.rs_rd),
                local,
                local,
                self.base.rs_snapshot,
                false,
            )
        }
    }

    /// The hidden source rows of the loaded page: one search per page, so
    /// a page without any (nearly every page) costs no per-row lookup.
    fn hidden_on_page(&self) -> &[(u32, u16)] {
        if self.hidden_len == 0 {
            return &[];
        }
        // SAFETY: hidden holds hidden_len entries for the life of the scan.
        let hidden = unsafe { std::slice::from_raw_parts(self.hidden, self.hidden_len) };
        let start = hidden.partition_point(|&(block, _)| block < self.file_block);
        let end = start + hidden[start..].partition_point(|&(block, _)| block == self.file_block);
        &hidden[start..end]
    }

    /// Drops source rows the tombstones hide from the collected offsets;
    /// returns how many were dropped.
    pub(super) fn drop_hidden(&mut self) -> usize {
        if !self.from_source {
            return 0;
        }
        let on_page = self.hidden_on_page();
        if on_page.is_empty() {
            return 0;
        }
        let on_page: Vec<u16> = on_page.iter().map(|&(_, offset)| offset).collect();
        let mut kept = 0;
        for i in 0..self.count {
            let offset = self.offsets[i];
            if on_page.binary_search(&offset).is_err() {
                self.offsets[kept] = offset;
                kept += 1;
            }
        }
        let dropped = self.count - kept;
        self.count = kept;
        dropped
    }

    /// Loads the tombstones the scan's snapshot sees (ANALYZE, without one,
    /// sees what a new snapshot sees).
    ///
    /// # Safety
    /// Inside the scan's transaction.
    pub(super) unsafe fn load_hidden(&mut self) {
        // SAFETY: guaranteed by the caller; the array lives in the current
        // (the scan's) memory context.
        unsafe {
            let snapshot = if self.base.rs_snapshot.is_null() {
                pg_sys::GetLatestSnapshot()
            } else {
                self.base.rs_snapshot
            };
            let hidden = tombstone::hidden_set(compat::relfilenode_of(self.base.rs_rd), snapshot);
            self.hidden_len = hidden.len();
            if !hidden.is_empty() {
                let bytes = std::mem::size_of::<(u32, u16)>() * hidden.len();
                self.hidden = pg_sys::palloc(bytes) as *mut (u32, u16);
                std::ptr::copy_nonoverlapping(hidden.as_ptr(), self.hidden, hidden.len());
            }
        }
    }

    /// Unpins the loaded page, if any.
    pub(super) fn release(&mut self) {
        if self.buffer != pg_sys::InvalidBuffer as pg_sys::Buffer {
            // SAFETY: this scan pinned the buffer and holds no lock on it.
            unsafe { pg_sys::ReleaseBuffer(self.buffer) };
            self.buffer = pg_sys::InvalidBuffer as pg_sys::Buffer;
        }
        self.block = NO_BLOCK;
        self.count = 0;
        self.index = -1;
    }

    /// Pins a virtual block; `judge` picks the offsets to return, under a share lock.
    pub(super) fn pin(&mut self, block: u32) {
        self.release();
        let (from, file_block, tid_block, _, from_source) = self.locate(block);
        // SAFETY: the block is below the block counts taken at scan start,
        // and relations never shrink below rows a snapshot can see.
        self.buffer = unsafe { heap_page::read(from, file_block, self.strategy) };
        if let PageSource::Local(rel) = from {
            // SAFETY: a pinned, unlocked page of the clone's own heap.
            unsafe { heap_page::prune_local(rel, self.buffer) };
        }
        self.block = block;
        self.file_block = file_block;
        self.tid_block = tid_block;
        self.from_source = from_source;
    }

    /// Pins a virtual block and keeps the offsets its snapshot sees.
    pub(super) fn load(&mut self, block: u32) {
        pgrx::check_for_interrupts!();
        self.pin(block);
        let (_, _, _, snapshot, _) = self.locate(block);
        // SAFETY: the buffer is pinned; it is share-locked while judged.
        unsafe {
            pg_sys::LockBuffer(self.buffer, pg_sys::BUFFER_LOCK_SHARE as i32);
            let (count, max) = heap_page::collect_visible(
                self.buffer,
                self.file_block,
                (*self.base.rs_rd).rd_id,
                snapshot,
                &mut self.offsets,
            );
            self.count = count;
            self.max_offset = max;
            self.serializable_checks(snapshot, false);
            pg_sys::LockBuffer(self.buffer, pg_sys::BUFFER_LOCK_UNLOCK as i32);
        }
        self.drop_hidden();
        self.index = -1;
    }

    /// What heapam does for a serializable transaction reading a page: on a
    /// local page, check every tuple for a conflict with its writer (heapam
    /// checks invisible ones too); for row-by-row scans (bitmap), lock each
    /// row kept, named by its clone TID (source rows' writers check exactly
    /// that target).
    ///
    /// # Safety
    /// The loaded buffer is pinned and share-locked; `count`/`offsets` hold
    /// the visible tuples.
    pub(super) unsafe fn serializable_checks(
        &mut self,
        snapshot: pg_sys::Snapshot,
        lock_rows: bool,
    ) {
        // SAFETY: guaranteed by the caller; offsets are checked against the
        // page by normal_tuple_at.
        unsafe {
            if pg_sys::XactIsoLevel != pg_sys::XACT_SERIALIZABLE as i32
                || snapshot.is_null()
                || (*snapshot).snapshot_type != pg_sys::SnapshotType::SNAPSHOT_MVCC
            {
                return;
            }
            let rel = self.base.rs_rd;
            if !self.from_source {
                let max = crate::pg::page::max_offset(heap_page::page_bytes(self.buffer))
                    .min(MAX_TUPLES_PER_PAGE) as u16;
                for offset in 1..=max {
                    let Some(mut tuple) = heap_page::normal_tuple_at(
                        self.buffer,
                        self.file_block,
                        offset,
                        (*rel).rd_id,
                    ) else {
                        continue;
                    };
                    let visible = self.offsets[..self.count].contains(&offset);
                    pg_sys::HeapCheckForSerializableConflictOut(
                        visible,
                        rel,
                        &mut tuple,
                        self.buffer,
                        snapshot,
                    );
                }
            }
            if lock_rows {
                for &offset in &self.offsets[..self.count] {
                    let tuple =
                        heap_page::tuple_at(self.buffer, self.tid_block, offset, (*rel).rd_id);
                    let xmin = (*tuple.t_data).t_choice.t_heap.t_xmin;
                    let tid = tid::make_tid(self.tid_block, offset);
                    compat::predicate_lock_row(rel, &tid, snapshot, xmin);
                }
            }
        }
    }

    /// Stores the tuple at `self.index` in the slot.
    ///
    /// # Safety
    /// The loaded buffer is pinned and `index` is within `count`.
    pub(super) unsafe fn store(&mut self, slot: *mut pg_sys::TupleTableSlot) {
        let offset = self.offsets[self.index as usize];
        // SAFETY: guaranteed by the caller; a visible tuple cannot be pruned
        // away while this scan pins its page.
        unsafe {
            self.tuple = heap_page::tuple_at(
                self.buffer,
                self.tid_block,
                offset,
                (*self.base.rs_rd).rd_id,
            );
            compat::store_buffer_tuple(&mut self.tuple, slot, self.buffer);
        }
    }

    pub(super) fn next(&mut self, forward: bool, slot: *mut pg_sys::TupleTableSlot) -> bool {
        loop {
            if self.block == NO_BLOCK {
                let total = self.total_blocks();
                if total == 0 {
                    break;
                }
                self.load(if forward { 0 } else { total - 1 });
                self.index = if forward { -1 } else { self.count as isize };
            }
            let next = if forward {
                self.index + 1
            } else {
                self.index - 1
            };
            if next >= 0 && (next as usize) < self.count {
                self.index = next;
                // SAFETY: the page is pinned and next is within count.
                unsafe { self.store(slot) };
                return true;
            }
            let following = if forward {
                Some(self.block + 1).filter(|b| *b < self.total_blocks())
            } else {
                self.block.checked_sub(1)
            };
            match following {
                Some(block) => {
                    self.load(block);
                    self.index = if forward { -1 } else { self.count as isize };
                }
                None => break,
            }
        }
        self.release();
        // SAFETY: the slot is the caller's valid slot.
        unsafe { clear_slot(slot) };
        false
    }

    /// Counts blocks again (rescans see rows added locally since).
    pub(super) fn measure(&mut self) {
        self.source_blocks = source_blocks(self.source);
        // SAFETY: rs_rd is the scanned relation, open for the scan's life.
        self.local_blocks = unsafe { local_blocks(self.base.rs_rd) };
    }
}

/// # Safety
/// `slot` must be a valid slot.
pub(super) unsafe fn clear_slot(slot: *mut pg_sys::TupleTableSlot) {
    // SAFETY: guaranteed by the caller; ExecClearTuple is an inline wrapper
    // around the slot's own clear callback.
    unsafe {
        if let Some(clear) = (*(*slot).tts_ops).clear {
            pg_call!(clear(slot));
        }
        (*slot).tts_flags |= pg_sys::TTS_FLAG_EMPTY as u16;
    }
}

/// # Safety
/// `scan` must be a scan begun by `scan_begin`.
pub(super) unsafe fn cow_scan<'a>(scan: pg_sys::TableScanDesc) -> &'a mut CowScan {
    // SAFETY: guaranteed by the caller; CowScan starts with its TableScanDescData.
    unsafe { &mut *(scan as *mut CowScan) }
}

#[pg_guard]
pub(super) unsafe extern "C-unwind" fn scan_begin(
    rel: pg_sys::Relation,
    snapshot: pg_sys::Snapshot,
    nkeys: std::ffi::c_int,
    key: *mut pg_sys::ScanKeyData,
    pscan: pg_sys::ParallelTableScanDesc,
    flags: u32,
) -> pg_sys::TableScanDesc {
    // SAFETY: PostgreSQL passes a valid, open relation.
    let source = unsafe { source_of(rel) };
    if source.is_none() {
        // SAFETY: a valid relation and the scan's snapshot.
        unsafe { clone_view::refuse_snapshot_before_materialization(rel, snapshot) };
        let begin = heap().scan_begin.expect("heapam scans");
        return pg_call!(begin(rel, snapshot, nkeys, key, pscan, flags));
    }
    if !pscan.is_null() {
        // The planner hook keeps partial paths away from shadowed tables.
        CowError::new(
            PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            "parallel scans of shadowed tables are not supported",
        )
        .raise();
    }
    // SAFETY: PostgreSQL passes a valid, open relation and keeps it open
    // (we hold a reference) until scan_end; the scan is palloc'd zeroed, a
    // valid initial value for every field, then filled in.
    unsafe {
        pg_sys::RelationIncrementReferenceCount(rel);
        let scan = pg_sys::palloc0(std::mem::size_of::<CowScan>()) as *mut CowScan;
        let s = &mut *scan;
        s.base.rs_rd = rel;
        s.base.rs_snapshot = snapshot;
        s.base.rs_nkeys = nkeys;
        s.base.rs_key = key;
        s.base.rs_flags = flags | COW_SCAN;
        s.base.rs_parallel = pscan;
        std::ptr::write(&mut s.source, source);
        std::ptr::write(&mut s.tid_range, None);
        s.load_hidden();
        s.buffer = pg_sys::InvalidBuffer as pg_sys::Buffer;
        s.block = NO_BLOCK;
        s.index = -1;
        s.measure();
        let large = s.total_blocks() as i64 > (pg_sys::NBuffers / 4) as i64;
        if flags & pg_sys::ScanOptions::SO_ALLOW_STRAT != 0 && large {
            s.strategy = pg_sys::GetAccessStrategy(pg_sys::BufferAccessStrategyType::BAS_BULKREAD);
        }
        let whole_table =
            pg_sys::ScanOptions::SO_TYPE_SEQSCAN | pg_sys::ScanOptions::SO_TYPE_SAMPLESCAN;
        if flags & whole_table != 0 && !snapshot.is_null() {
            compat::predicate_lock_relation(rel, snapshot);
        }
        scan as pg_sys::TableScanDesc
    }
}

#[pg_guard]
pub(super) unsafe extern "C-unwind" fn scan_end(sscan: pg_sys::TableScanDesc) {
    heap_scan_unless_ours!(sscan, scan_end(sscan));
    // SAFETY: PostgreSQL ends only scans it began with scan_begin.
    unsafe {
        let scan = cow_scan(sscan);
        scan.release();
        if !scan.strategy.is_null() {
            pg_sys::FreeAccessStrategy(scan.strategy);
        }
        pg_sys::RelationDecrementReferenceCount(scan.base.rs_rd);
        if scan.base.rs_flags & pg_sys::ScanOptions::SO_TEMP_SNAPSHOT != 0 {
            pg_sys::UnregisterSnapshot(scan.base.rs_snapshot);
        }
        pg_sys::pfree(sscan.cast());
    }
}

#[pg_guard]
pub(super) unsafe extern "C-unwind" fn scan_rescan(
    sscan: pg_sys::TableScanDesc,
    key: *mut pg_sys::ScanKeyData,
    set_params: bool,
    allow_strat: bool,
    allow_sync: bool,
    allow_pagemode: bool,
) {
    heap_scan_unless_ours!(
        sscan,
        scan_rescan(
            sscan,
            key,
            set_params,
            allow_strat,
            allow_sync,
            allow_pagemode
        )
    );
    // SAFETY: a scan begun by scan_begin.
    let scan = unsafe { cow_scan(sscan) };
    if set_params {
        let mut flags = scan.base.rs_flags;
        for (on, bit) in [
            (allow_strat, pg_sys::ScanOptions::SO_ALLOW_STRAT),
            (allow_sync, pg_sys::ScanOptions::SO_ALLOW_SYNC),
            (allow_pagemode, pg_sys::ScanOptions::SO_ALLOW_PAGEMODE),
        ] {
            flags = if on { flags | bit } else { flags & !bit };
        }
        scan.base.rs_flags = flags;
    }
    if !key.is_null() && scan.base.rs_nkeys > 0 {
        scan.base.rs_key = key;
    }
    scan.release();
    scan.measure();
}

#[pg_guard]
pub(super) unsafe extern "C-unwind" fn scan_getnextslot(
    sscan: pg_sys::TableScanDesc,
    direction: pg_sys::ScanDirection::Type,
    slot: *mut pg_sys::TupleTableSlot,
) -> bool {
    heap_scan_unless_ours!(sscan, scan_getnextslot(sscan, direction, slot));
    // SAFETY: a scan begun by scan_begin, and the caller's slot.
    let scan = unsafe { cow_scan(sscan) };
    if direction == pg_sys::ScanDirection::NoMovementScanDirection {
        if scan.index >= 0 && (scan.index as usize) < scan.count {
            // SAFETY: the page is pinned and the index is in range.
            unsafe { scan.store(slot) };
            return true;
        }
        // SAFETY: the caller's valid slot.
        unsafe { clear_slot(slot) };
        return false;
    }
    scan.next(
        direction == pg_sys::ScanDirection::ForwardScanDirection,
        slot,
    )
}

pub(super) fn tid_key(tid: &pg_sys::ItemPointerData) -> (u32, u16) {
    (tid::block_of(tid), tid.ip_posid)
}

#[pg_guard]
pub(super) unsafe extern "C-unwind" fn scan_set_tidrange(
    sscan: pg_sys::TableScanDesc,
    mintid: pg_sys::ItemPointer,
    maxtid: pg_sys::ItemPointer,
) {
    heap_scan_unless_ours!(sscan, scan_set_tidrange(sscan, mintid, maxtid));
    // SAFETY: a scan begun by scan_begin; the executor passes valid TIDs.
    unsafe {
        let scan = cow_scan(sscan);
        scan.release();
        scan.tid_range = Some((*mintid, *maxtid));
    }
}

/// TID ranges filter the whole virtual block space: source TIDs sort after
/// every local one, but source blocks are scanned first.
#[pg_guard]
pub(super) unsafe extern "C-unwind" fn scan_getnextslot_tidrange(
    sscan: pg_sys::TableScanDesc,
    direction: pg_sys::ScanDirection::Type,
    slot: *mut pg_sys::TupleTableSlot,
) -> bool {
    heap_scan_unless_ours!(sscan, scan_getnextslot_tidrange(sscan, direction, slot));
    // SAFETY: a scan begun by scan_begin, and the caller's slot.
    unsafe {
        let scan = cow_scan(sscan);
        let Some((min, max)) = scan.tid_range else {
            return false;
        };
        let forward = direction != pg_sys::ScanDirection::BackwardScanDirection;
        while scan.next(forward, slot) {
            let tid = tid_key(&(*slot).tts_tid);
            if tid >= tid_key(&min) && tid <= tid_key(&max) {
                return true;
            }
        }
        false
    }
}
