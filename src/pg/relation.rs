//! Facts about an open relation that several stages need.

use pgrx::pg_sys;

/// The relation's name, for messages.
///
/// # Safety
/// `rel` must be a valid relation.
pub unsafe fn relation_name(rel: pg_sys::Relation) -> String {
    // SAFETY: guaranteed by the caller: rd_rel points to the relation's pg_class form.
    unsafe { pgrx::name_data_to_str(&(*(*rel).rd_rel).relname).to_string() }
}

/// The OIDs of the relation's indexes (`RelationGetIndexList`, copied out).
///
/// # Safety
/// `rel` must be a valid, open relation, in a transaction.
pub unsafe fn index_oids(rel: pg_sys::Relation) -> Vec<pg_sys::Oid> {
    // SAFETY: guaranteed by the caller; the list is the relcache's copy,
    // read and then freed.
    unsafe {
        let list = pg_sys::RelationGetIndexList(rel);
        if list.is_null() {
            return Vec::new();
        }
        let oids = (0..(*list).length)
            .map(|i| pg_sys::list_nth_oid(list, i))
            .collect();
        pg_sys::list_free(list);
        oids
    }
}
