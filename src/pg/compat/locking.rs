//! Locks, snapshots and transactions: serializable predicate locks, tuple
//! locks, the LWLocks C names by macro, snapshots' LSNs, replication slots.

use std::ffi::CString;

use pgrx::pg_sys;

// Exported by the server but not in pgrx's bindings. PostgreSQL reports
// errors by longjmp, not unwinding, so they are declared "C" and every call
// goes through pg_guard_ffi_boundary, which catches the longjmp and turns it
// into a Rust-safe error.
unsafe extern "C" {
    fn PredicateLockRelation(relation: pg_sys::Relation, snapshot: pg_sys::Snapshot);
    fn PredicateLockTID(
        relation: pg_sys::Relation,
        tid: pg_sys::ItemPointer,
        snapshot: pg_sys::Snapshot,
        tuple_xid: pg_sys::TransactionId,
    );
    fn CheckForSerializableConflictIn(
        relation: pg_sys::Relation,
        tid: pg_sys::ItemPointer,
        blkno: pg_sys::BlockNumber,
    );
    fn TransferPredicateLocksToHeapRelation(relation: pg_sys::Relation);
}

/// Turns every serializable read lock on a table's rows and pages into one
/// on the table, as CLUSTER does before its rows move (the same for every
/// major).
///
/// # Safety
/// `rel` must be open under a lock that keeps its rows from being read.
pub unsafe fn transfer_predicate_locks_to_relation(rel: pg_sys::Relation) {
    // SAFETY: guaranteed by the caller.
    unsafe { pg_sys::ffi::pg_guard_ffi_boundary(|| TransferPredicateLocksToHeapRelation(rel)) }
}

/// Takes a serializable transaction's relation-level read lock, as heapam
/// does for sequential scans (a no-op outside SERIALIZABLE).
///
/// # Safety
/// `rel` must be open; `snapshot` valid.
pub unsafe fn predicate_lock_relation(rel: pg_sys::Relation, snapshot: pg_sys::Snapshot) {
    // SAFETY: guaranteed by the caller.
    unsafe { pg_sys::ffi::pg_guard_ffi_boundary(|| PredicateLockRelation(rel, snapshot)) }
}

/// A serializable transaction's read lock on one row, as heapam takes it
/// for every row an index scan returns (a no-op outside SERIALIZABLE).
///
/// # Safety
/// `rel` must be open; `tid` and `snapshot` valid.
pub unsafe fn predicate_lock_row(
    rel: pg_sys::Relation,
    tid: &pg_sys::ItemPointerData,
    snapshot: pg_sys::Snapshot,
    xmin: pg_sys::TransactionId,
) {
    let mut tid = *tid;
    // SAFETY: guaranteed by the caller.
    unsafe {
        pg_sys::ffi::pg_guard_ffi_boundary(|| PredicateLockTID(rel, &mut tid, snapshot, xmin))
    }
}

/// A serializable transaction's check before writing a row (a no-op
/// outside SERIALIZABLE), as heapam makes it.
///
/// # Safety
/// `rel` must be open; `tid` valid.
pub unsafe fn serializable_conflict_in(rel: pg_sys::Relation, tid: pg_sys::ItemPointer) {
    // SAFETY: guaranteed by the caller.
    unsafe {
        let block = ((*tid).ip_blkid.bi_hi as u32) << 16 | (*tid).ip_blkid.bi_lo as u32;
        pg_sys::ffi::pg_guard_ffi_boundary(|| CheckForSerializableConflictIn(rel, tid, block))
    }
}

/// Creates an ephemeral physical replication slot owned by this backend:
/// PostgreSQL drops it on error and at restart until it is persisted.
///
/// # Safety
/// No slot may be acquired by this backend yet.
pub unsafe fn create_ephemeral_slot(name: &str) {
    let name = CString::new(name).expect("slot names have no NUL");
    // SAFETY: guaranteed by the caller.
    unsafe {
        // 17 added `failover` and `synced` (both false for a local pin).
        #[cfg(before_pg17)]
        pg_sys::ReplicationSlotCreate(
            name.as_ptr(),
            false,
            pg_sys::ReplicationSlotPersistency::RS_EPHEMERAL,
            false,
        );
        #[cfg(not(before_pg17))]
        pg_sys::ReplicationSlotCreate(
            name.as_ptr(),
            false,
            pg_sys::ReplicationSlotPersistency::RS_EPHEMERAL,
            false,
            false,
            false,
        );
    }
}

/// Creates a persistent physical replication slot owned by this backend.
///
/// # Safety
/// No slot may be acquired by this backend yet.
pub unsafe fn create_persistent_slot(name: &str) {
    let name = CString::new(name).expect("slot names have no NUL");
    // SAFETY: guaranteed by the caller.
    unsafe {
        #[cfg(before_pg17)]
        pg_sys::ReplicationSlotCreate(
            name.as_ptr(),
            false,
            pg_sys::ReplicationSlotPersistency::RS_PERSISTENT,
            false,
        );
        #[cfg(not(before_pg17))]
        pg_sys::ReplicationSlotCreate(
            name.as_ptr(),
            false,
            pg_sys::ReplicationSlotPersistency::RS_PERSISTENT,
            false,
            false,
            false,
        );
    }
}

/// Records the WAL position a hand-built snapshot was taken at (18 no
/// longer keeps one: it served only the removed "snapshot too old").
pub fn set_snapshot_lsn(snapshot: &mut pg_sys::SnapshotData, lsn: pg_sys::XLogRecPtr) {
    #[cfg(before_pg18)]
    {
        snapshot.lsn = lsn;
    }
    #[cfg(not(before_pg18))]
    let _ = (snapshot, lsn);
}

/// Waits for nothing: whether a transaction has ended (18 added whether to
/// log a lock failure; cowclone's callers report their own).
///
/// # Safety
/// Inside a transaction.
pub unsafe fn xact_ended_without_waiting(xid: pg_sys::TransactionId) -> bool {
    // SAFETY: guaranteed by the caller.
    unsafe {
        #[cfg(before_pg18)]
        return pg_sys::ConditionalXactLockTableWait(xid);
        #[cfg(not(before_pg18))]
        return pg_sys::ConditionalXactLockTableWait(xid, false);
    }
}

/// Takes a heavyweight tuple lock if it is free.
///
/// # Safety
/// `rel` open; `tid` valid.
pub unsafe fn conditional_lock_tuple(
    rel: pg_sys::Relation,
    tid: pg_sys::ItemPointer,
    mode: i32,
) -> bool {
    // SAFETY: guaranteed by the caller.
    unsafe {
        #[cfg(before_pg18)]
        return pg_sys::ConditionalLockTuple(rel, tid, mode);
        #[cfg(not(before_pg18))]
        return pg_sys::ConditionalLockTuple(rel, tid, mode, false);
    }
}

/// `ProcArrayLock`, a macro in C (MainLWLockArray[4]).
///
/// # Safety
/// Shared memory must be attached (any backend).
pub unsafe fn proc_array_lock() -> *mut pg_sys::LWLock {
    // SAFETY: guaranteed by the caller; index 4 is ProcArrayLock in lwlocknames.txt.
    unsafe { &mut (*pg_sys::MainLWLockArray.add(4)).lock }
}

/// ReplicationSlotControlLock: MainLWLockArray[37] on PostgreSQL 15 to 18.
///
/// # Safety
/// Shared memory must be attached.
pub unsafe fn replication_slot_control_lock() -> *mut pg_sys::LWLock {
    // SAFETY: guaranteed by the caller; index 37 in lwlocknames.txt.
    unsafe { &mut (*pg_sys::MainLWLockArray.add(37)).lock }
}

/// Acquires a persistent slot for this process, failing if another has it
/// (18 added whether an invalidated slot is an error: it is, here; a pin's
/// slot reserves no WAL, so it is never invalidated, and a history slot is
/// acquired only after it was seen valid).
///
/// # Safety
/// No slot may be acquired by this process yet.
pub unsafe fn acquire_slot(name: &str) {
    let name = CString::new(name).expect("slot names have no NUL");
    // SAFETY: guaranteed by the caller.
    unsafe {
        #[cfg(before_pg18)]
        pg_sys::ReplicationSlotAcquire(name.as_ptr(), true);
        #[cfg(not(before_pg18))]
        pg_sys::ReplicationSlotAcquire(name.as_ptr(), true, true);
    }
}

/// Whether vacuum always honours a backend's advertised xmin. On 15 and 16
/// `old_snapshot_threshold` (a start-up setting) lets pruning pass an xmin
/// older than the threshold; 17 removed the setting.
pub fn backend_xmins_bind() -> bool {
    #[cfg(before_pg17)]
    {
        // SAFETY: a start-up setting, fixed for the life of the server.
        unsafe { pg_sys::old_snapshot_threshold < 0 }
    }
    #[cfg(not(before_pg17))]
    {
        true
    }
}

/// The oldest transaction id not yet frozen anywhere in the cluster (below
/// it the clog may be truncated): no older xid can still matter to anyone.
/// 17 renamed `ShmemVariableCache` to `TransamVariables`.
pub fn oldest_unfrozen_xid() -> pg_sys::TransactionId {
    // SAFETY: shared memory set up at start; the value is read once, and a
    // stale read is only older, which callers treat as more conservative.
    unsafe {
        #[cfg(before_pg17)]
        let shared = pg_sys::ShmemVariableCache;
        #[cfg(not(before_pg17))]
        let shared = pg_sys::TransamVariables;
        (*shared).oldestXid
    }
}

// PostgreSQL's SIGTERM handler for backends, only ever handed to pqsignal
// (pgrx binds it as a Rust wrapper, which is not a signal handler).
unsafe extern "C-unwind" {
    #[link_name = "die"]
    fn postgres_die(postgres_signal_arg: std::ffi::c_int);
}

/// Makes SIGTERM end this background worker at its next interrupt check,
/// as it ends a backend (`die`), instead of at any instruction (the default
/// `bgworker_die` raises FATAL inside the signal handler). 18 renamed the
/// backend's `pqsignal`.
///
/// # Safety
/// Called in a background worker before it does any work.
pub unsafe fn terminate_at_interrupt_checks() {
    #[cfg(before_pg18)]
    // SAFETY: guaranteed by the caller; `die` is PostgreSQL's own handler.
    unsafe {
        pg_sys::pqsignal(pg_sys::SIGTERM as i32, Some(postgres_die));
    }
    #[cfg(not(before_pg18))]
    // SAFETY: as above.
    unsafe {
        pg_sys::pqsignal_be(pg_sys::SIGTERM as i32, Some(postgres_die));
    }
}
