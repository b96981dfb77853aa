//! The local part of a wrapper index: an index of the wrapped AM over the
//! clone's own heap, built empty the first time it is needed.

use super::*;

thread_local! {
    /// Relfilenodes of shadowed indexes whose local part is known built.
    static LOCAL_READY: std::cell::RefCell<std::collections::HashSet<u32>> =
        std::cell::RefCell::new(std::collections::HashSet::new());
}

/// # Safety
/// `index` must be a valid, open index.
pub(super) unsafe fn local_blocks(index: pg_sys::Relation) -> u32 {
    // SAFETY: guaranteed by the caller; an index is sized by its own file.
    unsafe { pg_sys::RelationGetNumberOfBlocksInFork(index, pg_sys::ForkNumber::MAIN_FORKNUM) }
}

/// Serializes building a local part with readers that find it half-written.
///
/// # Safety
/// `index` must be a valid, open index.
pub(super) unsafe fn local_part_lock(index: pg_sys::Relation, mode: u32, lock: bool) {
    // SAFETY: guaranteed by the caller; an object lock on the index's
    // pg_class entry, sub-ID 1, which no PostgreSQL command takes.
    unsafe {
        let class = pg_sys::RelationRelationId;
        if lock {
            pg_sys::LockDatabaseObject(class, (*index).rd_id, 1, mode as i32);
        } else {
            pg_sys::UnlockDatabaseObject(class, (*index).rd_id, 1, mode as i32);
        }
    }
}

/// Whether a shadowed index's local part exists (has been built).
///
/// # Safety
/// `index` must be a valid, open shadowed index.
pub(super) unsafe fn local_part_ready(index: pg_sys::Relation) -> bool {
    // SAFETY: guaranteed by the caller.
    unsafe {
        let node = u32::from(compat::relfilenode_of(index));
        if LOCAL_READY.with(|r| r.borrow().contains(&node)) {
            return true;
        }
        if local_blocks(index) == 0 {
            return false;
        }
        // Wait out a build still writing it. A standby builds nothing, and
        // may not take this lock: a build on its primary reaches it as WAL,
        // and a reader that meets one still being replayed finds pages
        // missing and fails, never answers without them.
        if !pg_sys::RecoveryInProgress() {
            local_part_lock(index, pg_sys::ShareLock, true);
            local_part_lock(index, pg_sys::ShareLock, false);
        }
        LOCAL_READY.with(|r| r.borrow_mut().insert(node));
        true
    }
}

/// Builds a shadowed index's local part, empty, with the wrapped AM's own
/// build, if no one has yet. Not transactional: an empty index is right
/// whatever becomes of this transaction.
///
/// # Safety
/// `index` a valid, open shadowed index of `heap`.
pub(super) unsafe fn ensure_local_part(index: pg_sys::Relation, heap: pg_sys::Relation) {
    // SAFETY: guaranteed by the caller.
    unsafe {
        if local_part_ready(index) {
            return;
        }
        local_part_lock(index, pg_sys::ExclusiveLock, true);
        if local_blocks(index) == 0 {
            let info = pg_sys::BuildIndexInfo(index);
            // Sized for the local heap (empty), not the source: hash
            // indexes pre-allocate buckets by the table's size.
            let _local = crate::write::claim::LocalSizing::enter();
            crate::read::tableam::with_empty_build_scans(|| build_as_wrapped(heap, index, info));
        }
        local_part_lock(index, pg_sys::ExclusiveLock, false);
        let node = u32::from(compat::relfilenode_of(index));
        LOCAL_READY.with(|r| r.borrow_mut().insert(node));
    }
}

/// Builds a shadowed index's empty local part unless it exists (a wrapper
/// without a source part is an ordinary index and needs nothing).
///
/// # Safety
/// `index` a valid, open wrapper index of `heap`.
pub unsafe fn ensure_local_part_if_shadowed(index: pg_sys::Relation, heap: pg_sys::Relation) {
    // SAFETY: guaranteed by the caller.
    unsafe {
        if is_shadowed(index) {
            ensure_local_part(index, heap);
        }
    }
}
