//! Builds (the whole index over both halves, or the empty local part) and
//! VACUUM of the local part.

use super::*;

#[pg_guard]
pub(super) unsafe extern "C-unwind" fn ambuild(
    heap: pg_sys::Relation,
    index: pg_sys::Relation,
    info: *mut pg_sys::IndexInfo,
) -> *mut pg_sys::IndexBuildResult {
    // SAFETY: PostgreSQL passes valid relations, handed on unchanged.
    unsafe {
        if is_shadowed(index) {
            refuse("build", index)
        }
        build_as_wrapped(heap, index, info)
    }
}

/// Runs the wrapped AM's build on a copy of the index descriptor that names
/// the wrapped AM (btree's sorted build checks it), writing the index's own
/// file.
///
/// # Safety
/// `index` a valid, open wrapper index of `heap` with an empty main fork.
pub(super) unsafe fn build_as_wrapped(
    heap: pg_sys::Relation,
    index: pg_sys::Relation,
    info: *mut pg_sys::IndexInfo,
) -> *mut pg_sys::IndexBuildResult {
    // SAFETY: guaranteed by the caller; the copy's pg_class form is its own
    // and its caches live in its own context, freed with it.
    unsafe {
        let routine = wrapped_routine(index);
        let copy = RelationCopy::new(index, c"cowclone wrapped build", std::ptr::null_mut());
        let rel = copy.rel;
        make_wrapped_index(&copy, index);
        let build = routine.ambuild.expect("every AM builds");
        let result = pg_call!(build(heap, rel, info));
        copy.close();
        result
    }
}

#[pg_guard]
pub(super) unsafe extern "C-unwind" fn ambuildempty(index: pg_sys::Relation) {
    // SAFETY: as above.
    unsafe {
        if is_shadowed(index) {
            refuse("build", index)
        }
        let build = wrapped_routine(index)
            .ambuildempty
            .expect("every AM builds");
        as_wrapped!(index, pg_call!(build(index)))
    }
}

#[pg_guard]
pub(super) unsafe extern "C-unwind" fn ambulkdelete(
    info: *mut pg_sys::IndexVacuumInfo,
    stats: *mut pg_sys::IndexBulkDeleteResult,
    callback: pg_sys::IndexBulkDeleteCallback,
    state: *mut std::ffi::c_void,
) -> *mut pg_sys::IndexBulkDeleteResult {
    // SAFETY: PostgreSQL passes valid vacuum info naming the index.
    unsafe {
        let index = (*info).index;
        if is_shadowed(index) && !local_part_ready(index) {
            return stats;
        }
        let delete = wrapped_routine(index)
            .ambulkdelete
            .expect("every AM vacuums");
        as_wrapped!(index, pg_call!(delete(info, stats, callback, state)))
    }
}

#[pg_guard]
pub(super) unsafe extern "C-unwind" fn amvacuumcleanup(
    info: *mut pg_sys::IndexVacuumInfo,
    stats: *mut pg_sys::IndexBulkDeleteResult,
) -> *mut pg_sys::IndexBulkDeleteResult {
    // SAFETY: as above.
    unsafe {
        let index = (*info).index;
        if is_shadowed(index) && ((*info).analyze_only || !local_part_ready(index)) {
            // Nothing of the local part to clean; the source's is the source's.
            return stats;
        }
        let cleanup = wrapped_routine(index)
            .amvacuumcleanup
            .expect("every AM vacuums");
        as_wrapped!(index, pg_call!(cleanup(info, stats)))
    }
}
