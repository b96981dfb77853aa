//! The writes' entry points: inserts go to the local heap; the first
//! update, delete or lock of a source row claims it (`write::claim`).

use super::*;

/// Index entries heapam may judge are local ones; entries pointing at
/// source rows (in indexes built in the clone) are never deleted from here.
#[pg_guard]
pub(super) unsafe extern "C-unwind" fn index_delete_tuples(
    rel: pg_sys::Relation,
    delstate: *mut pg_sys::TM_IndexDeleteOp,
) -> pg_sys::TransactionId {
    // SAFETY: PostgreSQL passes a valid relation and deletion state whose
    // deltids array holds ndeltids entries; heapam looks at no more than
    // the first ndeltids.
    unsafe {
        let state = &mut *delstate;
        let entries = std::slice::from_raw_parts_mut(state.deltids, state.ndeltids as usize);
        let mut local = 0;
        for i in 0..entries.len() {
            if let TidSpace::Local(_) = tid::tid_space(&entries[i].tid) {
                entries.swap(local, i);
                local += 1;
            }
        }
        state.ndeltids = local as i32;
        if local == 0 {
            return pg_sys::InvalidTransactionId;
        }
        local_heap!(index_delete_tuples(rel, delstate))
    }
}

/// # Safety
/// `tid` must be valid.
pub(super) unsafe fn is_source_row(rel: pg_sys::Relation, tid: pg_sys::ItemPointer) -> bool {
    // SAFETY: guaranteed by the caller.
    unsafe { matches!(tid::tid_space(&*tid), TidSpace::Source(_)) && is_shadowed(rel) }
}

/// Releases the tuple lock a claim took, once its tombstone is recorded.
///
/// # Safety
/// `rel` open; the lock was taken by `claim::claim` on `tid`.
pub(super) unsafe fn release_claim(
    rel: pg_sys::Relation,
    tid: pg_sys::ItemPointer,
    tuple_lock: bool,
    operation: Operation,
) {
    if tuple_lock {
        // SAFETY: guaranteed by the caller.
        unsafe { pg_sys::UnlockTuple(rel, tid, operation.tuple_lock_mode()) };
    }
}

/// An update of a source row puts the new version in the local heap and
/// records the row as moved there; all indexes get entries for it.
#[pg_guard]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe extern "C-unwind" fn tuple_update(
    rel: pg_sys::Relation,
    otid: pg_sys::ItemPointer,
    slot: *mut pg_sys::TupleTableSlot,
    cid: pg_sys::CommandId,
    snapshot: pg_sys::Snapshot,
    crosscheck: pg_sys::Snapshot,
    wait: bool,
    tmfd: *mut pg_sys::TM_FailureData,
    lockmode: *mut pg_sys::LockTupleMode::Type,
    update_indexes: *mut compat::UpdateIndexes,
) -> pg_sys::TM_Result::Type {
    // SAFETY: PostgreSQL passes valid arguments; a source TID is one this
    // AM handed out.
    unsafe {
        if !is_source_row(rel, otid) {
            return local_heap!(tuple_update(
                rel,
                otid,
                slot,
                cid,
                snapshot,
                crosscheck,
                wait,
                tmfd,
                lockmode,
                update_indexes
            ));
        }
        compat::serializable_conflict_in(rel, otid);
        *lockmode = pg_sys::LockTupleMode::LockTupleExclusive;
        let policy = pg_sys::LockWaitPolicy::LockWaitBlock;
        match claim::claim(rel, &*otid, cid, policy, Operation::Update, tmfd) {
            Claim::Granted { tuple_lock, .. } => {
                local_heap!(tuple_insert(rel, slot, cid, 0, std::ptr::null_mut()));
                tombstone::record(
                    compat::relfilenode_of(rel),
                    &*otid,
                    tombstone::MOVED,
                    Some(&(*slot).tts_tid),
                    cid,
                );
                release_claim(rel, otid, tuple_lock, Operation::Update);
                *update_indexes = compat::UPDATE_ALL_INDEXES;
                *lockmode = pg_sys::LockTupleMode::LockTupleExclusive;
                pg_sys::TM_Result::TM_Ok
            }
            Claim::Moved { .. } => pg_sys::TM_Result::TM_Updated,
            Claim::Result(result) => result,
        }
    }
}

#[pg_guard]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe extern "C-unwind" fn tuple_delete(
    rel: pg_sys::Relation,
    tid: pg_sys::ItemPointer,
    cid: pg_sys::CommandId,
    snapshot: pg_sys::Snapshot,
    crosscheck: pg_sys::Snapshot,
    wait: bool,
    tmfd: *mut pg_sys::TM_FailureData,
    changing_part: bool,
) -> pg_sys::TM_Result::Type {
    // SAFETY: as above.
    unsafe {
        if !is_source_row(rel, tid) {
            return local_heap!(tuple_delete(
                rel,
                tid,
                cid,
                snapshot,
                crosscheck,
                wait,
                tmfd,
                changing_part
            ));
        }
        compat::serializable_conflict_in(rel, tid);
        let policy = pg_sys::LockWaitPolicy::LockWaitBlock;
        match claim::claim(rel, &*tid, cid, policy, Operation::Delete, tmfd) {
            Claim::Granted { tuple_lock, .. } => {
                let moved = changing_part.then(claim::moved_partitions_tid);
                tombstone::record(
                    compat::relfilenode_of(rel),
                    &*tid,
                    tombstone::DELETED,
                    moved.as_ref(),
                    cid,
                );
                release_claim(rel, tid, tuple_lock, Operation::Delete);
                pg_sys::TM_Result::TM_Ok
            }
            Claim::Moved { .. } => pg_sys::TM_Result::TM_Updated,
            Claim::Result(result) => result,
        }
    }
}

/// Locking a source row records a lock tombstone of the lock's mode (writers
/// whose modes conflict wait for this transaction, others do not); the row
/// stays where it is. A row moved by a committed
/// transaction is followed into the local heap when asked to.
#[pg_guard]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe extern "C-unwind" fn tuple_lock(
    rel: pg_sys::Relation,
    tid: pg_sys::ItemPointer,
    snapshot: pg_sys::Snapshot,
    slot: *mut pg_sys::TupleTableSlot,
    cid: pg_sys::CommandId,
    mode: pg_sys::LockTupleMode::Type,
    wait_policy: pg_sys::LockWaitPolicy::Type,
    flags: u8,
    tmfd: *mut pg_sys::TM_FailureData,
) -> pg_sys::TM_Result::Type {
    // SAFETY: as above.
    unsafe {
        if !is_source_row(rel, tid) {
            return local_heap!(tuple_lock(
                rel,
                tid,
                snapshot,
                slot,
                cid,
                mode,
                wait_policy,
                flags,
                tmfd
            ));
        }
        (*tmfd).traversed = false;
        match claim::claim(rel, &*tid, cid, wait_policy, Operation::Lock(mode), tmfd) {
            Claim::Granted {
                tuple_lock,
                locked_by_us,
            } => {
                if !locked_by_us {
                    tombstone::record(
                        compat::relfilenode_of(rel),
                        &*tid,
                        tombstone::lock_kind(mode),
                        None,
                        cid,
                    );
                }
                release_claim(rel, tid, tuple_lock, Operation::Lock(mode));
                let any = &raw mut pg_sys::SnapshotAnyData;
                if !tuple_fetch_row_version(rel, tid, any, slot) {
                    CowError::new(
                        PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                        "attempted to lock invisible tuple",
                    )
                    .raise();
                }
                pg_sys::TM_Result::TM_Ok
            }
            Claim::Moved { successor, .. } => {
                if flags & pg_sys::TUPLE_LOCK_FLAG_FIND_LAST_VERSION as u8 == 0 {
                    return pg_sys::TM_Result::TM_Updated;
                }
                let mut latest = successor;
                let result = local_heap!(tuple_lock(
                    rel,
                    &mut latest,
                    snapshot,
                    slot,
                    cid,
                    mode,
                    wait_policy,
                    flags,
                    tmfd
                ));
                (*tmfd).traversed = true;
                *tid = latest;
                result
            }
            Claim::Result(result) => result,
        }
    }
}

#[pg_guard]
pub(super) unsafe extern "C-unwind" fn tuple_insert(
    rel: pg_sys::Relation,
    slot: *mut pg_sys::TupleTableSlot,
    cid: pg_sys::CommandId,
    options: std::ffi::c_int,
    bistate: *mut pg_sys::BulkInsertStateData,
) {
    local_heap!(tuple_insert(rel, slot, cid, options, bistate))
}

#[pg_guard]
pub(super) unsafe extern "C-unwind" fn tuple_insert_speculative(
    rel: pg_sys::Relation,
    slot: *mut pg_sys::TupleTableSlot,
    cid: pg_sys::CommandId,
    options: std::ffi::c_int,
    bistate: *mut pg_sys::BulkInsertStateData,
    spec_token: u32,
) {
    local_heap!(tuple_insert_speculative(
        rel, slot, cid, options, bistate, spec_token
    ))
}

#[pg_guard]
pub(super) unsafe extern "C-unwind" fn multi_insert(
    rel: pg_sys::Relation,
    slots: *mut *mut pg_sys::TupleTableSlot,
    nslots: std::ffi::c_int,
    cid: pg_sys::CommandId,
    options: std::ffi::c_int,
    bistate: *mut pg_sys::BulkInsertStateData,
) {
    local_heap!(multi_insert(rel, slots, nslots, cid, options, bistate))
}
