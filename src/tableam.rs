//! The `cow` table access method.
//!
//! A shadowed table's local part is a real heapam relation in the clone's own
//! file, so the routine starts as a copy of heapam's. Until reading through to
//! the source exists (issue #4), every entry point that would read rows, or
//! write them, refuses with `feature_not_supported`: an empty local heap must
//! never pass for the table's contents. Callbacks reached only after one of
//! those entry points (scan_getnextslot after scan_begin, ...) and those that
//! are correct for an empty local heap (size, estimates, toast needs) stay
//! heapam's.

use std::sync::OnceLock;

use pgrx::prelude::*;
use pgrx::{pg_sys, PgSqlErrorCode};

use crate::error::CowError;

/// Raised by every refused callback.
fn refuse(what: &str, rel: pg_sys::Relation) -> ! {
    // SAFETY: PostgreSQL passes a valid, open relation to every table AM callback.
    let name = unsafe { relation_name(rel) };
    CowError::new(
        PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
        format!("cannot {what} shadowed table \"{name}\" yet"),
    )
    .detail("Its rows still live in the source database; reading and writing them through a clone is not built yet.")
    .hint("This build of cowclone clones the schema only (issue #4 adds reads, #5 writes).")
    .raise()
}

/// # Safety
/// `rel` must be a valid relation.
pub unsafe fn relation_name(rel: pg_sys::Relation) -> String {
    // SAFETY: guaranteed by the caller: rd_rel points to the relation's pg_class form.
    unsafe { pgrx::name_data_to_str(&(*(*rel).rd_rel).relname).to_string() }
}

#[pg_guard]
unsafe extern "C-unwind" fn scan_begin(
    rel: pg_sys::Relation,
    _snapshot: pg_sys::Snapshot,
    _nkeys: std::ffi::c_int,
    _key: *mut pg_sys::ScanKeyData,
    _pscan: pg_sys::ParallelTableScanDesc,
    _flags: u32,
) -> pg_sys::TableScanDesc {
    refuse("scan", rel)
}

#[pg_guard]
unsafe extern "C-unwind" fn index_fetch_begin(
    rel: pg_sys::Relation,
) -> *mut pg_sys::IndexFetchTableData {
    refuse("fetch rows of", rel)
}

#[pg_guard]
unsafe extern "C-unwind" fn tuple_fetch_row_version(
    rel: pg_sys::Relation,
    _tid: pg_sys::ItemPointer,
    _snapshot: pg_sys::Snapshot,
    _slot: *mut pg_sys::TupleTableSlot,
) -> bool {
    refuse("fetch rows of", rel)
}

#[pg_guard]
unsafe extern "C-unwind" fn tuple_tid_valid(
    scan: pg_sys::TableScanDesc,
    _tid: pg_sys::ItemPointer,
) -> bool {
    // SAFETY: PostgreSQL passes a scan it began on a valid relation.
    refuse("fetch rows of", unsafe { (*scan).rs_rd })
}

#[pg_guard]
unsafe extern "C-unwind" fn tuple_get_latest_tid(
    scan: pg_sys::TableScanDesc,
    _tid: pg_sys::ItemPointer,
) {
    // SAFETY: as above.
    refuse("fetch rows of", unsafe { (*scan).rs_rd })
}

#[pg_guard]
unsafe extern "C-unwind" fn tuple_satisfies_snapshot(
    rel: pg_sys::Relation,
    _slot: *mut pg_sys::TupleTableSlot,
    _snapshot: pg_sys::Snapshot,
) -> bool {
    refuse("check rows of", rel)
}

#[pg_guard]
unsafe extern "C-unwind" fn index_delete_tuples(
    rel: pg_sys::Relation,
    _delstate: *mut pg_sys::TM_IndexDeleteOp,
) -> pg_sys::TransactionId {
    refuse("check rows of", rel)
}

#[pg_guard]
unsafe extern "C-unwind" fn tuple_insert(
    rel: pg_sys::Relation,
    _slot: *mut pg_sys::TupleTableSlot,
    _cid: pg_sys::CommandId,
    _options: std::ffi::c_int,
    _bistate: *mut pg_sys::BulkInsertStateData,
) {
    refuse("insert into", rel)
}

#[pg_guard]
unsafe extern "C-unwind" fn tuple_insert_speculative(
    rel: pg_sys::Relation,
    _slot: *mut pg_sys::TupleTableSlot,
    _cid: pg_sys::CommandId,
    _options: std::ffi::c_int,
    _bistate: *mut pg_sys::BulkInsertStateData,
    _spec_token: u32,
) {
    refuse("insert into", rel)
}

#[pg_guard]
unsafe extern "C-unwind" fn multi_insert(
    rel: pg_sys::Relation,
    _slots: *mut *mut pg_sys::TupleTableSlot,
    _nslots: std::ffi::c_int,
    _cid: pg_sys::CommandId,
    _options: std::ffi::c_int,
    _bistate: *mut pg_sys::BulkInsertStateData,
) {
    refuse("insert into", rel)
}

#[pg_guard]
unsafe extern "C-unwind" fn relation_set_new_filenode(
    rel: pg_sys::Relation,
    _newrnode: *const pg_sys::RelFileNode,
    _persistence: std::ffi::c_char,
    _freeze_xid: *mut pg_sys::TransactionId,
    _minmulti: *mut pg_sys::MultiXactId,
) {
    refuse("truncate or rewrite", rel)
}

#[pg_guard]
unsafe extern "C-unwind" fn relation_nontransactional_truncate(rel: pg_sys::Relation) {
    refuse("truncate", rel)
}

#[pg_guard]
unsafe extern "C-unwind" fn relation_copy_data(
    rel: pg_sys::Relation,
    _newrnode: *const pg_sys::RelFileNode,
) {
    refuse("move", rel)
}

#[pg_guard]
#[allow(clippy::too_many_arguments)]
unsafe extern "C-unwind" fn relation_copy_for_cluster(
    old_table: pg_sys::Relation,
    _new_table: pg_sys::Relation,
    _old_index: pg_sys::Relation,
    _use_sort: bool,
    _oldest_xmin: pg_sys::TransactionId,
    _xid_cutoff: *mut pg_sys::TransactionId,
    _multi_cutoff: *mut pg_sys::MultiXactId,
    _num_tuples: *mut f64,
    _tups_vacuumed: *mut f64,
    _tups_recently_dead: *mut f64,
) {
    refuse("rewrite", old_table)
}

/// VACUUM (and autovacuum) of a shadowed table: its local heap is all there
/// is to vacuum, and while nothing writes locally it stays empty, so there is
/// nothing to do. Anything else is refused rather than half-done.
#[pg_guard]
unsafe extern "C-unwind" fn relation_vacuum(
    rel: pg_sys::Relation,
    _params: *mut pg_sys::VacuumParams,
    _bstrategy: pg_sys::BufferAccessStrategy,
) {
    // SAFETY: rel is a valid open relation; its main fork exists.
    let local_blocks =
        unsafe { pg_sys::RelationGetNumberOfBlocksInFork(rel, pg_sys::ForkNumber::MAIN_FORKNUM) };
    if local_blocks != 0 {
        refuse("vacuum", rel)
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn index_validate_scan(
    table_rel: pg_sys::Relation,
    _index_rel: pg_sys::Relation,
    _index_info: *mut pg_sys::IndexInfo,
    _snapshot: pg_sys::Snapshot,
    _state: *mut pg_sys::ValidateIndexState,
) {
    refuse("index", table_rel)
}

#[pg_guard]
unsafe extern "C-unwind" fn relation_fetch_toast_slice(
    toastrel: pg_sys::Relation,
    _valueid: pg_sys::Oid,
    _attrsize: i32,
    _sliceoffset: i32,
    _slicelength: i32,
    _result: *mut pg_sys::varlena,
) {
    refuse("read out-of-line values of", toastrel)
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
            let mut routine = unsafe { *pg_sys::GetHeapamTableAmRoutine() };
            routine.scan_begin = Some(scan_begin);
            routine.index_fetch_begin = Some(index_fetch_begin);
            routine.tuple_fetch_row_version = Some(tuple_fetch_row_version);
            routine.tuple_tid_valid = Some(tuple_tid_valid);
            routine.tuple_get_latest_tid = Some(tuple_get_latest_tid);
            routine.tuple_satisfies_snapshot = Some(tuple_satisfies_snapshot);
            routine.index_delete_tuples = Some(index_delete_tuples);
            routine.tuple_insert = Some(tuple_insert);
            routine.tuple_insert_speculative = Some(tuple_insert_speculative);
            routine.multi_insert = Some(multi_insert);
            routine.relation_set_new_filenode = Some(relation_set_new_filenode);
            routine.relation_nontransactional_truncate = Some(relation_nontransactional_truncate);
            routine.relation_copy_data = Some(relation_copy_data);
            routine.relation_copy_for_cluster = Some(relation_copy_for_cluster);
            routine.relation_vacuum = Some(relation_vacuum);
            routine.index_validate_scan = Some(index_validate_scan);
            routine.relation_fetch_toast_slice = Some(relation_fetch_toast_slice);
            Routine(routine)
        })
        .0
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
