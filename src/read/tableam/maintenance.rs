//! Storage-level commands: new storage, TRUNCATE, copies, CLUSTER and
//! VACUUM of the local heap; those that would rewrite source rows refuse.

use super::*;

/// TRUNCATE (and rewrites) give the table new, empty, local storage; with
/// it the table stops reading its source.
#[pg_guard]
pub(super) unsafe extern "C-unwind" fn relation_set_new_storage(
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
pub(super) unsafe extern "C-unwind" fn relation_nontransactional_truncate(rel: pg_sys::Relation) {
    local_heap!(relation_nontransactional_truncate(rel))
}

#[pg_guard]
pub(super) unsafe extern "C-unwind" fn relation_copy_data(
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
pub(super) unsafe extern "C-unwind" fn relation_copy_for_cluster(
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
pub(super) unsafe extern "C-unwind" fn relation_vacuum(
    rel: pg_sys::Relation,
    params: *mut pg_sys::VacuumParams,
    bstrategy: pg_sys::BufferAccessStrategy,
) {
    local_heap!(relation_vacuum(rel, params, bstrategy))
}
