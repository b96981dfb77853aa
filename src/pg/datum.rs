//! Facts about datums that can be known without touching anything else.

use pgrx::pg_sys;

/// Whether a varlena datum is a pointer to a value stored out of line (in a
/// TOAST relation), which only a process connected to a database can fetch.
pub fn is_stored_out_of_line(datum: pg_sys::Datum) -> bool {
    // SAFETY: the caller passes a non-null varlena datum read from a tuple;
    // only its first header byte is examined.
    unsafe { pgrx::varlena::varatt_is_1b_e(datum.cast_mut_ptr::<pg_sys::varlena>()) }
}
