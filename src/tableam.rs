//! The `cow` table access method.
//!
//! A shadowed table is two heaps seen as one: the source's heap as of the
//! clone point T (read through shared buffers, judged with T, never written)
//! and the clone's own local heap (a real heapam relation, judged with the
//! query's snapshot). Scans walk a virtual block space: the source's blocks
//! first, then the local ones; TIDs of source rows live in the source TID
//! space (see `clone_view`). Local work is heapam's wherever heapam's code
//! can be handed the relation as is.
//!
//! Writes: inserts go to the local heap; the first update, delete or row
//! lock of a source row records a tombstone (see `tombstone`, `writes`), and
//! an update puts the new version in the local heap, where heapam takes over.
//! Every source row a scan finds is judged with T and then with the
//! tombstones the query's snapshot sees.

use std::sync::OnceLock;

use pgrx::prelude::*;
use pgrx::{pg_sys, PgSqlErrorCode};

use crate::clone_view::{self, TidSpace};
use crate::compat;
use crate::error::CowError;
use crate::heap_page::{self, PageSource, MAX_TUPLES_PER_PAGE};
use crate::page::BLCKSZ;
use crate::relcopy::RelationCopy;
use crate::tombstone::{self, Verdict};
use crate::writes::{self, Claim, LocalSizing, Operation};

/// Raised by every refused callback.
fn refuse(what: &str, rel: pg_sys::Relation) -> ! {
    // SAFETY: PostgreSQL passes a valid, open relation to every table AM callback.
    let name = unsafe { relation_name(rel) };
    CowError::new(
        PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
        format!("cannot {what} shadowed table \"{name}\""),
    )
    .detail("Its rows still live in the source database, which a clone never changes.")
    .hint("Rewrite the table in the clone first (for example ALTER TABLE ... ALTER COLUMN ... TYPE, or CREATE TABLE AS), which makes it entirely the clone's own.")
    .raise()
}

/// # Safety
/// `rel` must be a valid relation.
pub unsafe fn relation_name(rel: pg_sys::Relation) -> String {
    // SAFETY: guaranteed by the caller: rd_rel points to the relation's pg_class form.
    unsafe { pgrx::name_data_to_str(&(*(*rel).rd_rel).relname).to_string() }
}

pub(crate) fn heap() -> &'static pg_sys::TableAmRoutine {
    // SAFETY: heapam's routine is a static, fully initialised struct.
    unsafe { &*pg_sys::GetHeapamTableAmRoutine() }
}

/// Where a shadowed table's source rows are, if it still has any.
///
/// # Safety
/// `rel` must be a valid relation.
unsafe fn source_of(rel: pg_sys::Relation) -> Option<PageSource> {
    // SAFETY: guaranteed by the caller.
    unsafe {
        let view = clone_view::for_relation(&relation_name(rel))?;
        let permanent = (*(*rel).rd_rel).relpersistence == pg_sys::RELPERSISTENCE_PERMANENT as i8;
        view.source_locator(compat::relfilenode_of(rel))
            .map(|locator| {
                // Keep the source's files open across transactions.
                compat::own_smgr(clone_view::smgr_home(locator), locator);
                PageSource::Source { locator, permanent }
            })
    }
}

fn source_blocks(source: Option<PageSource>) -> u32 {
    match source {
        Some(PageSource::Source { locator, .. }) => clone_view::source_block_count(locator),
        _ => 0,
    }
}

/// Blocks of the clone's own heap.
///
/// # Safety
/// `rel` must be a valid relation with heap storage.
unsafe fn local_blocks(rel: pg_sys::Relation) -> u32 {
    // Guaranteed by the caller: heapam sizes the relation's own file.
    let size = heap().relation_size.expect("heapam sizes relations");
    let bytes = pg_call!(size(rel, pg_sys::ForkNumber::MAIN_FORKNUM));
    (bytes as usize / BLCKSZ) as u32
}

/// Hands a scan that is heapam's own (of a relation without a source part)
/// back to heapam's callback of the same name.
/// (compat's version-shaped scan callbacks use it too.)
macro_rules! heap_scan_unless_ours {
    ($scan:expr, $callback:ident($($arg:expr),*)) => {
        // SAFETY: the scan was begun by scan_begin, ours or heapam's.
        if !unsafe { $crate::tableam::is_cow_scan($scan) } {
            let delegate = $crate::tableam::heap()
                .$callback
                .expect("heapam implements every scan callback");
            return pg_call!(delegate($($arg),*));
        }
    };
}
pub(crate) use heap_scan_unless_ours;

/// Runs heapam's callback of the same name on the local heap (for a
/// relation without a source part, the whole relation).
macro_rules! local_heap {
    ($callback:ident($($arg:expr),*)) => {{
        let _local = LocalSizing::enter();
        let delegate = heap().$callback.expect("heapam implements every callback");
        pg_call!(delegate($($arg),*))
    }};
}

/// Refuses what a shadowed table cannot do; a relation without a source
/// part goes to heapam's callback of the same name.
macro_rules! heap_unless_shadowed {
    ($rel:expr, $what:expr, $callback:ident($($arg:expr),*)) => {{
        if is_shadowed($rel) {
            refuse($what, $rel)
        }
        local_heap!($callback($($arg),*))
    }};
}

const NO_BLOCK: u32 = u32::MAX;

/// Marks a scan as one of ours in `rs_flags`, in a bit PostgreSQL's scan
/// options never use. Scans of a `cow` relation without a source part are
/// heapam's own, and every scan callback hands those back to heapam.
const COW_SCAN: u32 = 1 << 30;

/// # Safety
/// `scan` must be a scan begun by `scan_begin`.
pub(crate) unsafe fn is_cow_scan(scan: pg_sys::TableScanDesc) -> bool {
    // SAFETY: guaranteed by the caller; both kinds start with TableScanDescData.
    unsafe { (*scan).rs_flags & COW_SCAN != 0 }
}

/// A scan of a shadowed table. `base` comes first so PostgreSQL can treat a
/// pointer to it as its own TableScanDesc.
#[repr(C)]
struct CowScan {
    base: pg_sys::TableScanDescData,
    source: Option<PageSource>,
    source_blocks: u32,
    local_blocks: u32,
    strategy: pg_sys::BufferAccessStrategy,
    /// The virtual block loaded, or NO_BLOCK.
    block: u32,
    buffer: pg_sys::Buffer,
    /// Block number the loaded page's TIDs carry, and the block in its file.
    tid_block: u32,
    file_block: u32,
    from_source: bool,
    count: usize,
    max_offset: u16,
    offsets: [u16; MAX_TUPLES_PER_PAGE],
    /// Position in `offsets`: -1 before the first, `count` after the last.
    index: isize,
    tuple: pg_sys::HeapTupleData,
    tid_range: Option<(pg_sys::ItemPointerData, pg_sys::ItemPointerData)>,
    analyzed: bool,
    /// Source rows (file block, offset) the scan's snapshot sees tombstones
    /// for, sorted; palloc'd in the scan's memory context.
    hidden: *mut (u32, u16),
    hidden_len: usize,
}

impl CowScan {
    fn total_blocks(&self) -> u32 {
        self.source_blocks + self.local_blocks
    }

    /// Where a virtual block lives: (page source, block in its file, TID block, snapshot).
    fn locate(&self, block: u32) -> (PageSource, u32, u32, pg_sys::Snapshot, bool) {
        if block < self.source_blocks {
            let view = clone_view::current().expect("a scan with source blocks has a view");
            (
                self.source.expect("source blocks imply a source"),
                block,
                block + clone_view::SOURCE_BLOCK_BASE,
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

    fn is_hidden(&self, offset: u16) -> bool {
        if self.hidden_len == 0 {
            return false;
        }
        // SAFETY: hidden holds hidden_len entries for the life of the scan.
        let hidden = unsafe { std::slice::from_raw_parts(self.hidden, self.hidden_len) };
        hidden.binary_search(&(self.file_block, offset)).is_ok()
    }

    /// Drops source rows the tombstones hide from the collected offsets;
    /// returns how many were dropped.
    fn drop_hidden(&mut self) -> usize {
        if !self.from_source || self.hidden_len == 0 {
            return 0;
        }
        let mut kept = 0;
        for i in 0..self.count {
            let offset = self.offsets[i];
            if !self.is_hidden(offset) {
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
    unsafe fn load_hidden(&mut self) {
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
    fn release(&mut self) {
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
    fn pin(&mut self, block: u32) {
        self.release();
        let (from, file_block, tid_block, _, from_source) = self.locate(block);
        // SAFETY: the block is below the block counts taken at scan start,
        // and relations never shrink below rows a snapshot can see.
        self.buffer = unsafe { heap_page::read(from, file_block, self.strategy) };
        self.block = block;
        self.file_block = file_block;
        self.tid_block = tid_block;
        self.from_source = from_source;
    }

    /// Pins a virtual block and keeps the offsets its snapshot sees.
    fn load(&mut self, block: u32) {
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
    unsafe fn serializable_checks(&mut self, snapshot: pg_sys::Snapshot, lock_rows: bool) {
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
                let max = crate::page::max_offset(heap_page::page_bytes(self.buffer))
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
                    let tid = clone_view::make_tid(self.tid_block, offset);
                    compat::predicate_lock_row(rel, &tid, snapshot, xmin);
                }
            }
        }
    }

    /// Stores the tuple at `self.index` in the slot.
    ///
    /// # Safety
    /// The loaded buffer is pinned and `index` is within `count`.
    unsafe fn store(&mut self, slot: *mut pg_sys::TupleTableSlot) {
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

    fn next(&mut self, forward: bool, slot: *mut pg_sys::TupleTableSlot) -> bool {
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
    fn measure(&mut self) {
        self.source_blocks = source_blocks(self.source);
        // SAFETY: rs_rd is the scanned relation, open for the scan's life.
        self.local_blocks = unsafe { local_blocks(self.base.rs_rd) };
    }
}

/// # Safety
/// `slot` must be a valid slot.
unsafe fn clear_slot(slot: *mut pg_sys::TupleTableSlot) {
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
unsafe fn cow_scan<'a>(scan: pg_sys::TableScanDesc) -> &'a mut CowScan {
    // SAFETY: guaranteed by the caller; CowScan starts with its TableScanDescData.
    unsafe { &mut *(scan as *mut CowScan) }
}

#[pg_guard]
unsafe extern "C-unwind" fn scan_begin(
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
unsafe extern "C-unwind" fn scan_end(sscan: pg_sys::TableScanDesc) {
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
unsafe extern "C-unwind" fn scan_rescan(
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
unsafe extern "C-unwind" fn scan_getnextslot(
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

fn tid_key(tid: &pg_sys::ItemPointerData) -> (u32, u16) {
    (clone_view::block_of(tid), tid.ip_posid)
}

#[pg_guard]
unsafe extern "C-unwind" fn scan_set_tidrange(
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
unsafe extern "C-unwind" fn scan_getnextslot_tidrange(
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

/// Loads the next page of a bitmap scan (compat's version-shaped callbacks
/// call this): the rows at `page.offsets` (following HOT chains), or every
/// visible row of a lossy page. Whether any is visible; `None` for a block
/// the table does not have (as heapam skips one).
///
/// # Safety
/// `sscan` must be one of our scans.
pub(crate) unsafe fn bitmap_page(
    sscan: pg_sys::TableScanDesc,
    page: compat::BitmapPage,
) -> Option<bool> {
    // SAFETY: guaranteed by the caller.
    unsafe {
        let scan = cow_scan(sscan);
        scan.release();
        let block = page.block;
        let virtual_block = match clone_view::tid_space(&clone_view::make_tid(block, 1)) {
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
pub(crate) unsafe fn bitmap_tuple(
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

#[pg_guard]
unsafe extern "C-unwind" fn scan_sample_next_block(
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
unsafe extern "C-unwind" fn scan_sample_next_tuple(
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

/// Pins the block ANALYZE sampled (compat's version-shaped callback calls
/// this); false if it is past the end.
///
/// # Safety
/// `sscan` must be one of our scans.
pub(crate) unsafe fn analyze_block(
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
unsafe extern "C-unwind" fn scan_analyze_next_tuple(
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
unsafe fn classify_for_analyze(
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
        let max = crate::page::max_offset(heap_page::page_bytes(scan.buffer))
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

#[pg_guard]
unsafe extern "C-unwind" fn relation_size(
    rel: pg_sys::Relation,
    fork: pg_sys::ForkNumber::Type,
) -> u64 {
    // SAFETY: PostgreSQL passes a valid, open relation.
    unsafe {
        let size = heap().relation_size.expect("heapam sizes relations");
        let local = pg_call!(size(rel, fork));
        let whole = fork == pg_sys::ForkNumber::MAIN_FORKNUM
            || fork == pg_sys::ForkNumber::InvalidForkNumber;
        if !whole || writes::local_sizing() {
            return local;
        }
        let source = clone_view::current()
            .and_then(|view| view.source_locator(compat::relfilenode_of(rel)))
            .map(clone_view::source_block_count)
            .unwrap_or(0);
        local + source as u64 * BLCKSZ as u64
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn tuple_tid_valid(
    sscan: pg_sys::TableScanDesc,
    tid: pg_sys::ItemPointer,
) -> bool {
    heap_scan_unless_ours!(sscan, tuple_tid_valid(sscan, tid));
    // SAFETY: a scan begun by scan_begin; the executor passes a valid TID.
    unsafe {
        let scan = cow_scan(sscan);
        match clone_view::tid_space(&*tid) {
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
unsafe fn tombstones_allow(
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
unsafe fn store_source_tuple(
    mut tuple: pg_sys::HeapTupleData,
    file_block: u32,
    slot: *mut pg_sys::TupleTableSlot,
    buffer: pg_sys::Buffer,
) {
    // SAFETY: guaranteed by the caller; the tuple data lives in the slot
    // itself, as heapam's fetches keep it.
    unsafe {
        tuple.t_self = clone_view::source_tid(file_block, tuple.t_self.ip_posid);
        let bslot = slot as *mut pg_sys::BufferHeapTupleTableSlot;
        (*bslot).base.tupdata = tuple;
        pg_sys::ExecStoreBufferHeapTuple(&mut (*bslot).base.tupdata, slot, buffer);
        (*slot).tts_tableOid = tuple.t_tableOid;
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn tuple_fetch_row_version(
    rel: pg_sys::Relation,
    tid: pg_sys::ItemPointer,
    snapshot: pg_sys::Snapshot,
    slot: *mut pg_sys::TupleTableSlot,
) -> bool {
    // SAFETY: PostgreSQL passes a valid relation, TID and buffer slot.
    unsafe {
        let TidSpace::Source(block) = clone_view::tid_space(&*tid) else {
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
unsafe extern "C-unwind" fn tuple_get_latest_tid(
    sscan: pg_sys::TableScanDesc,
    tid: pg_sys::ItemPointer,
) {
    // SAFETY: a scan begun by scan_begin and a valid TID; heapam's version
    // only reads the relation and snapshot from the scan's base.
    unsafe {
        let latest = heap().tuple_get_latest_tid.expect("heapam follows TIDs");
        if let TidSpace::Local(_) = clone_view::tid_space(&*tid) {
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
unsafe extern "C-unwind" fn tuple_satisfies_snapshot(
    rel: pg_sys::Relation,
    slot: *mut pg_sys::TupleTableSlot,
    snapshot: pg_sys::Snapshot,
) -> bool {
    // SAFETY: PostgreSQL passes a buffer slot holding a tuple of `rel`.
    unsafe {
        if let TidSpace::Local(_) = clone_view::tid_space(&(*slot).tts_tid) {
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
struct CowIndexFetch {
    base: pg_sys::IndexFetchTableData,
    source: Option<PageSource>,
    buffer: pg_sys::Buffer,
    block: u32,
    local: *mut pg_sys::IndexFetchTableData,
}

impl CowIndexFetch {
    fn release(&mut self) {
        if self.buffer != pg_sys::InvalidBuffer as pg_sys::Buffer {
            // SAFETY: this fetch pinned the buffer and holds no lock on it.
            unsafe { pg_sys::ReleaseBuffer(self.buffer) };
            self.buffer = pg_sys::InvalidBuffer as pg_sys::Buffer;
        }
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn index_fetch_begin(
    rel: pg_sys::Relation,
) -> *mut pg_sys::IndexFetchTableData {
    // SAFETY: PostgreSQL passes a valid, open relation; the struct is
    // palloc'd zeroed, then filled in.
    unsafe {
        let source = source_of(rel);
        let fetch = pg_sys::palloc0(std::mem::size_of::<CowIndexFetch>()) as *mut CowIndexFetch;
        (*fetch).base.rel = rel;
        std::ptr::write(&mut (*fetch).source, source);
        (*fetch).buffer = pg_sys::InvalidBuffer as pg_sys::Buffer;
        let begin = heap().index_fetch_begin.expect("heapam fetches");
        (*fetch).local = pg_call!(begin(rel));
        fetch.cast()
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn index_fetch_reset(scan: *mut pg_sys::IndexFetchTableData) {
    // SAFETY: a fetch begun by index_fetch_begin.
    unsafe {
        let fetch = &mut *(scan as *mut CowIndexFetch);
        fetch.release();
        let reset = heap().index_fetch_reset.expect("heapam fetches");
        pg_call!(reset(fetch.local));
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn index_fetch_end(scan: *mut pg_sys::IndexFetchTableData) {
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
unsafe extern "C-unwind" fn index_fetch_tuple(
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
        let TidSpace::Source(block) = clone_view::tid_space(&*tid) else {
            let fetch_tuple = heap().index_fetch_tuple.expect("heapam fetches");
            return pg_call!(fetch_tuple(
                fetch.local,
                tid,
                snapshot,
                slot,
                call_again,
                all_dead
            ));
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
            let member = clone_view::source_tid(block, tuple.t_self.ip_posid);
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

/// Whether a relation still has a source part. A `cow` relation without one
/// (created in a clone, or restored from a clone's dump elsewhere) is a
/// plain heap, and every callback hands it to heapam.
///
/// # Safety
/// `rel` must be a valid relation.
pub unsafe fn is_shadowed(rel: pg_sys::Relation) -> bool {
    // SAFETY: guaranteed by the caller.
    clone_view::current()
        .and_then(|view| view.source_locator(unsafe { compat::relfilenode_of(rel) }))
        .is_some()
}

/// A copy of a relation's descriptor whose table AM is heapam's, for heapam
/// code that insists on it (its own scans check `rd_tableam`); its storage
/// handle, if it takes one over, is left unowned when the copy goes.
///
/// # Safety
/// `rel` must be a valid, open relation with heap storage.
unsafe fn heap_view(rel: pg_sys::Relation) -> RelationCopy {
    // SAFETY: guaranteed by the caller.
    unsafe {
        let copy = RelationCopy::new(rel, c"cowclone heap view", std::ptr::null_mut());
        (*copy.rel).rd_tableam = heap();
        copy
    }
}

/// Index entries heapam may judge are local ones; entries pointing at
/// source rows (in indexes built in the clone) are never deleted from here.
#[pg_guard]
unsafe extern "C-unwind" fn index_delete_tuples(
    rel: pg_sys::Relation,
    delstate: *mut pg_sys::TM_IndexDeleteOp,
) -> pg_sys::TransactionId {
    // SAFETY: PostgreSQL passes a valid relation and deletion state whose
    // deltids array holds ndeltids entries; heapam looks at no more than
    // the first ndeltids.
    unsafe {
        let state = &mut *delstate;
        let entries = std::slice::from_raw_parts_mut(state.deltids, state.ndeltids as usize);
        let mut local = 0;
        for i in 0..entries.len() {
            if let TidSpace::Local(_) = clone_view::tid_space(&entries[i].tid) {
                entries.swap(local, i);
                local += 1;
            }
        }
        state.ndeltids = local as i32;
        if local == 0 {
            return pg_sys::InvalidTransactionId;
        }
        local_heap!(index_delete_tuples(rel, delstate))
    }
}

/// # Safety
/// `tid` must be valid.
unsafe fn is_source_row(rel: pg_sys::Relation, tid: pg_sys::ItemPointer) -> bool {
    // SAFETY: guaranteed by the caller.
    unsafe { matches!(clone_view::tid_space(&*tid), TidSpace::Source(_)) && is_shadowed(rel) }
}

/// Releases the tuple lock a claim took, once its tombstone is recorded.
///
/// # Safety
/// `rel` open; the lock was taken by `writes::claim` on `tid`.
unsafe fn release_claim(
    rel: pg_sys::Relation,
    tid: pg_sys::ItemPointer,
    tuple_lock: bool,
    operation: Operation,
) {
    if tuple_lock {
        // SAFETY: guaranteed by the caller.
        unsafe { pg_sys::UnlockTuple(rel, tid, operation.tuple_lock_mode()) };
    }
}

/// An update of a source row puts the new version in the local heap and
/// records the row as moved there; all indexes get entries for it.
#[pg_guard]
#[allow(clippy::too_many_arguments)]
unsafe extern "C-unwind" fn tuple_update(
    rel: pg_sys::Relation,
    otid: pg_sys::ItemPointer,
    slot: *mut pg_sys::TupleTableSlot,
    cid: pg_sys::CommandId,
    snapshot: pg_sys::Snapshot,
    crosscheck: pg_sys::Snapshot,
    wait: bool,
    tmfd: *mut pg_sys::TM_FailureData,
    lockmode: *mut pg_sys::LockTupleMode::Type,
    update_indexes: *mut compat::UpdateIndexes,
) -> pg_sys::TM_Result::Type {
    // SAFETY: PostgreSQL passes valid arguments; a source TID is one this
    // AM handed out.
    unsafe {
        if !is_source_row(rel, otid) {
            return local_heap!(tuple_update(
                rel,
                otid,
                slot,
                cid,
                snapshot,
                crosscheck,
                wait,
                tmfd,
                lockmode,
                update_indexes
            ));
        }
        compat::serializable_conflict_in(rel, otid);
        *lockmode = pg_sys::LockTupleMode::LockTupleExclusive;
        let policy = pg_sys::LockWaitPolicy::LockWaitBlock;
        match writes::claim(rel, &*otid, cid, policy, Operation::Update, tmfd) {
            Claim::Granted { tuple_lock, .. } => {
                local_heap!(tuple_insert(rel, slot, cid, 0, std::ptr::null_mut()));
                tombstone::record(
                    compat::relfilenode_of(rel),
                    &*otid,
                    tombstone::MOVED,
                    Some(&(*slot).tts_tid),
                    cid,
                );
                release_claim(rel, otid, tuple_lock, Operation::Update);
                *update_indexes = compat::UPDATE_ALL_INDEXES;
                *lockmode = pg_sys::LockTupleMode::LockTupleExclusive;
                pg_sys::TM_Result::TM_Ok
            }
            Claim::Moved { .. } => pg_sys::TM_Result::TM_Updated,
            Claim::Result(result) => result,
        }
    }
}

#[pg_guard]
#[allow(clippy::too_many_arguments)]
unsafe extern "C-unwind" fn tuple_delete(
    rel: pg_sys::Relation,
    tid: pg_sys::ItemPointer,
    cid: pg_sys::CommandId,
    snapshot: pg_sys::Snapshot,
    crosscheck: pg_sys::Snapshot,
    wait: bool,
    tmfd: *mut pg_sys::TM_FailureData,
    changing_part: bool,
) -> pg_sys::TM_Result::Type {
    // SAFETY: as above.
    unsafe {
        if !is_source_row(rel, tid) {
            return local_heap!(tuple_delete(
                rel,
                tid,
                cid,
                snapshot,
                crosscheck,
                wait,
                tmfd,
                changing_part
            ));
        }
        compat::serializable_conflict_in(rel, tid);
        let policy = pg_sys::LockWaitPolicy::LockWaitBlock;
        match writes::claim(rel, &*tid, cid, policy, Operation::Delete, tmfd) {
            Claim::Granted { tuple_lock, .. } => {
                let moved = changing_part.then(writes::moved_partitions_tid);
                tombstone::record(
                    compat::relfilenode_of(rel),
                    &*tid,
                    tombstone::DELETED,
                    moved.as_ref(),
                    cid,
                );
                release_claim(rel, tid, tuple_lock, Operation::Delete);
                pg_sys::TM_Result::TM_Ok
            }
            Claim::Moved { .. } => pg_sys::TM_Result::TM_Updated,
            Claim::Result(result) => result,
        }
    }
}

/// Locking a source row records a lock tombstone of the lock's mode (writers
/// whose modes conflict wait for this transaction, others do not); the row
/// stays where it is. A row moved by a committed
/// transaction is followed into the local heap when asked to.
#[pg_guard]
#[allow(clippy::too_many_arguments)]
unsafe extern "C-unwind" fn tuple_lock(
    rel: pg_sys::Relation,
    tid: pg_sys::ItemPointer,
    snapshot: pg_sys::Snapshot,
    slot: *mut pg_sys::TupleTableSlot,
    cid: pg_sys::CommandId,
    mode: pg_sys::LockTupleMode::Type,
    wait_policy: pg_sys::LockWaitPolicy::Type,
    flags: u8,
    tmfd: *mut pg_sys::TM_FailureData,
) -> pg_sys::TM_Result::Type {
    // SAFETY: as above.
    unsafe {
        if !is_source_row(rel, tid) {
            return local_heap!(tuple_lock(
                rel,
                tid,
                snapshot,
                slot,
                cid,
                mode,
                wait_policy,
                flags,
                tmfd
            ));
        }
        (*tmfd).traversed = false;
        match writes::claim(rel, &*tid, cid, wait_policy, Operation::Lock(mode), tmfd) {
            Claim::Granted {
                tuple_lock,
                locked_by_us,
            } => {
                if !locked_by_us {
                    tombstone::record(
                        compat::relfilenode_of(rel),
                        &*tid,
                        tombstone::lock_kind(mode),
                        None,
                        cid,
                    );
                }
                release_claim(rel, tid, tuple_lock, Operation::Lock(mode));
                let any = &raw mut pg_sys::SnapshotAnyData;
                if !tuple_fetch_row_version(rel, tid, any, slot) {
                    CowError::new(
                        PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                        "attempted to lock invisible tuple",
                    )
                    .raise();
                }
                pg_sys::TM_Result::TM_Ok
            }
            Claim::Moved { successor, .. } => {
                if flags & pg_sys::TUPLE_LOCK_FLAG_FIND_LAST_VERSION as u8 == 0 {
                    return pg_sys::TM_Result::TM_Updated;
                }
                let mut latest = successor;
                let result = local_heap!(tuple_lock(
                    rel,
                    &mut latest,
                    snapshot,
                    slot,
                    cid,
                    mode,
                    wait_policy,
                    flags,
                    tmfd
                ));
                (*tmfd).traversed = true;
                *tid = latest;
                result
            }
            Claim::Result(result) => result,
        }
    }
}

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
unsafe fn exec_qual(qual: *mut pg_sys::ExprState, econtext: *mut pg_sys::ExprContext) -> bool {
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
unsafe fn build_from_source_rows(
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
                let tid_block = block + clone_view::SOURCE_BLOCK_BASE;
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
                let mut tid = clone_view::source_tid(block, offset);
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
unsafe extern "C-unwind" fn index_build_range_scan(
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
        let local_part_only = crate::indexam::is_shadowed_index(index);
        if is_shadowed(table) && !local_part_only {
            let relam = (*(*index).rd_rel).relam;
            let brin = relam == pg_sys::BRIN_AM_OID
                || crate::indexam::wraps(relam) == Some(pg_sys::BRIN_AM_OID);
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
unsafe extern "C-unwind" fn index_validate_scan(
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

#[pg_guard]
unsafe extern "C-unwind" fn tuple_insert(
    rel: pg_sys::Relation,
    slot: *mut pg_sys::TupleTableSlot,
    cid: pg_sys::CommandId,
    options: std::ffi::c_int,
    bistate: *mut pg_sys::BulkInsertStateData,
) {
    local_heap!(tuple_insert(rel, slot, cid, options, bistate))
}

#[pg_guard]
unsafe extern "C-unwind" fn tuple_insert_speculative(
    rel: pg_sys::Relation,
    slot: *mut pg_sys::TupleTableSlot,
    cid: pg_sys::CommandId,
    options: std::ffi::c_int,
    bistate: *mut pg_sys::BulkInsertStateData,
    spec_token: u32,
) {
    local_heap!(tuple_insert_speculative(
        rel, slot, cid, options, bistate, spec_token
    ))
}

#[pg_guard]
unsafe extern "C-unwind" fn multi_insert(
    rel: pg_sys::Relation,
    slots: *mut *mut pg_sys::TupleTableSlot,
    nslots: std::ffi::c_int,
    cid: pg_sys::CommandId,
    options: std::ffi::c_int,
    bistate: *mut pg_sys::BulkInsertStateData,
) {
    local_heap!(multi_insert(rel, slots, nslots, cid, options, bistate))
}

/// TRUNCATE (and rewrites) give the table new, empty, local storage; with
/// it the table stops reading its source.
#[pg_guard]
unsafe extern "C-unwind" fn relation_set_new_storage(
    rel: pg_sys::Relation,
    new_locator: *const compat::RelLocator,
    persistence: std::ffi::c_char,
    freeze_xid: *mut pg_sys::TransactionId,
    minmulti: *mut pg_sys::MultiXactId,
) {
    let _local = LocalSizing::enter();
    let delegate = compat::set_new_storage_of(heap()).expect("heapam implements every callback");
    pg_call!(delegate(
        rel,
        new_locator,
        persistence,
        freeze_xid,
        minmulti
    ))
}

#[pg_guard]
unsafe extern "C-unwind" fn relation_nontransactional_truncate(rel: pg_sys::Relation) {
    local_heap!(relation_nontransactional_truncate(rel))
}

#[pg_guard]
unsafe extern "C-unwind" fn relation_copy_data(
    rel: pg_sys::Relation,
    new_locator: *const compat::RelLocator,
) {
    // SAFETY: as above.
    unsafe { heap_unless_shadowed!(rel, "move", relation_copy_data(rel, new_locator)) }
}

/// VACUUM FULL and CLUSTER: heapam's rewrite, reading through a heap view.
/// A shadowed table's rows are partly the source's, which a rewrite would
/// have to judge for every snapshot still running in the clone; refused.
#[pg_guard]
#[allow(clippy::too_many_arguments)]
unsafe extern "C-unwind" fn relation_copy_for_cluster(
    old_table: pg_sys::Relation,
    new_table: pg_sys::Relation,
    old_index: pg_sys::Relation,
    use_sort: bool,
    oldest_xmin: pg_sys::TransactionId,
    xid_cutoff: *mut pg_sys::TransactionId,
    multi_cutoff: *mut pg_sys::MultiXactId,
    num_tuples: *mut f64,
    tups_vacuumed: *mut f64,
    tups_recently_dead: *mut f64,
) {
    // SAFETY: as above.
    unsafe {
        if is_shadowed(old_table) {
            refuse("VACUUM FULL or CLUSTER", old_table)
        }
        let view = heap_view(old_table);
        let copy = heap().relation_copy_for_cluster.expect("heapam rewrites");
        pg_call!(copy(
            view.rel,
            new_table,
            old_index,
            use_sort,
            oldest_xmin,
            xid_cutoff,
            multi_cutoff,
            num_tuples,
            tups_vacuumed,
            tups_recently_dead
        ));
        view.close();
    }
}

/// VACUUM (and autovacuum): heapam's, of the local heap. The source's rows
/// are the source's to vacuum; tombstones live in `cow.tombstone`, an
/// ordinary table that is vacuumed as one.
#[pg_guard]
unsafe extern "C-unwind" fn relation_vacuum(
    rel: pg_sys::Relation,
    params: *mut pg_sys::VacuumParams,
    bstrategy: pg_sys::BufferAccessStrategy,
) {
    local_heap!(relation_vacuum(rel, params, bstrategy))
}

/// The routine lives for the life of the process, as PostgreSQL requires.
struct Routine(pg_sys::TableAmRoutine);

// SAFETY: the routine is built once and never written again; PostgreSQL
// backends are single-threaded and only read it.
unsafe impl Sync for Routine {}
// SAFETY: as above.
unsafe impl Send for Routine {}

fn routine() -> &'static pg_sys::TableAmRoutine {
    static ROUTINE: OnceLock<Routine> = OnceLock::new();
    &ROUTINE
        .get_or_init(|| {
            // SAFETY: heapam's routine is a static, fully initialised struct.
            // Out-of-line values keep heapam's fetch: it scans the toast
            // table's index and fetches through this AM, so source chunks
            // are found in the source and judged with T.
            let mut routine = *heap();
            routine.scan_begin = Some(scan_begin);
            routine.scan_end = Some(scan_end);
            routine.scan_rescan = Some(scan_rescan);
            routine.scan_getnextslot = Some(scan_getnextslot);
            routine.scan_set_tidrange = Some(scan_set_tidrange);
            routine.scan_getnextslot_tidrange = Some(scan_getnextslot_tidrange);
            routine.scan_sample_next_block = Some(scan_sample_next_block);
            routine.scan_sample_next_tuple = Some(scan_sample_next_tuple);
            compat::install_shaped_scan_callbacks(&mut routine);
            routine.scan_analyze_next_tuple = Some(scan_analyze_next_tuple);
            routine.relation_size = Some(relation_size);
            routine.index_fetch_begin = Some(index_fetch_begin);
            routine.index_fetch_reset = Some(index_fetch_reset);
            routine.index_fetch_end = Some(index_fetch_end);
            routine.index_fetch_tuple = Some(index_fetch_tuple);
            routine.tuple_fetch_row_version = Some(tuple_fetch_row_version);
            routine.tuple_tid_valid = Some(tuple_tid_valid);
            routine.tuple_get_latest_tid = Some(tuple_get_latest_tid);
            routine.tuple_satisfies_snapshot = Some(tuple_satisfies_snapshot);
            routine.index_delete_tuples = Some(index_delete_tuples);
            routine.tuple_insert = Some(tuple_insert);
            routine.tuple_insert_speculative = Some(tuple_insert_speculative);
            routine.multi_insert = Some(multi_insert);
            routine.tuple_update = Some(tuple_update);
            routine.tuple_delete = Some(tuple_delete);
            routine.tuple_lock = Some(tuple_lock);
            compat::install_set_new_storage(&mut routine, relation_set_new_storage);
            routine.relation_nontransactional_truncate = Some(relation_nontransactional_truncate);
            routine.relation_copy_data = Some(relation_copy_data);
            routine.relation_copy_for_cluster = Some(relation_copy_for_cluster);
            routine.relation_vacuum = Some(relation_vacuum);
            routine.index_build_range_scan = Some(index_build_range_scan);
            routine.index_validate_scan = Some(index_validate_scan);
            Routine(routine)
        })
        .0
}

/// Whether a relation is a shadowed table (uses this AM).
///
/// # Safety
/// `rel` must be a valid relation.
pub unsafe fn is_cow_relation(rel: pg_sys::Relation) -> bool {
    // SAFETY: guaranteed by the caller.
    unsafe { std::ptr::eq((*rel).rd_tableam, routine()) }
}

#[no_mangle]
pub extern "C" fn pg_finfo_cow_tableam_handler() -> &'static pg_sys::Pg_finfo_record {
    static V1: pg_sys::Pg_finfo_record = pg_sys::Pg_finfo_record { api_version: 1 };
    &V1
}

/// `CREATE ACCESS METHOD cow TYPE TABLE HANDLER cow.cow_tableam_handler`.
#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn cow_tableam_handler(_fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    pg_sys::Datum::from(routine() as *const pg_sys::TableAmRoutine)
}

extension_sql!(
    r#"
CREATE FUNCTION cow.cow_tableam_handler(internal) RETURNS table_am_handler
    LANGUAGE c STRICT AS 'MODULE_PATHNAME', 'cow_tableam_handler';
CREATE ACCESS METHOD cow TYPE TABLE HANDLER cow.cow_tableam_handler;
COMMENT ON ACCESS METHOD cow IS 'cowclone: a clone''s table that still reads its source';
"#,
    name = "cow_table_access_method",
    requires = ["require_preloaded_at_create"],
);
