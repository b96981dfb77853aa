//! Wrapper index access methods: `cow_btree`, `cow_hash`, `cow_gist`,
//! `cow_gin`, `cow_spgist`, `cow_brin`.
//!
//! A shadowed index keeps its definition, opclasses and OIDs; only its AM
//! changes to the wrapper of its original AM. Each wrapper reports exactly the
//! capabilities of the AM it wraps (so the planner, `pg_get_indexdef` and
//! `\d` treat it the same) and delegates option parsing, validation and cost
//! estimation.
//!
//! A scan reads the source's index file with the wrapped AM's own code,
//! through a copy of the clone's index descriptor pointed at the source's
//! storage (same definition, same OIDs), and moves every TID it returns into
//! the source TID space; the table AM then judges each row with T. The copy
//! never lets the source index be written: killed-item hints are never
//! passed on, and the inner scan runs under SnapshotAny so it takes no
//! predicate locks naming the source's pages. The clone's own (local) part
//! of each index stays empty until writes exist (issue #5), which refuse
//! with `feature_not_supported` together with index builds and vacuum.

use pgrx::prelude::*;
use pgrx::{pg_sys, PgSqlErrorCode};

use crate::clone_view;
use crate::compat;
use crate::error::CowError;
use crate::relcopy::RelationCopy;
use crate::tableam::relation_name;

/// Every wrapped AM: (wrapper name, the wrapped AM's OID, its name).
pub const WRAPPED: [(&str, u32, &str); 6] = [
    ("cow_btree", pg_sys::BTREE_AM_OID.to_u32(), "btree"),
    ("cow_hash", pg_sys::HASH_AM_OID.to_u32(), "hash"),
    ("cow_gist", pg_sys::GIST_AM_OID.to_u32(), "gist"),
    ("cow_gin", pg_sys::GIN_AM_OID.to_u32(), "gin"),
    ("cow_spgist", pg_sys::SPGIST_AM_OID.to_u32(), "spgist"),
    ("cow_brin", pg_sys::BRIN_AM_OID.to_u32(), "brin"),
];

fn refuse(what: &str, index: pg_sys::Relation) -> ! {
    // SAFETY: PostgreSQL passes a valid, open index to every index AM callback.
    let name = unsafe { relation_name(index) };
    CowError::new(
        PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
        format!("cannot {what} shadowed index \"{name}\" yet"),
    )
    .detail("Its entries still live in the source database; writing them through a clone is not built yet.")
    .hint("This build of cowclone reads clones; writes come with issue #5.")
    .raise()
}

/// Whether an index still has a source part. One without (on a table
/// created in a clone, or restored from a clone's dump elsewhere) is simply
/// an index of the wrapped AM, and every callback hands it over.
///
/// # Safety
/// `index` must be a valid relation.
unsafe fn is_shadowed(index: pg_sys::Relation) -> bool {
    // SAFETY: guaranteed by the caller.
    clone_view::current()
        .and_then(|view| view.source_locator(unsafe { compat::relfilenode_of(index) }))
        .is_some()
}

#[pg_guard]
unsafe extern "C-unwind" fn ambuild(
    heap: pg_sys::Relation,
    index: pg_sys::Relation,
    info: *mut pg_sys::IndexInfo,
) -> *mut pg_sys::IndexBuildResult {
    // SAFETY: PostgreSQL passes valid relations, handed on unchanged.
    unsafe {
        if is_shadowed(index) {
            refuse("build", index)
        }
        let build = wrapped_routine(index).ambuild.expect("every AM builds");
        pg_call!(build(heap, index, info))
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn ambuildempty(index: pg_sys::Relation) {
    // SAFETY: as above.
    unsafe {
        if is_shadowed(index) {
            refuse("build", index)
        }
        let build = wrapped_routine(index)
            .ambuildempty
            .expect("every AM builds");
        pg_call!(build(index))
    }
}

#[pg_guard]
#[allow(clippy::too_many_arguments)]
unsafe extern "C-unwind" fn aminsert(
    index: pg_sys::Relation,
    values: *mut pg_sys::Datum,
    isnull: *mut bool,
    heap_tid: pg_sys::ItemPointer,
    heap: pg_sys::Relation,
    check_unique: pg_sys::IndexUniqueCheck::Type,
    index_unchanged: bool,
    info: *mut pg_sys::IndexInfo,
) -> bool {
    // SAFETY: as above.
    unsafe {
        if is_shadowed(index) {
            refuse("insert into", index)
        }
        let insert = wrapped_routine(index).aminsert.expect("every AM inserts");
        pg_call!(insert(
            index,
            values,
            isnull,
            heap_tid,
            heap,
            check_unique,
            index_unchanged,
            info
        ))
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn ambulkdelete(
    info: *mut pg_sys::IndexVacuumInfo,
    stats: *mut pg_sys::IndexBulkDeleteResult,
    callback: pg_sys::IndexBulkDeleteCallback,
    state: *mut std::ffi::c_void,
) -> *mut pg_sys::IndexBulkDeleteResult {
    // SAFETY: PostgreSQL passes valid vacuum info naming the index.
    unsafe {
        let index = (*info).index;
        if is_shadowed(index) {
            refuse("vacuum", index)
        }
        let delete = wrapped_routine(index)
            .ambulkdelete
            .expect("every AM vacuums");
        pg_call!(delete(info, stats, callback, state))
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn amvacuumcleanup(
    info: *mut pg_sys::IndexVacuumInfo,
    stats: *mut pg_sys::IndexBulkDeleteResult,
) -> *mut pg_sys::IndexBulkDeleteResult {
    // SAFETY: as above.
    unsafe {
        let index = (*info).index;
        if !is_shadowed(index) {
            let cleanup = wrapped_routine(index)
                .amvacuumcleanup
                .expect("every AM vacuums");
            return pg_call!(cleanup(info, stats));
        }
        // ANALYZE asks every index for cleanup with nothing deleted: nothing to do.
        if (*info).analyze_only {
            return std::ptr::null_mut();
        }
        refuse("vacuum", index)
    }
}

/// The routine of the AM a wrapper index wraps, looked up once per wrapper
/// AM in this backend (a backend's database, and so its AM OIDs, never
/// change) and kept in TopMemoryContext.
///
/// # Safety
/// `index` must be a valid index relation using one of the wrappers.
unsafe fn wrapped_routine(index: pg_sys::Relation) -> &'static pg_sys::IndexAmRoutine {
    thread_local! {
        static ROUTINES: std::cell::RefCell<Vec<(pg_sys::Oid, usize)>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    // SAFETY: guaranteed by the caller.
    let wrapper = unsafe { (*(*index).rd_rel).relam };
    if let Some(found) = ROUTINES.with(|r| {
        r.borrow()
            .iter()
            .find(|(am, _)| *am == wrapper)
            .map(|(_, p)| *p)
    }) {
        // SAFETY: stored below from a routine allocated in TopMemoryContext.
        return unsafe { &*(found as *const pg_sys::IndexAmRoutine) };
    }
    // SAFETY: get_am_name returns a palloc'd copy or null; the handler's
    // routine is allocated in TopMemoryContext so it lives for the process.
    let routine = unsafe {
        let name = pg_sys::get_am_name(wrapper);
        let name = if name.is_null() {
            String::new()
        } else {
            std::ffi::CStr::from_ptr(name)
                .to_string_lossy()
                .into_owned()
        };
        let wrapped = WRAPPED
            .iter()
            .find(|(w, _, _)| *w == name)
            .map(|(_, oid, _)| pg_sys::Oid::from(*oid))
            .unwrap_or_else(|| {
                CowError::new(
                    PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
                    format!("access method \"{name}\" is not a cowclone index wrapper"),
                )
                .raise()
            });
        let old = pg_sys::MemoryContextSwitchTo(pg_sys::TopMemoryContext);
        let routine = pg_sys::GetIndexAmRoutineByAmId(wrapped, false);
        pg_sys::MemoryContextSwitchTo(old);
        routine
    };
    ROUTINES.with(|r| r.borrow_mut().push((wrapper, routine as usize)));
    // SAFETY: allocated in TopMemoryContext, never freed.
    unsafe { &*routine }
}

/// A copy of a clone's index descriptor that reads the source's index file.
///
/// The wrapped AM caches metapages and support functions in the copy's
/// memory context (never in the clone's relcache entry, whose caches
/// describe the local file); the storage handle goes back to the backend's
/// owner field for the source file when the copy goes. The wrapped AM's
/// routine is shared and long-lived.
struct SourceIndex {
    copy: RelationCopy,
}

impl SourceIndex {
    /// None when the index does not shadow source storage.
    ///
    /// # Safety
    /// `index` must be a valid, open index relation using a wrapper AM.
    unsafe fn open(index: pg_sys::Relation) -> Option<Self> {
        // SAFETY: guaranteed by the caller; the fields replaced below are
        // the ones that describe the storage and its caches.
        unsafe {
            let view = clone_view::current()?;
            let locator = view.source_locator(compat::relfilenode_of(index))?;
            let home = clone_view::smgr_home(locator);
            let copy = RelationCopy::new(index, c"cowclone source index", home);
            let rel = copy.rel;
            compat::set_relation_locator(rel, locator);
            (*rel).rd_amcache = std::ptr::null_mut();
            (*rel).rd_indexcxt = copy.context;
            (*rel).rd_indam = wrapped_routine(index) as *const _ as *mut _;
            let support =
                (*(*rel).rd_indam).amsupport as usize * (*(*index).rd_rel).relnatts as usize;
            (*rel).rd_supportinfo = pg_sys::MemoryContextAllocZero(
                copy.context,
                support.max(1) * std::mem::size_of::<pg_sys::FmgrInfo>(),
            ) as *mut pg_sys::FmgrInfo;
            compat::own_smgr(home, locator);
            compat::hand_smgr_to(home, &mut (*rel).rd_smgr);
            Some(Self { copy })
        }
    }

    fn rel(&self) -> pg_sys::Relation {
        self.copy.rel
    }

    fn routine(&self) -> &pg_sys::IndexAmRoutine {
        // SAFETY: set in open() to the wrapped AM's routine, which lives for the process.
        unsafe { &*(*self.copy.rel).rd_indam }
    }

    fn close(self) {
        self.copy.close();
    }
}

/// The state of a wrapper index scan, in the outer scan's `opaque`: the
/// wrapped AM's scan of the source's index (TIDs moved to the source TID
/// space) or, for an index without a source part, of the index itself.
struct CowIndexScan {
    source: Option<SourceIndex>,
    inner: pg_sys::IndexScanDesc,
    routine: &'static pg_sys::IndexAmRoutine,
}

/// # Safety
/// `scan` must be a scan begun by `ambeginscan`.
unsafe fn state<'a>(scan: pg_sys::IndexScanDesc) -> &'a mut CowIndexScan {
    // SAFETY: guaranteed by the caller.
    unsafe { &mut *((*scan).opaque as *mut CowIndexScan) }
}

#[pg_guard]
unsafe extern "C-unwind" fn ambeginscan(
    index: pg_sys::Relation,
    nkeys: std::ffi::c_int,
    norderbys: std::ffi::c_int,
) -> pg_sys::IndexScanDesc {
    // SAFETY: PostgreSQL passes a valid, open index. The inner scan's fields
    // that index_beginscan_internal would set are set here and in amrescan,
    // as the inner scan is begun by hand.
    unsafe {
        let scan = pg_sys::RelationGetIndexScan(index, nkeys, norderbys);
        let routine = wrapped_routine(index);
        let source = SourceIndex::open(index);
        let scanned = source.as_ref().map_or(index, SourceIndex::rel);
        let begin = routine.ambeginscan.expect("every AM begins scans");
        let inner = pg_call!(begin(scanned, nkeys, norderbys));
        (*inner).parallel_scan = std::ptr::null_mut();
        (*inner).xs_heapfetch = std::ptr::null_mut();
        (*inner).xs_temp_snap = false;
        let state = pg_sys::palloc0(std::mem::size_of::<CowIndexScan>()) as *mut CowIndexScan;
        std::ptr::write(
            state,
            CowIndexScan {
                source,
                inner,
                routine,
            },
        );
        (*scan).opaque = state.cast();
        scan
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn amrescan(
    scan: pg_sys::IndexScanDesc,
    keys: pg_sys::ScanKey,
    nkeys: std::ffi::c_int,
    orderbys: pg_sys::ScanKey,
    norderbys: std::ffi::c_int,
) {
    // SAFETY: a scan begun by ambeginscan; keys are the executor's.
    unsafe {
        let state = state(scan);
        let inner = state.inner;
        (*inner).heapRelation = (*scan).heapRelation;
        (*inner).xs_want_itup = (*scan).xs_want_itup;
        (*inner).kill_prior_tuple = false;
        if state.source.is_some() {
            (*inner).xs_snapshot = &raw mut pg_sys::SnapshotAnyData;
            (*inner).ignore_killed_tuples = true;
        } else {
            (*inner).xs_snapshot = (*scan).xs_snapshot;
            (*inner).ignore_killed_tuples = (*scan).ignore_killed_tuples;
        }
        let rescan = state.routine.amrescan.expect("every AM rescans");
        pg_call!(rescan(inner, keys, nkeys, orderbys, norderbys));
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn amgettuple(
    scan: pg_sys::IndexScanDesc,
    direction: pg_sys::ScanDirection::Type,
) -> bool {
    // SAFETY: a scan begun by ambeginscan and rescanned; the inner scan's
    // results stay valid until its next call, as the outer's must.
    unsafe {
        let state = state(scan);
        let inner = state.inner;
        // Killed-item hints are the clone's idea of deadness: never for the
        // source's index, as heapam gives them for the index itself.
        (*inner).kill_prior_tuple = state.source.is_none() && (*scan).kill_prior_tuple;
        let get = state
            .routine
            .amgettuple
            .expect("amgettuple is only called when the AM has it");
        if !pg_call!(get(inner, direction)) {
            return false;
        }
        let tid = (*inner).xs_heaptid;
        (*scan).xs_heaptid = if state.source.is_some() {
            clone_view::source_tid(clone_view::block_of(&tid), tid.ip_posid)
        } else {
            tid
        };
        (*scan).xs_recheck = (*inner).xs_recheck;
        (*scan).xs_itup = (*inner).xs_itup;
        (*scan).xs_itupdesc = (*inner).xs_itupdesc;
        (*scan).xs_hitup = (*inner).xs_hitup;
        (*scan).xs_hitupdesc = (*inner).xs_hitupdesc;
        (*scan).xs_orderbyvals = (*inner).xs_orderbyvals;
        (*scan).xs_orderbynulls = (*inner).xs_orderbynulls;
        (*scan).xs_recheckorderby = (*inner).xs_recheckorderby;
        true
    }
}

/// For the source's index, the inner scan fills a private bitmap with
/// source TIDs; they are moved into the source TID space page by page
/// (lossy pages stay lossy).
#[pg_guard]
unsafe extern "C-unwind" fn amgetbitmap(
    scan: pg_sys::IndexScanDesc,
    tbm: *mut pg_sys::TIDBitmap,
) -> i64 {
    // SAFETY: a scan begun by ambeginscan and rescanned; the private bitmap
    // and its iterator are freed before returning.
    unsafe {
        let state = state(scan);
        let inner = state.inner;
        let get = state
            .routine
            .amgetbitmap
            .expect("amgetbitmap is only called when the AM has it");
        if state.source.is_none() {
            return pg_call!(get(inner, tbm));
        }
        let own = pg_sys::tbm_create(
            pg_sys::work_mem as std::ffi::c_long * 1024,
            std::ptr::null_mut(),
        );
        let found = pg_call!(get(inner, own));
        let iterator = pg_sys::tbm_begin_iterate(own);
        let mut tids: Vec<pg_sys::ItemPointerData> = Vec::new();
        loop {
            let page = pg_sys::tbm_iterate(iterator);
            if page.is_null() {
                break;
            }
            let block = (*page).blockno;
            if (*page).ntuples < 0 {
                pg_sys::tbm_add_page(tbm, block + clone_view::SOURCE_BLOCK_BASE);
                continue;
            }
            let offsets =
                std::slice::from_raw_parts((*page).offsets.as_ptr(), (*page).ntuples as usize);
            tids.clear();
            tids.extend(
                offsets
                    .iter()
                    .map(|&offset| clone_view::source_tid(block, offset)),
            );
            pg_sys::tbm_add_tuples(tbm, tids.as_mut_ptr(), tids.len() as i32, (*page).recheck);
        }
        pg_sys::tbm_end_iterate(iterator);
        pg_sys::tbm_free(own);
        found
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn amendscan(scan: pg_sys::IndexScanDesc) {
    // SAFETY: a scan begun by ambeginscan; the inner scan ends before the
    // descriptor copy it reads is freed.
    unsafe {
        let state = state(scan);
        let end = state.routine.amendscan.expect("every AM ends scans");
        pg_call!(end(state.inner));
        if let Some(source) = state.source.take() {
            source.close();
        }
        pg_sys::pfree((*scan).opaque);
        (*scan).opaque = std::ptr::null_mut();
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn ammarkpos(scan: pg_sys::IndexScanDesc) {
    // SAFETY: a scan begun by ambeginscan; only called when the wrapped AM marks.
    unsafe {
        let state = state(scan);
        let mark = state.routine.ammarkpos.expect("marking AM");
        pg_call!(mark(state.inner));
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn amrestrpos(scan: pg_sys::IndexScanDesc) {
    // SAFETY: as in ammarkpos.
    unsafe {
        let state = state(scan);
        let restore = state.routine.amrestrpos.expect("marking AM");
        pg_call!(restore(state.inner));
    }
}

/// SP-GiST answers from its metapage cache, so ask the source's index.
#[pg_guard]
unsafe extern "C-unwind" fn amcanreturn(index: pg_sys::Relation, attno: std::ffi::c_int) -> bool {
    // SAFETY: PostgreSQL passes a valid, open index.
    unsafe {
        let Some(source) = SourceIndex::open(index) else {
            return match wrapped_routine(index).amcanreturn {
                Some(can_return) => pg_call!(can_return(index, attno)),
                None => false,
            };
        };
        let answer = match source.routine().amcanreturn {
            Some(can_return) => pg_call!(can_return(source.rel(), attno)),
            None => false,
        };
        source.close();
        answer
    }
}

/// The wrapped AM's estimate. For a shadowed index it is told the source
/// index's real size and marked hypothetical, so that GIN and BRIN do not
/// read statistics from the empty local file (they estimate from the size).
#[pg_guard]
#[allow(clippy::too_many_arguments)]
unsafe extern "C-unwind" fn amcostestimate(
    root: *mut pg_sys::PlannerInfo,
    path: *mut pg_sys::IndexPath,
    loop_count: f64,
    startup_cost: *mut pg_sys::Cost,
    total_cost: *mut pg_sys::Cost,
    selectivity: *mut pg_sys::Selectivity,
    correlation: *mut f64,
    pages: *mut f64,
) {
    // SAFETY: the planner passes a valid path whose indexinfo names a
    // wrapper index it has locked.
    unsafe {
        let info = (*path).indexinfo;
        let index = pg_sys::RelationIdGetRelation((*info).indexoid);
        let routine = wrapped_routine(index);
        let source = clone_view::current()
            .and_then(|view| view.source_locator(compat::relfilenode_of(index)));
        if let Some(locator) = source {
            (*info).pages = clone_view::source_block_count(locator);
        }
        pg_sys::RelationClose(index);
        let hypothetical = (*info).hypothetical;
        (*info).hypothetical = hypothetical || source.is_some();
        let estimate = routine.amcostestimate.expect("every AM estimates");
        pg_call!(estimate(
            root,
            path,
            loop_count,
            startup_cost,
            total_cost,
            selectivity,
            correlation,
            pages,
        ));
        (*info).hypothetical = hypothetical;
    }
}

/// The wrapped AM's routine with the wrapper's callbacks in place.
fn wrapper_routine(wrapped_am: pg_sys::Oid) -> pg_sys::Datum {
    // SAFETY: a built-in AM's handler returns a freshly palloc'd routine,
    // which we own and may edit before handing it to PostgreSQL.
    unsafe {
        let routine = pg_sys::GetIndexAmRoutineByAmId(wrapped_am, false);
        (*routine).ambuild = Some(ambuild);
        (*routine).ambuildempty = Some(ambuildempty);
        (*routine).aminsert = Some(aminsert);
        (*routine).ambulkdelete = Some(ambulkdelete);
        (*routine).amvacuumcleanup = Some(amvacuumcleanup);
        (*routine).ambeginscan = Some(ambeginscan);
        (*routine).amrescan = Some(amrescan);
        (*routine).amendscan = Some(amendscan);
        (*routine).amcostestimate = Some(amcostestimate);
        // Parallel index scans would share the wrapped AM's state across
        // workers; shadowed tables get no partial paths anyway.
        (*routine).amcanparallel = false;
        if (*routine).amgettuple.is_some() {
            (*routine).amgettuple = Some(amgettuple);
        }
        if (*routine).amgetbitmap.is_some() {
            (*routine).amgetbitmap = Some(amgetbitmap);
        }
        if (*routine).ammarkpos.is_some() {
            (*routine).ammarkpos = Some(ammarkpos);
            (*routine).amrestrpos = Some(amrestrpos);
        }
        if (*routine).amcanreturn.is_some() {
            (*routine).amcanreturn = Some(amcanreturn);
        }
        pg_sys::Datum::from(routine)
    }
}

macro_rules! wrapper_handler {
    ($handler:ident, $finfo:ident, $am:expr) => {
        #[no_mangle]
        pub extern "C" fn $finfo() -> &'static pg_sys::Pg_finfo_record {
            static V1: pg_sys::Pg_finfo_record = pg_sys::Pg_finfo_record { api_version: 1 };
            &V1
        }

        #[pg_guard]
        #[no_mangle]
        pub extern "C-unwind" fn $handler(_fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
            wrapper_routine($am)
        }
    };
}

wrapper_handler!(
    cow_btree_handler,
    pg_finfo_cow_btree_handler,
    pg_sys::BTREE_AM_OID
);
wrapper_handler!(
    cow_hash_handler,
    pg_finfo_cow_hash_handler,
    pg_sys::HASH_AM_OID
);
wrapper_handler!(
    cow_gist_handler,
    pg_finfo_cow_gist_handler,
    pg_sys::GIST_AM_OID
);
wrapper_handler!(
    cow_gin_handler,
    pg_finfo_cow_gin_handler,
    pg_sys::GIN_AM_OID
);
wrapper_handler!(
    cow_spgist_handler,
    pg_finfo_cow_spgist_handler,
    pg_sys::SPGIST_AM_OID
);
wrapper_handler!(
    cow_brin_handler,
    pg_finfo_cow_brin_handler,
    pg_sys::BRIN_AM_OID
);

extension_sql!(
    r#"
CREATE FUNCTION cow.cow_btree_handler(internal) RETURNS index_am_handler
    LANGUAGE c STRICT AS 'MODULE_PATHNAME', 'cow_btree_handler';
CREATE FUNCTION cow.cow_hash_handler(internal) RETURNS index_am_handler
    LANGUAGE c STRICT AS 'MODULE_PATHNAME', 'cow_hash_handler';
CREATE FUNCTION cow.cow_gist_handler(internal) RETURNS index_am_handler
    LANGUAGE c STRICT AS 'MODULE_PATHNAME', 'cow_gist_handler';
CREATE FUNCTION cow.cow_gin_handler(internal) RETURNS index_am_handler
    LANGUAGE c STRICT AS 'MODULE_PATHNAME', 'cow_gin_handler';
CREATE FUNCTION cow.cow_spgist_handler(internal) RETURNS index_am_handler
    LANGUAGE c STRICT AS 'MODULE_PATHNAME', 'cow_spgist_handler';
CREATE FUNCTION cow.cow_brin_handler(internal) RETURNS index_am_handler
    LANGUAGE c STRICT AS 'MODULE_PATHNAME', 'cow_brin_handler';
CREATE ACCESS METHOD cow_btree TYPE INDEX HANDLER cow.cow_btree_handler;
CREATE ACCESS METHOD cow_hash TYPE INDEX HANDLER cow.cow_hash_handler;
CREATE ACCESS METHOD cow_gist TYPE INDEX HANDLER cow.cow_gist_handler;
CREATE ACCESS METHOD cow_gin TYPE INDEX HANDLER cow.cow_gin_handler;
CREATE ACCESS METHOD cow_spgist TYPE INDEX HANDLER cow.cow_spgist_handler;
CREATE ACCESS METHOD cow_brin TYPE INDEX HANDLER cow.cow_brin_handler;
"#,
    name = "cow_index_access_methods",
    requires = ["require_preloaded_at_create"],
);
