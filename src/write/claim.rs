//! Writing a shadowed table: who may write a source row, and in what terms
//! heapam's code may be run on the local heap.
//!
//! A source row X is never changed. The first transaction to write it
//! claims it: it waits for any other running transaction that wrote X
//! (as heapam waits for a row's xmax), then records a tombstone (see
//! `tombstone`). An UPDATE inserts the new version in the local heap and
//! records X as moved to it; from there on the row lives in the local heap
//! and heapam handles every later write, lock and wait itself.

use std::cell::Cell;

use pgrx::pg_sys;
use pgrx::PgSqlErrorCode;

use crate::pg::error::CowError;
use crate::write::tombstone::{self, Tombstone, MOVED};

thread_local! {
    static LOCAL_SIZING: Cell<u32> = const { Cell::new(0) };
}

/// While one exists, a shadowed table reports the size of its local heap
/// alone, as heapam's own code (which extends, vacuums and picks target
/// pages by the relation's size) must see it. Dropped on unwind too, so an
/// error inside heapam cannot leave it set.
pub struct LocalSizing(());

impl LocalSizing {
    pub fn enter() -> Self {
        LOCAL_SIZING.with(|depth| depth.set(depth.get() + 1));
        LocalSizing(())
    }
}

impl Drop for LocalSizing {
    fn drop(&mut self) {
        LOCAL_SIZING.with(|depth| depth.set(depth.get().saturating_sub(1)));
    }
}

pub fn local_sizing() -> bool {
    LOCAL_SIZING.with(|depth| depth.get() > 0)
}

/// What the writer of a source row does next.
pub enum Claim {
    /// Write it. `tuple_lock` is true when the caller holds X's tuple lock
    /// (to release once its tombstone is recorded); `locked_by_us` when this
    /// transaction has already locked X.
    Granted {
        tuple_lock: bool,
        locked_by_us: bool,
    },
    /// Moved by a committed transaction to `successor`.
    Moved { successor: pg_sys::ItemPointerData },
    /// Any other outcome, `tmfd` filled in as heapam fills it.
    Result(pg_sys::TM_Result::Type),
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Update,
    Delete,
    Lock(pg_sys::LockTupleMode::Type),
}

/// heapam's row lock conflict table: whether holding `held` blocks `wanted`.
fn conflicts(held: pg_sys::LockTupleMode::Type, wanted: pg_sys::LockTupleMode::Type) -> bool {
    // LockTupleMode's values rank the modes: KEY SHARE 0 ... UPDATE 3.
    let rank = |mode: pg_sys::LockTupleMode::Type| mode.min(3) as usize;
    // Rows: held; columns: wanted (KEY SHARE, SHARE, NO KEY UPDATE, UPDATE).
    const TABLE: [[bool; 4]; 4] = [
        [false, false, false, true],
        [false, false, true, true],
        [false, true, true, true],
        [true, true, true, true],
    ];
    TABLE[rank(held)][rank(wanted)]
}

impl Operation {
    fn verb(self) -> &'static str {
        match self {
            Operation::Update => "update",
            Operation::Delete => "delete",
            Operation::Lock(_) => "lock",
        }
    }

    /// The heavyweight tuple lock heapam takes for this mode while it
    /// decides (its tupleLockExtraInfo): compatible row locks do not queue
    /// behind each other.
    pub fn tuple_lock_mode(self) -> i32 {
        // Indexed by LockTupleMode: KEY SHARE, SHARE, NO KEY UPDATE, UPDATE.
        const MODES: [u32; 4] = [
            pg_sys::AccessShareLock,
            pg_sys::RowShareLock,
            pg_sys::ExclusiveLock,
            pg_sys::AccessExclusiveLock,
        ];
        MODES[self.mode().min(3) as usize] as i32
    }

    /// Writes hold the row as FOR UPDATE does (heapam takes FOR NO KEY
    /// UPDATE for updates that keep the key, which is not known here).
    fn mode(self) -> pg_sys::LockTupleMode::Type {
        match self {
            Operation::Lock(mode) => mode,
            _ => pg_sys::LockTupleMode::LockTupleExclusive,
        }
    }

    fn wait_kind(self) -> pg_sys::XLTW_Oper::Type {
        match self {
            Operation::Update => pg_sys::XLTW_Oper::XLTW_Update,
            Operation::Delete => pg_sys::XLTW_Oper::XLTW_Delete,
            Operation::Lock(_) => pg_sys::XLTW_Oper::XLTW_Lock,
        }
    }
}

/// The TID heapam leaves in a row moved to another partition.
pub fn moved_partitions_tid() -> pg_sys::ItemPointerData {
    crate::state::tid::make_tid(
        pg_sys::InvalidBlockNumber,
        pg_sys::MovedPartitionsOffsetNumber as u16,
    )
}

fn is_moved_partitions(tid: &pg_sys::ItemPointerData) -> bool {
    crate::state::tid::block_of(tid) == pg_sys::InvalidBlockNumber
        && tid.ip_posid == pg_sys::MovedPartitionsOffsetNumber as u16
}

/// Claims the source row `tid` for a write.
///
/// # Safety
/// `rel` is an open shadowed table, `tid` a source TID, `tmfd` valid.
pub unsafe fn claim(
    rel: pg_sys::Relation,
    tid: &pg_sys::ItemPointerData,
    cid: pg_sys::CommandId,
    policy: pg_sys::LockWaitPolicy::Type,
    operation: Operation,
    tmfd: *mut pg_sys::TM_FailureData,
) -> Claim {
    // SAFETY: guaranteed by the caller.
    unsafe {
        let relfilenode = crate::pg::compat::relfilenode_of(rel);
        let mut tid_copy = *tid;
        let mut tuple_lock = false;
        loop {
            let found = tombstone::for_writer(relfilenode, tid);
            let finished = |t: &&Tombstone| !tombstone::is_lock(t.kind) && !t.in_progress;
            if let Some(done) = found.iter().find(finished) {
                if tuple_lock {
                    pg_sys::UnlockTuple(rel, &mut tid_copy, operation.tuple_lock_mode());
                }
                return decided(done, tid, cid, operation, tmfd);
            }
            let wanted = operation.mode();
            // This transaction's locks: one at least as strong covers the request.
            let locked_by_us = found.iter().any(|t| {
                t.own && tombstone::is_lock(t.kind) && tombstone::lock_mode(t.kind) >= wanted
            });
            let running = found
                .iter()
                .find(|t| t.in_progress && conflicts(tombstone::lock_mode(t.kind), wanted))
                .map(|t| t.xmin);
            if locked_by_us && running.is_none() {
                // No one can take a conflicting claim meanwhile: it would wait for us.
                return Claim::Granted {
                    tuple_lock,
                    locked_by_us,
                };
            }
            if !tuple_lock {
                if !acquire_tuple_lock(rel, &mut tid_copy, policy, operation.tuple_lock_mode()) {
                    return Claim::Result(pg_sys::TM_Result::TM_WouldBlock);
                }
                tuple_lock = true;
                continue;
            }
            let Some(xid) = running else {
                return Claim::Granted {
                    tuple_lock,
                    locked_by_us,
                };
            };
            match policy {
                pg_sys::LockWaitPolicy::LockWaitBlock => {
                    pg_sys::XactLockTableWait(xid, rel, &mut tid_copy, operation.wait_kind())
                }
                _ => {
                    if !crate::pg::compat::xact_ended_without_waiting(xid) {
                        pg_sys::UnlockTuple(rel, &mut tid_copy, operation.tuple_lock_mode());
                        if policy == pg_sys::LockWaitPolicy::LockWaitSkip {
                            return Claim::Result(pg_sys::TM_Result::TM_WouldBlock);
                        }
                        row_lock_unavailable(rel);
                    }
                }
            }
        }
    }
}

/// # Safety
/// `rel` open; `tid` valid.
unsafe fn acquire_tuple_lock(
    rel: pg_sys::Relation,
    tid: &mut pg_sys::ItemPointerData,
    policy: pg_sys::LockWaitPolicy::Type,
    mode: i32,
) -> bool {
    // SAFETY: guaranteed by the caller.
    unsafe {
        match policy {
            pg_sys::LockWaitPolicy::LockWaitBlock => {
                pg_sys::LockTuple(rel, tid, mode);
                true
            }
            pg_sys::LockWaitPolicy::LockWaitSkip => {
                crate::pg::compat::conditional_lock_tuple(rel, tid, mode)
            }
            _ => {
                if !crate::pg::compat::conditional_lock_tuple(rel, tid, mode) {
                    row_lock_unavailable(rel);
                }
                true
            }
        }
    }
}

fn row_lock_unavailable(rel: pg_sys::Relation) -> ! {
    // SAFETY: rel is open.
    let name = unsafe { crate::pg::relation::relation_name(rel) };
    CowError::new(
        PgSqlErrorCode::ERRCODE_LOCK_NOT_AVAILABLE,
        format!("could not obtain lock on row in relation \"{name}\""),
    )
    .raise()
}

/// The outcome for a row a committed (or this) transaction already moved
/// or deleted, as heapam reports it for a row version with that xmax.
///
/// # Safety
/// `tmfd` must be valid.
unsafe fn decided(
    tombstone: &Tombstone,
    tid: &pg_sys::ItemPointerData,
    cid: pg_sys::CommandId,
    operation: Operation,
    tmfd: *mut pg_sys::TM_FailureData,
) -> Claim {
    // SAFETY: tmfd is the caller's.
    unsafe {
        (*tmfd).xmax = tombstone.xmin;
        (*tmfd).ctid = if tombstone.kind == MOVED || is_moved_partitions(&tombstone.successor) {
            tombstone.successor
        } else {
            *tid
        };
        (*tmfd).cmax = pg_sys::InvalidCommandId;
        if tombstone.own {
            if tombstone.cmin >= cid {
                (*tmfd).cmax = tombstone.cmin;
                return Claim::Result(pg_sys::TM_Result::TM_SelfModified);
            }
            CowError::new(
                PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                format!("attempted to {} invisible tuple", operation.verb()),
            )
            .raise();
        }
        if tombstone.kind == MOVED {
            return Claim::Moved {
                successor: tombstone.successor,
            };
        }
        if is_moved_partitions(&tombstone.successor) {
            return Claim::Result(pg_sys::TM_Result::TM_Updated);
        }
        Claim::Result(pg_sys::TM_Result::TM_Deleted)
    }
}
