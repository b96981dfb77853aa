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

fn relation_lock_tag(database: pg_sys::Oid, relation: pg_sys::Oid) -> pg_sys::LOCKTAG {
    pg_sys::LOCKTAG {
        locktag_field1: u32::from(database),
        locktag_field2: u32::from(relation),
        locktag_field3: 0,
        locktag_field4: 0,
        locktag_type: pg_sys::LockTagType::LOCKTAG_RELATION as u8,
        locktag_lockmethodid: pg_sys::DEFAULT_LOCKMETHOD as u8,
    }
}

/// Takes a heavyweight lock on a relation of another database until the
/// transaction ends (or `unlock_relation_in`), as `LockRelationOid` does in
/// this one. Lock waits and deadlocks are PostgreSQL's, across databases.
pub fn lock_relation_in(database: pg_sys::Oid, relation: pg_sys::Oid, mode: u32) {
    let tag = relation_lock_tag(database, relation);
    // SAFETY: a well-formed relation lock tag (SET_LOCKTAG_RELATION's
    // fields); a transaction lock, released at its end at the latest.
    unsafe {
        pg_sys::LockAcquire(&tag, mode as pg_sys::LOCKMODE, false, false);
    }
}

/// Releases a lock `lock_relation_in` took, before the transaction ends.
pub fn unlock_relation_in(database: pg_sys::Oid, relation: pg_sys::Oid, mode: u32) {
    let tag = relation_lock_tag(database, relation);
    // SAFETY: the tag of a lock this transaction holds in `mode`.
    unsafe {
        pg_sys::LockRelease(&tag, mode as pg_sys::LOCKMODE, false);
    }
}
