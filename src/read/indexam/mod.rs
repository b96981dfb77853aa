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
//! predicate locks naming the source's pages.
//!
//! The index's own file is its local part: an index of the wrapped AM over
//! the local heap, built empty the first time a row is inserted, then
//! written, scanned and vacuumed by the wrapped AM as any index. Scans read
//! both parts: ordered btree scans and distance-ordered (KNN) scans merge
//! them in order, others read one after the other. A unique index checks a
//! new key against the source's rows too (those the clone still sees).

use pgrx::prelude::*;
use pgrx::{pg_sys, PgSqlErrorCode};

use crate::pg::compat;
use crate::pg::error::CowError;
use crate::pg::relation::relation_name;
use crate::pg::relcopy::RelationCopy;
use crate::read::clone_view;
use crate::state::tid::{block_of, source_tid, SOURCE_BLOCK_BASE};

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
        format!("cannot {what} shadowed index \"{name}\""),
    )
    .detail("Its entries partly live in the source database, which a clone never changes.")
    .hint("REINDEX the index in the clone to make it entirely the clone's own.")
    .raise()
}

/// The AM a wrapper AM wraps, if `relam` is one of the wrappers. Called for
/// every row an index scan or insert hands to the wrapped AM (SeenAsWrapped),
/// so answers are remembered per backend: an access method's OID names the
/// same AM for as long as the extension that made it exists.
pub fn wraps(relam: pg_sys::Oid) -> Option<pg_sys::Oid> {
    const BUILT_IN: [u32; 6] = [
        pg_sys::BTREE_AM_OID.to_u32(),
        pg_sys::HASH_AM_OID.to_u32(),
        pg_sys::GIST_AM_OID.to_u32(),
        pg_sys::GIN_AM_OID.to_u32(),
        pg_sys::SPGIST_AM_OID.to_u32(),
        pg_sys::BRIN_AM_OID.to_u32(),
    ];
    thread_local! {
        static KNOWN: std::cell::RefCell<Vec<(pg_sys::Oid, Option<pg_sys::Oid>)>> =
            const { std::cell::RefCell::new(Vec::new()) };
    }
    if BUILT_IN.contains(&relam.to_u32()) {
        return None;
    }
    if let Some(known) = KNOWN.with(|k| {
        k.borrow()
            .iter()
            .find(|(am, _)| *am == relam)
            .map(|(_, wrapped)| *wrapped)
    }) {
        return known;
    }
    // SAFETY: get_am_name returns a palloc'd copy (freed here) or null.
    let name = unsafe {
        let name = pg_sys::get_am_name(relam);
        if name.is_null() {
            return None;
        }
        let owned = std::ffi::CStr::from_ptr(name)
            .to_string_lossy()
            .into_owned();
        pg_sys::pfree(name.cast());
        owned
    };
    let wrapped = WRAPPED
        .iter()
        .find(|(w, _, _)| *w == name)
        .map(|(_, oid, _)| pg_sys::Oid::from(*oid));
    KNOWN.with(|k| k.borrow_mut().push((relam, wrapped)));
    wrapped
}

/// Whether an index still has a source part (its own file is then its
/// local part).
///
/// # Safety
/// `index` must be a valid relation.
pub unsafe fn is_shadowed_index(index: pg_sys::Relation) -> bool {
    // SAFETY: guaranteed by the caller.
    unsafe { is_shadowed(index) }
}

/// Whether an index still has a source part. One without (on a table
/// created in a clone, or restored from a clone's dump elsewhere) is simply
/// an index of the wrapped AM, and every callback hands it over.
///
/// # Safety
/// `index` must be a valid relation.
unsafe fn is_shadowed(index: pg_sys::Relation) -> bool {
    // SAFETY: guaranteed by the caller.
    unsafe { clone_view::for_cow_relation(index) }
        .and_then(|view| view.source_locator(unsafe { compat::relfilenode_of(index) }))
        .is_some()
}

/// Shows an index to its wrapped AM as one of the wrapped AM's own for the
/// length of one call: the AMs' reloption accessors (fillfactor, fast
/// update, pages per range, ...) assert that the relation's `relam` is
/// theirs. The relcache's form is patched in place and put back afterwards,
/// also when the call raises (pg_call! turns the error into an unwinding
/// panic, which drops this guard); a relcache rebuild meanwhile replaces
/// the form with the catalog's, which is left alone.
struct SeenAsWrapped {
    rel: pg_sys::Relation,
    own_am: pg_sys::Oid,
    wrapped_am: pg_sys::Oid,
}

impl SeenAsWrapped {
    /// # Safety
    /// `rel` must be an open index relation that stays open past the guard.
    unsafe fn new(rel: pg_sys::Relation) -> Self {
        // SAFETY: guaranteed by the caller.
        unsafe {
            let own_am = (*(*rel).rd_rel).relam;
            let wrapped_am = wraps(own_am).unwrap_or(own_am);
            (*(*rel).rd_rel).relam = wrapped_am;
            Self {
                rel,
                own_am,
                wrapped_am,
            }
        }
    }
}

impl Drop for SeenAsWrapped {
    fn drop(&mut self) {
        // SAFETY: the relation is still open (see new); its form is read afresh.
        unsafe {
            let form = (*self.rel).rd_rel;
            if !form.is_null() && (*form).relam == self.wrapped_am {
                (*form).relam = self.own_am;
            }
        }
    }
}

/// Makes a descriptor copy of a wrapper index the wrapped AM's own index:
/// its routine, its own caches in the copy's context, and its own pg_class
/// form naming the wrapped AM (the wrapped AM's code asserts that the index
/// is its own, see SeenAsWrapped; the relcache's form keeps the wrapper's).
///
/// # Safety
/// `copy` must be a fresh copy of `index`, a valid wrapper index relation.
unsafe fn make_wrapped_index(copy: &RelationCopy, index: pg_sys::Relation) {
    // SAFETY: guaranteed by the caller; everything lives in the copy's context.
    unsafe {
        let rel = copy.rel;
        let form = pg_sys::MemoryContextAlloc(
            copy.context,
            std::mem::size_of::<pg_sys::FormData_pg_class>(),
        ) as *mut pg_sys::FormData_pg_class;
        std::ptr::copy_nonoverlapping((*index).rd_rel, form, 1);
        (*form).relam = wraps((*form).relam).unwrap_or((*form).relam);
        (*rel).rd_rel = form;
        (*rel).rd_amcache = std::ptr::null_mut();
        (*rel).rd_indexcxt = copy.context;
        (*rel).rd_indam = wrapped_routine(index) as *const _ as *mut _;
    }
}

/// Runs one call of the wrapped AM with `rel` seen as its own.
macro_rules! as_wrapped {
    ($rel:expr, $call:expr) => {{
        // SAFETY: the relation is open for the whole call.
        #[allow(unused_unsafe)]
        let _seen = unsafe { SeenAsWrapped::new($rel) };
        $call
    }};
}

mod build;
mod insert;
mod local_part;
mod scan;
mod source_index;

use build::*;
use insert::*;
pub use local_part::ensure_local_part_if_shadowed;
use local_part::*;
use scan::*;
use source_index::*;

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
        // A btree wrapper's descriptor may name btree itself (see
        // read::hooks::btree_for_on_conflict).
        let wrapped = WRAPPED
            .iter()
            .find(|(w, oid, _)| *w == name || pg_sys::Oid::from(*oid) == wrapper)
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

/// SP-GiST answers from its metapage cache, so ask the source's index.
#[pg_guard]
unsafe extern "C-unwind" fn amcanreturn(index: pg_sys::Relation, attno: std::ffi::c_int) -> bool {
    // SAFETY: PostgreSQL passes a valid, open index.
    unsafe {
        let Some(source) = SourceIndex::open(index) else {
            return match wrapped_routine(index).amcanreturn {
                Some(can_return) => as_wrapped!(index, pg_call!(can_return(index, attno))),
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
        let source = clone_view::for_cow_relation(index)
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
        // A scan merging two parts keeps one found item per part, which a
        // change of direction would have to give back: scrollable cursors
        // over these indexes get a Material node instead.
        (*routine).amcanbackward = false;
        compat::keep_wrapper_routine_as_on_15(routine);
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
