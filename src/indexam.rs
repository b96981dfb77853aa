//! Wrapper index access methods: `cow_btree`, `cow_hash`, `cow_gist`,
//! `cow_gin`, `cow_spgist`, `cow_brin`.
//!
//! A shadowed index keeps its definition, opclasses and OIDs; only its AM
//! changes to the wrapper of its original AM. Each wrapper reports exactly the
//! capabilities of the AM it wraps (so the planner, `pg_get_indexdef` and
//! `\d` treat it the same) and delegates option parsing, validation and cost
//! estimation. Until the read path exists (issue #4), building, inserting,
//! vacuuming and scanning refuse with `feature_not_supported`.

use pgrx::prelude::*;
use pgrx::{pg_sys, PgSqlErrorCode};

use crate::error::CowError;
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
    .detail("Its entries still live in the source database; index access through a clone is not built yet.")
    .hint("This build of cowclone clones the schema only (issue #4 adds reads, #5 writes).")
    .raise()
}

#[pg_guard]
unsafe extern "C-unwind" fn ambuild(
    _heap: pg_sys::Relation,
    index: pg_sys::Relation,
    _info: *mut pg_sys::IndexInfo,
) -> *mut pg_sys::IndexBuildResult {
    refuse("build", index)
}

#[pg_guard]
unsafe extern "C-unwind" fn ambuildempty(index: pg_sys::Relation) {
    refuse("build", index)
}

#[pg_guard]
#[allow(clippy::too_many_arguments)]
unsafe extern "C-unwind" fn aminsert(
    index: pg_sys::Relation,
    _values: *mut pg_sys::Datum,
    _isnull: *mut bool,
    _heap_tid: pg_sys::ItemPointer,
    _heap: pg_sys::Relation,
    _check_unique: pg_sys::IndexUniqueCheck::Type,
    _index_unchanged: bool,
    _info: *mut pg_sys::IndexInfo,
) -> bool {
    refuse("insert into", index)
}

#[pg_guard]
unsafe extern "C-unwind" fn ambulkdelete(
    info: *mut pg_sys::IndexVacuumInfo,
    _stats: *mut pg_sys::IndexBulkDeleteResult,
    _callback: pg_sys::IndexBulkDeleteCallback,
    _state: *mut std::ffi::c_void,
) -> *mut pg_sys::IndexBulkDeleteResult {
    // SAFETY: PostgreSQL passes valid vacuum info naming the index.
    refuse("vacuum", unsafe { (*info).index })
}

#[pg_guard]
unsafe extern "C-unwind" fn amvacuumcleanup(
    info: *mut pg_sys::IndexVacuumInfo,
    _stats: *mut pg_sys::IndexBulkDeleteResult,
) -> *mut pg_sys::IndexBulkDeleteResult {
    // SAFETY: as above.
    refuse("vacuum", unsafe { (*info).index })
}

#[pg_guard]
unsafe extern "C-unwind" fn ambeginscan(
    index: pg_sys::Relation,
    _nkeys: std::ffi::c_int,
    _norderbys: std::ffi::c_int,
) -> pg_sys::IndexScanDesc {
    refuse("scan", index)
}

/// Planning asks whether the index can return values (SP-GiST reads its
/// metapage to answer) and what a scan costs (GIN and BRIN read metapage
/// statistics): both would read the empty local part, so planning a query
/// that could use a shadowed index refuses, naming the table the user touched.
fn refuse_planning(index: pg_sys::Oid) -> ! {
    // SAFETY: catalog lookups by OID inside a transaction; a missing name is
    // shown as the OID.
    let (table, index_name) = unsafe {
        let table = pg_sys::IndexGetRelation(index, true);
        (relation_name_of(table), relation_name_of(index))
    };
    CowError::new(PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED, format!("cannot scan shadowed table \"{table}\" yet"))
        .detail(format!(
            "Planning considered its index \"{index_name}\"; the rows still live in the source database and reading them through a clone is not built yet."
        ))
        .hint("This build of cowclone clones the schema only (issue #4 adds reads, #5 writes).")
        .raise()
}

/// # Safety
/// Must run inside a transaction.
unsafe fn relation_name_of(oid: pg_sys::Oid) -> String {
    // SAFETY: guaranteed by the caller; get_rel_name returns a palloc'd copy or null.
    let name = unsafe { pg_sys::get_rel_name(oid) };
    if name.is_null() {
        u32::from(oid).to_string()
    } else {
        // SAFETY: a NUL-terminated string from the syscache.
        unsafe { std::ffi::CStr::from_ptr(name) }
            .to_string_lossy()
            .into_owned()
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn amcanreturn(index: pg_sys::Relation, _attno: std::ffi::c_int) -> bool {
    // SAFETY: PostgreSQL passes a valid, open index.
    refuse_planning(unsafe { (*index).rd_id })
}

#[pg_guard]
#[allow(clippy::too_many_arguments)]
unsafe extern "C-unwind" fn amcostestimate(
    _root: *mut pg_sys::PlannerInfo,
    path: *mut pg_sys::IndexPath,
    _loop_count: f64,
    _startup_cost: *mut pg_sys::Cost,
    _total_cost: *mut pg_sys::Cost,
    _selectivity: *mut pg_sys::Selectivity,
    _correlation: *mut f64,
    _pages: *mut f64,
) {
    // SAFETY: the planner passes a valid path whose indexinfo names the index.
    refuse_planning(unsafe { (*(*path).indexinfo).indexoid })
}

/// The wrapped AM's routine with the refusing callbacks in place.
/// `amgettuple` and `amgetbitmap` stay the wrapped AM's: they are only reached
/// through a scan that `ambeginscan` began, so the capabilities reported stay identical.
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
        (*routine).amcostestimate = Some(amcostestimate);
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
