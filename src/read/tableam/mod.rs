//! The `cow` table access method.
//!
//! A shadowed table is two heaps seen as one: the source's heap as of the
//! clone point T (read through shared buffers, judged with T, never written)
//! and the clone's own local heap (a real heapam relation, judged with the
//! query's snapshot). Scans walk a virtual block space: the source's blocks
//! first, then the local ones; TIDs of source rows live in the source TID
//! space (see `state::tid`). Local work is heapam's wherever heapam's code
//! can be handed the relation as is.
//!
//! Writes: inserts go to the local heap; the first update, delete or row
//! lock of a source row records a tombstone (see `write`), and
//! an update puts the new version in the local heap, where heapam takes over.
//! Every source row a scan finds is judged with T and then with the
//! tombstones the query's snapshot sees.

use std::sync::OnceLock;

use pgrx::prelude::*;
use pgrx::{pg_sys, PgSqlErrorCode};

use crate::pg::compat;
use crate::pg::error::CowError;
use crate::pg::page::BLCKSZ;
use crate::pg::relation::relation_name;
use crate::pg::relcopy::RelationCopy;
use crate::read::clone_view;
use crate::read::heap_page::{self, PageSource, MAX_TUPLES_PER_PAGE};
use crate::state::jobs;
use crate::state::tid::{self, TidSpace};
use crate::write::claim::{self, Claim, LocalSizing, Operation};
use crate::write::tombstone::{self, Verdict};

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
macro_rules! heap_scan_unless_ours {
    ($scan:expr, $callback:ident($($arg:expr),*)) => {
        // SAFETY: the scan was begun by scan_begin, ours or heapam's.
        if !unsafe { $crate::read::tableam::is_cow_scan($scan) } {
            let delegate = $crate::read::tableam::heap()
                .$callback
                .expect("heapam implements every scan callback");
            return pg_call!(delegate($($arg),*));
        }
    };
}

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

mod bitmap;
mod build;
mod fetch;
mod maintenance;
mod modify;
mod sample;
mod scan;

use bitmap::*;
pub use build::with_empty_build_scans;
use build::*;
use fetch::*;
use maintenance::*;
use modify::*;
use sample::*;
use scan::*;

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
        if !whole || claim::local_sizing() {
            return local;
        }
        let source = clone_view::for_cow_relation(rel)
            .and_then(|view| view.source_locator(compat::relfilenode_of(rel)))
            .map(clone_view::source_block_count)
            .unwrap_or(0);
        local + source as u64 * BLCKSZ as u64
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
    unsafe { clone_view::for_cow_relation(rel) }
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
            compat::install_shaped_scan_callbacks::<CowScans>(&mut routine);
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

/// The scan code behind the callbacks whose shape changed between majors.
struct CowScans;

impl compat::ShapedScans for CowScans {
    unsafe fn is_own_scan(scan: pg_sys::TableScanDesc) -> bool {
        // SAFETY: guaranteed by the trait's contract.
        unsafe { is_cow_scan(scan) }
    }

    unsafe fn analyze_block(
        scan: pg_sys::TableScanDesc,
        block: pg_sys::BlockNumber,
        strategy: pg_sys::BufferAccessStrategy,
    ) -> bool {
        // SAFETY: guaranteed by the trait's contract.
        unsafe { analyze_block(scan, block, strategy) }
    }

    unsafe fn bitmap_page(scan: pg_sys::TableScanDesc, page: compat::BitmapPage) -> Option<bool> {
        // SAFETY: guaranteed by the trait's contract.
        unsafe { bitmap_page(scan, page) }
    }

    unsafe fn bitmap_tuple(scan: pg_sys::TableScanDesc, slot: *mut pg_sys::TupleTableSlot) -> bool {
        // SAFETY: guaranteed by the trait's contract.
        unsafe { bitmap_tuple(scan, slot) }
    }
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
