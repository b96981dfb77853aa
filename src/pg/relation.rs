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
