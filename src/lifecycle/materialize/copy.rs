//! Materializing one table (with its TOAST table) in one transaction.
//!
//! 1. Under ShareUpdateExclusiveLock (readers and writers go on; VACUUM and
//!    DDL of the table wait), every source page is read through shared
//!    buffers, judged with T, and copied page at a time onto a new page of
//!    the clone's own heap (`page::copy_page`): the rows keep their offsets
//!    and are this transaction's inserts, so nobody sees them before the
//!    switch commits. Each copied row gets its entries in every index of
//!    the table (a wrapper index's local part, or an index the clone made),
//!    inserted without unique checks: the copies are the source rows the
//!    clone already sees, unique among themselves.
//! 2. Writes the clone made to source rows meanwhile are tombstones; each
//!    committed move or delete becomes its copy's deleter (and successor),
//!    once without a stronger lock, and once more, for the few written in
//!    between, under the switch's AccessExclusiveLock.
//! 3. The switch: the table's tombstones are deleted, serializable read
//!    locks on its rows become one on the table, and the record stops
//!    listing its storage as shadowed and names this transaction as the one
//!    that materialized it. At commit the copies become visible exactly as
//!    the source rows stop being read.
//!
//! Readers and writers of the table wait only for the switch. A crash or
//! an error before commit leaves the copies as an aborted transaction's
//! rows, which VACUUM removes; the table is redone from the start.

use std::collections::{HashMap, HashSet};

use pgrx::prelude::*;
use pgrx::{pg_sys, PgSqlErrorCode};

use super::page::{self, Deleter};
use super::Pace;
use crate::pg::compat::{self, RelLocator};
use crate::pg::error::CowError;
use crate::pg::failpoint;
use crate::pg::page::{line_pointer, BLCKSZ};
use crate::pg::relation::{self, relation_name};
use crate::pin::snapshot::xid_precedes;
use crate::read::clone_view;
use crate::read::heap_page::{self, PageSource, MAX_TUPLES_PER_PAGE};
use crate::state::record::{self, MaterializedStorage};
use crate::state::tid::{self, TidSpace};
use crate::write::tombstone;

/// A source page with no row the clone sees, so no copy.
const NO_COPY: u32 = u32::MAX;

/// What materializing a table did.
#[derive(Default)]
pub(super) struct Copied {
    pub rows: u64,
    /// Indexes the clone built or rebuilt itself: entries of theirs may
    /// still name source rows (TIDs from 2^31 up), which the table AM
    /// skips and which go before the index becomes a plain one.
    pub indexes_with_source_entries: Vec<pg_sys::Oid>,
}

/// One relation being copied: the table or its TOAST table.
struct Part {
    rel: pg_sys::Relation,
    relfilenode: pg_sys::Oid,
    /// For each source block, the local block its copy went to.
    copies: Vec<u32>,
    /// Source rows whose copy already has its deleter.
    applied: HashSet<(u32, u16)>,
}

/// The indexes a copied row goes into.
struct Indexes {
    open: Vec<(
        pg_sys::Relation,
        *mut pg_sys::IndexInfo,
        *mut pg_sys::ExprState,
    )>,
    estate: *mut pg_sys::EState,
    econtext: *mut pg_sys::ExprContext,
    slot: *mut pg_sys::TupleTableSlot,
}

impl Indexes {
    /// # Safety
    /// `rel` open, in a transaction.
    unsafe fn open(rel: pg_sys::Relation) -> Self {
        // SAFETY: guaranteed by the caller; each index stays open until close.
        unsafe {
            let estate = pg_sys::CreateExecutorState();
            let econtext = pg_sys::MakePerTupleExprContext(estate);
            let mut open = Vec::new();
            for oid in relation::index_oids(rel) {
                let index = pg_sys::index_open(oid, pg_sys::RowExclusiveLock as i32);
                // A wrapper's local part is built on its first insert; one
                // no copy goes into (a partial index, an empty table) must
                // exist too before the index becomes a plain one.
                crate::read::indexam::ensure_local_part_if_shadowed(index, rel);
                if !(*(*index).rd_index).indisready {
                    pg_sys::index_close(index, pg_sys::RowExclusiveLock as i32);
                    continue;
                }
                let info = pg_sys::BuildIndexInfo(index);
                let predicate = if (*info).ii_Predicate.is_null() {
                    std::ptr::null_mut()
                } else {
                    pg_sys::ExecPrepareQual((*info).ii_Predicate, estate)
                };
                open.push((index, info, predicate));
            }
            let slot = pg_sys::table_slot_create(rel, std::ptr::null_mut());
            (*econtext).ecxt_scantuple = slot;
            Indexes {
                open,
                estate,
                econtext,
                slot,
            }
        }
    }

    /// Inserts the entries of the row at `tid` on the pinned `buffer`.
    ///
    /// # Safety
    /// `buffer` pinned (not locked), holding a copied row at `tid` of `rel`.
    unsafe fn insert(
        &self,
        rel: pg_sys::Relation,
        buffer: pg_sys::Buffer,
        mut tid: pg_sys::ItemPointerData,
    ) {
        // SAFETY: guaranteed by the caller: a copied row is this
        // transaction's insert, which nobody prunes while we hold the pin.
        unsafe {
            let page = pg_sys::BufferGetPage(buffer) as *mut u8;
            let bytes = std::slice::from_raw_parts(page as *const u8, BLCKSZ);
            let lp = line_pointer(bytes, tid.ip_posid as usize);
            let mut tuple: pg_sys::HeapTupleData = std::mem::zeroed();
            tuple.t_len = lp.len as u32;
            tuple.t_self = tid;
            tuple.t_tableOid = (*rel).rd_id;
            tuple.t_data = page.add(lp.off as usize) as pg_sys::HeapTupleHeader;
            pg_sys::ExecStoreBufferHeapTuple(&mut tuple, self.slot, buffer);
            let mut values = [pg_sys::Datum::from(0); pg_sys::INDEX_MAX_KEYS as usize];
            let mut isnull = [false; pg_sys::INDEX_MAX_KEYS as usize];
            for &(index, info, predicate) in &self.open {
                if !predicate.is_null() && !self.qual_holds(predicate) {
                    continue;
                }
                pg_sys::FormIndexDatum(
                    info,
                    self.slot,
                    self.estate,
                    values.as_mut_ptr(),
                    isnull.as_mut_ptr(),
                );
                pg_sys::index_insert(
                    index,
                    values.as_mut_ptr(),
                    isnull.as_mut_ptr(),
                    &mut tid,
                    rel,
                    pg_sys::IndexUniqueCheck::UNIQUE_CHECK_NO,
                    false,
                    info,
                );
            }
            pg_sys::MemoryContextReset((*self.econtext).ecxt_per_tuple_memory);
            pg_sys::ExecClearTuple(self.slot);
        }
    }

    /// A partial index's predicate, evaluated as ExecQual does (null is false).
    ///
    /// # Safety
    /// The slot holds the row; `predicate` prepared with ExecPrepareQual.
    unsafe fn qual_holds(&self, predicate: *mut pg_sys::ExprState) -> bool {
        // SAFETY: guaranteed by the caller; the evaluation allocates in the
        // per-tuple context, reset after each row.
        unsafe {
            let old = pg_sys::MemoryContextSwitchTo((*self.econtext).ecxt_per_tuple_memory);
            let mut isnull = false;
            let evaluate = (*predicate).evalfunc.expect("a prepared qual evaluates");
            let result = pg_call!(evaluate(predicate, self.econtext, &mut isnull));
            pg_sys::MemoryContextSwitchTo(old);
            !isnull && result.value() != 0
        }
    }

    /// # Safety
    /// Opened by `open`, in the same transaction.
    unsafe fn close(self) {
        // SAFETY: guaranteed by the caller.
        unsafe {
            pg_sys::ExecDropSingleTupleTableSlot(self.slot);
            for (index, info, _) in self.open {
                compat::index_insert_cleanup(index, info);
                // The lock is kept until commit, as the executor keeps it.
                pg_sys::index_close(index, pg_sys::NoLock as i32);
            }
            pg_sys::FreeExecutorState(self.estate);
        }
    }
}

fn corrupt(rel: &str, block: u32, why: &str) -> ! {
    CowError::new(
        PgSqlErrorCode::ERRCODE_DATA_CORRUPTED,
        format!("cannot materialize \"{rel}\": source block {block} is not a heap page ({why})"),
    )
    .raise()
}

/// The deleter a committed move or delete tombstone gives its row's copy.
fn deleter_of(t: &tombstone::Tombstone) -> Option<Deleter> {
    if tombstone::is_lock(t.kind) || t.in_progress || t.own {
        return None;
    }
    let successor = t.successor;
    let block = tid::block_of(&successor);
    let moved_partitions = t.kind == tombstone::DELETED
        && block == pg_sys::InvalidBlockNumber
        && successor.ip_posid == pg_sys::MovedPartitionsOffsetNumber as u16;
    Some(Deleter {
        xid: u32::from(t.xmin),
        successor: (t.kind == tombstone::MOVED).then_some((block, successor.ip_posid)),
        moved_partitions,
    })
}

/// The committed moves and deletes of a relation's source rows, by source
/// (file block, offset).
///
/// # Safety
/// In a transaction.
unsafe fn committed_deleters(relfilenode: pg_sys::Oid) -> HashMap<(u32, u16), Deleter> {
    // SAFETY: guaranteed by the caller.
    unsafe { tombstone::all_of(relfilenode) }
        .iter()
        .filter_map(|t| {
            let TidSpace::Source(block) = tid::tid_space(&t.source) else {
                return None;
            };
            Some(((block, t.source.ip_posid), deleter_of(t)?))
        })
        .collect()
}

/// Step 1 for one relation.
///
/// # Safety
/// `rel` open under ShareUpdateExclusiveLock, shadowed at `locator`, in the
/// copying transaction `xid`.
unsafe fn copy_part(rel: pg_sys::Relation, locator: RelLocator, xid: u32, pace: &mut Pace) -> Part {
    // SAFETY: guaranteed by the caller.
    unsafe {
        let name = relation_name(rel);
        let relfilenode = compat::relfilenode_of(rel);
        let permanent = (*(*rel).rd_rel).relpersistence == pg_sys::RELPERSISTENCE_PERMANENT as i8;
        // Clones need wal_level replica or more: a permanent relation is logged.
        let logged = permanent;
        compat::own_smgr(clone_view::smgr_home(locator), locator);
        let blocks = clone_view::source_block_count(locator);
        pace.start_relation(&name, blocks);
        let t = clone_view::current()
            .expect("a shadowed relation implies a view")
            .snapshot();
        let mut deleters = committed_deleters(relfilenode);
        // A row whose deleter committed before every snapshot that can still
        // look (one a clone of a clone inherited, or one VACUUM has since
        // frozen past) is dead to all of them: it is not copied, as VACUUM
        // would remove it, and its deleter's xid, which may precede the
        // table's relfrozenxid, is never written.
        let horizon = pg_sys::GetOldestNonRemovableTransactionId(rel);
        let dead_to_all: HashSet<(u32, u16)> = deleters
            .iter()
            .filter(|(_, d)| xid_precedes(d.xid, u32::from(horizon)))
            .map(|(key, _)| *key)
            .collect();
        deleters.retain(|key, _| !dead_to_all.contains(key));
        let indexes = Indexes::open(rel);
        let strategy = pg_sys::GetAccessStrategy(pg_sys::BufferAccessStrategyType::BAS_BULKREAD);
        let source = PageSource::Source { locator, permanent };
        let mut part = Part {
            rel,
            relfilenode,
            copies: vec![NO_COPY; blocks as usize],
            applied: dead_to_all.clone(),
        };
        let mut visible = [0u16; MAX_TUPLES_PER_PAGE];
        for block in 0..blocks {
            let buffer = heap_page::read(source, block, strategy);
            pg_sys::LockBuffer(buffer, pg_sys::BUFFER_LOCK_SHARE as i32);
            let (count, _) =
                heap_page::collect_visible(buffer, block, (*rel).rd_id, t, &mut visible);
            let bytes = heap_page::page_bytes(buffer).to_vec();
            pg_sys::UnlockReleaseBuffer(buffer);
            let kept: Vec<u16> = visible[..count]
                .iter()
                .copied()
                .filter(|&o| !dead_to_all.contains(&(block, o)))
                .collect();
            if !kept.is_empty() {
                pg_sys::LockRelationForExtension(rel, pg_sys::ExclusiveLock as i32);
                let target = pg_sys::ReadBufferExtended(
                    rel,
                    pg_sys::ForkNumber::MAIN_FORKNUM,
                    pg_sys::InvalidBlockNumber,
                    pg_sys::ReadBufferMode::RBM_ZERO_AND_LOCK,
                    std::ptr::null_mut(),
                );
                pg_sys::UnlockRelationForExtension(rel, pg_sys::ExclusiveLock as i32);
                let local = pg_sys::BufferGetBlockNumber(target);
                let (copy, copied) = page::copy_page(
                    &bytes,
                    local,
                    xid,
                    &|o| kept.binary_search(&o).is_ok(),
                    &|o| deleters.get(&(block, o)).copied(),
                )
                .unwrap_or_else(|e| corrupt(&name, block, &e.0));
                pg_sys::CritSectionCount += 1;
                std::ptr::copy_nonoverlapping(
                    copy.as_ptr(),
                    pg_sys::BufferGetPage(target) as *mut u8,
                    BLCKSZ,
                );
                pg_sys::MarkBufferDirty(target);
                if logged {
                    pg_sys::log_newpage_buffer(target, true);
                }
                pg_sys::CritSectionCount -= 1;
                pg_sys::LockBuffer(target, pg_sys::BUFFER_LOCK_UNLOCK as i32);
                part.copies[block as usize] = local;
                for &offset in &copied.kept {
                    if deleters.contains_key(&(block, offset)) {
                        part.applied.insert((block, offset));
                    }
                    indexes.insert(rel, target, tid::make_tid(local, offset));
                }
                pace.rows += copied.kept.len() as u64;
                pg_sys::ReleaseBuffer(target);
            }
            pace.block_done();
            if block == blocks / 2 {
                failpoint::reached("materialize_mid_table");
            }
        }
        pg_sys::FreeAccessStrategy(strategy);
        indexes.close();
        part
    }
}

/// Step 2: gives the copies the deleters of moves and deletes committed
/// since they were made. Another transaction's tombstone still running is
/// left for the next pass; under the switch's lock there is none.
///
/// # Safety
/// In the copying transaction, `part` made by `copy_part`.
unsafe fn apply_tombstones(part: &mut Part, final_pass: bool) {
    // SAFETY: guaranteed by the caller; each copy page is modified under
    // its exclusive lock and WAL-logged as a generic change.
    unsafe {
        let name = relation_name(part.rel);
        for t in tombstone::all_of(part.relfilenode) {
            let TidSpace::Source(block) = tid::tid_space(&t.source) else {
                continue;
            };
            let key = (block, t.source.ip_posid);
            if tombstone::is_lock(t.kind) || part.applied.contains(&key) {
                continue;
            }
            if t.in_progress {
                if final_pass {
                    CowError::new(
                        PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
                        format!("a write to \"{name}\" is still running under its switch's lock"),
                    )
                    .raise();
                }
                continue;
            }
            let Some(deleter) = deleter_of(&t) else {
                continue;
            };
            let local = part.copies.get(block as usize).copied().unwrap_or(NO_COPY);
            if local == NO_COPY {
                CowError::new(
                    PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
                    format!("the clone wrote source row ({block},{}) of \"{name}\", which was not copied", key.1),
                )
                .raise();
            }
            let buffer = pg_sys::ReadBufferExtended(
                part.rel,
                pg_sys::ForkNumber::MAIN_FORKNUM,
                local,
                pg_sys::ReadBufferMode::RBM_NORMAL,
                std::ptr::null_mut(),
            );
            pg_sys::LockBuffer(buffer, pg_sys::BUFFER_LOCK_EXCLUSIVE as i32);
            let state = pg_sys::GenericXLogStart(part.rel);
            let image = pg_sys::GenericXLogRegisterBuffer(state, buffer, 0) as *mut u8;
            let bytes = std::slice::from_raw_parts_mut(image, BLCKSZ);
            page::set_deleter(bytes, key.1, local, &deleter);
            pg_sys::GenericXLogFinish(state);
            pg_sys::UnlockReleaseBuffer(buffer);
            part.applied.insert(key);
        }
    }
}

/// Takes `lock` on `table` without queueing behind a long-running holder
/// for more than a moment at a time: each attempt waits at most
/// `lock_timeout_ms` in a subtransaction, so readers that queue behind the
/// request are let through again in between.
///
/// # Safety
/// In a transaction.
pub(super) unsafe fn lock_patiently(table: pg_sys::Oid, lock: pg_sys::LOCKMODE, pace: &mut Pace) {
    loop {
        // SAFETY: guaranteed by the caller.
        if unsafe { pg_sys::ConditionalLockRelationOid(table, lock) } {
            return;
        }
        // SAFETY: the plpgsql pattern: the subtransaction's lock is kept by
        // the parent on release; on a lock timeout it is rolled back and the
        // context and resource owner restored.
        let got = unsafe {
            let context = pg_sys::CurrentMemoryContext;
            let owner = pg_sys::CurrentResourceOwner;
            pg_sys::BeginInternalSubTransaction(std::ptr::null());
            pg_sys::MemoryContextSwitchTo(context);
            let got = PgTryBuilder::new(|| {
                super::set_local_setting(
                    c"lock_timeout",
                    &super::SWITCH_LOCK_TIMEOUT_MS.to_string(),
                );
                pg_sys::LockRelationOid(table, lock);
                true
            })
            .catch_when(PgSqlErrorCode::ERRCODE_LOCK_NOT_AVAILABLE, |_| false)
            .catch_when(PgSqlErrorCode::ERRCODE_T_R_DEADLOCK_DETECTED, |_| false)
            .execute();
            if got {
                pg_sys::ReleaseCurrentSubTransaction();
            } else {
                pg_sys::RollbackAndReleaseCurrentSubTransaction();
            }
            pg_sys::MemoryContextSwitchTo(context);
            pg_sys::CurrentResourceOwner = owner;
            got
        };
        if got {
            return;
        }
        pace.waiting_for_lock();
    }
}

/// Materializes `table` and its TOAST table in the running transaction,
/// which the caller commits. None if it no longer reads its source.
///
/// # Safety
/// In a transaction of the materializer, connected to the clone.
pub(super) unsafe fn materialize_table(
    clone: pg_sys::Oid,
    table: pg_sys::Oid,
    pace: &mut Pace,
) -> Option<Copied> {
    // SAFETY: guaranteed by the caller.
    unsafe {
        let view = clone_view::current()?;
        let rel = pg_sys::try_relation_open(table, pg_sys::ShareUpdateExclusiveLock as i32);
        if rel.is_null() {
            return None;
        }
        let toast_oid = (*(*rel).rd_rel).reltoastrelid;
        let toast = if toast_oid == pg_sys::InvalidOid {
            std::ptr::null_mut()
        } else {
            pg_sys::relation_open(toast_oid, pg_sys::ShareUpdateExclusiveLock as i32)
        };
        let shadowed_at = |r: pg_sys::Relation| {
            (!r.is_null())
                .then(|| view.source_locator(compat::relfilenode_of(r)))
                .flatten()
        };
        let (table_source, toast_source) = (shadowed_at(rel), shadowed_at(toast));
        if table_source.is_none() && toast_source.is_none() {
            if !toast.is_null() {
                pg_sys::relation_close(toast, pg_sys::NoLock as i32);
            }
            pg_sys::relation_close(rel, pg_sys::NoLock as i32);
            return None;
        }
        let xid = u32::from(pg_sys::GetTopTransactionId());
        crate::state::jobs::update(u32::from(clone), |j| j.copying_xid = xid);
        let mut parts = Vec::new();
        // The TOAST table first: its copies are what the table's copies point to.
        for (r, source) in [(toast, toast_source), (rel, table_source)] {
            if let Some(locator) = source {
                parts.push(copy_part(r, locator, xid, pace));
            }
        }
        for part in &mut parts {
            apply_tombstones(part, false);
        }
        pace.switching();
        lock_patiently(table, pg_sys::AccessExclusiveLock as i32, pace);
        failpoint::reached("materialize_switch");
        for part in &mut parts {
            apply_tombstones(part, true);
            tombstone::forget(part.relfilenode);
        }
        compat::transfer_predicate_locks_to_relation(rel);

        let mut copied = Copied {
            rows: 0,
            indexes_with_source_entries: Vec::new(),
        };
        let mut record =
            record::read_record(clone).expect("a clone being materialized has its record");
        let mut no_longer_shadowed: HashSet<u32> =
            parts.iter().map(|p| u32::from(p.relfilenode)).collect();
        for r in [rel, toast].into_iter().filter(|r| !r.is_null()) {
            for index in relation::index_oids(r) {
                let index_rel = pg_sys::index_open(index, pg_sys::AccessShareLock as i32);
                let relfilenode = u32::from(compat::relfilenode_of(index_rel));
                pg_sys::index_close(index_rel, pg_sys::NoLock as i32);
                if !no_longer_shadowed.insert(relfilenode) {
                    continue;
                }
                if !record.shadowed.iter().any(|s| s.relfilenode == relfilenode) {
                    copied.indexes_with_source_entries.push(index);
                }
            }
        }
        record
            .shadowed
            .retain(|s| !no_longer_shadowed.contains(&s.relfilenode));
        record
            .owners
            .retain(|(relfilenode, _)| !no_longer_shadowed.contains(relfilenode));
        for part in &parts {
            record.materialized.push(MaterializedStorage {
                relfilenode: u32::from(part.relfilenode),
                xid,
            });
        }
        record::update(&record);
        for part in &parts {
            pg_sys::CacheInvalidateRelcache(part.rel);
        }
        if !toast.is_null() {
            pg_sys::relation_close(toast, pg_sys::NoLock as i32);
        }
        pg_sys::relation_close(rel, pg_sys::NoLock as i32);
        copied.rows = pace.rows;
        Some(copied)
    }
}

/// Removes the entries naming source rows from an index the clone built
/// itself, once its table reads no source: they are the rows' former
/// addresses, now held by their copies' entries.
///
/// # Safety
/// In a transaction; the table is no longer shadowed.
pub(super) unsafe fn drop_source_entries(index: pg_sys::Oid) {
    #[pg_guard]
    unsafe extern "C-unwind" fn names_a_source_row(
        tid: pg_sys::ItemPointer,
        _state: *mut std::ffi::c_void,
    ) -> bool {
        // SAFETY: the AM passes a valid TID.
        matches!(tid::tid_space(unsafe { &*tid }), TidSpace::Source(_))
    }
    // SAFETY: guaranteed by the caller; the lock keeps VACUUM away, as
    // VACUUM's own bulk delete needs.
    unsafe {
        let heap_oid = pg_sys::IndexGetRelation(index, true);
        if heap_oid == pg_sys::InvalidOid {
            return;
        }
        let heap = pg_sys::table_open(heap_oid, pg_sys::ShareUpdateExclusiveLock as i32);
        let rel = pg_sys::index_open(index, pg_sys::RowExclusiveLock as i32);
        compat::bulk_delete_entries(rel, heap, Some(names_a_source_row));
        pg_sys::index_close(rel, pg_sys::NoLock as i32);
        pg_sys::table_close(heap, pg_sys::NoLock as i32);
    }
}
