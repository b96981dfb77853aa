//! The in-memory half of a source's pin: an xmin advertised in the proc
//! array by a process connected to the source.
//!
//! `ComputeXidHorizons` (procarray.c) folds a process's xmin into the
//! horizon of its own database only (and of the shared catalogs), while a
//! slot's xmin is folded into every database's. A holder that advertises
//! the oldest clone point xmin of its source and owns no transaction holds
//! back that database alone, the way an idle REPEATABLE READ session would.
//! Transaction end and `SnapshotResetXmin` clear the advertised xmin, so the
//! holder withdraws it (with its slot armed) before it starts a transaction
//! and advertises it again afterwards.

use pgrx::pg_sys;

use crate::pg::compat;

/// Advertises `xmin` as this process's xmin.
///
/// # Safety
/// No transaction may be open in this process, and `xmin` must already be
/// held by another pin (the armed slot): a process must never publish an
/// xmin older than a horizon someone may already have computed.
pub unsafe fn advertise(xmin: pg_sys::TransactionId) {
    // SAFETY: guaranteed by the caller; the field is written under
    // ProcArrayLock, held exclusively, so every horizon computed after this
    // (they read the proc array under the lock, shared) sees it.
    unsafe {
        let lock = compat::proc_array_lock();
        pg_sys::LWLockAcquire(lock, pg_sys::LWLockMode::LW_EXCLUSIVE);
        (*pg_sys::MyProc).xmin = xmin;
        pg_sys::LWLockRelease(lock);
    }
}

/// Stops advertising an xmin, so this process may start a transaction.
///
/// # Safety
/// Whatever the advertised xmin protects must be held by another pin.
pub unsafe fn withdraw() {
    // SAFETY: guaranteed by the caller; as in `advertise`.
    unsafe { advertise(pg_sys::InvalidTransactionId) }
}

/// The xmin this process advertises now.
pub fn current() -> pg_sys::TransactionId {
    // SAFETY: this process's own PGPROC; only it writes its xmin.
    unsafe { (*pg_sys::MyProc).xmin }
}
