//! Wrapper index access methods: `cow_btree`, `cow_hash`, `cow_gist`,
//! `cow_gin`, `cow_spgist`, `cow_brin`.
//!
//! A shadowed index keeps its definition, opclasses and OIDs; only its AM
//! changes to the wrapper of its original AM. Each wrapper reports exactly the
//! capabilities of the AM it wraps (so the planner, `pg_get_indexdef` and
//! `\d` treat it the same) and delegates option parsing, validation and cost
//! estimation.
//!
//! A scan reads the source's index file with the wrapped AM's own code,
//! through a copy of the clone's index descriptor pointed at the source's
//! storage (same definition, same OIDs), and moves every TID it returns into
//! the source TID space; the table AM then judges each row with T. The copy
//! never lets the source index be written: killed-item hints are never
//! passed on, and the inner scan runs under SnapshotAny so it takes no
//! predicate locks naming the source's pages.
//!
//! The index's own file is its local part: an index of the wrapped AM over
//! the local heap, built empty the first time a row is inserted, then
//! written, scanned and vacuumed by the wrapped AM as any index. Scans read
//! both parts: ordered btree scans and distance-ordered (KNN) scans merge
//! them in order, others read one after the other. A unique index checks a
//! new key against the source's rows too (those the clone still sees).

use pgrx::prelude::*;
use pgrx::{pg_sys, PgSqlErrorCode};

use crate::clone_view;
use crate::compat;
use crate::error::CowError;
use crate::relcopy::RelationCopy;
use crate::tableam::relation_name;

/// Every wrapped AM: (wrapper name, the wrapped AM's OID, its name).
pub const WRAPPED: [(&str, u32, &str); 6] = [
    ("cow_btree", pg_sys::BTREE_AM_OID.to_u32(), "btree"),
    ("cow_hash", pg_sys::HASH_AM_OID.to_u32(), "hash"),
    ("cow_gist", pg_sys::GIST_AM_OID.to_u32(), "gist"),
    ("cow_gin", pg_sys::GIN_AM_OID.to_u32(), "gin"),
    ("cow_spgist", pg_sys::SPGIST_AM_OID.to_u32(), "spgist"),
    ("cow_brin", pg_sys::BRIN_AM_OID.to_u32(), "brin"),
];

fn refuse(what: &str, index: pg_sys::Relation) -> ! {
    // SAFETY: PostgreSQL passes a valid, open index to every index AM callback.
    let name = unsafe { relation_name(index) };
    CowError::new(
        PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
        format!("cannot {what} shadowed index \"{name}\""),
    )
    .detail("Its entries partly live in the source database, which a clone never changes.")
    .hint("REINDEX the index in the clone to make it entirely the clone's own.")
    .raise()
}

/// The AM a wrapper AM wraps, if `relam` is one of the wrappers. Called for
/// every row an index scan or insert hands to the wrapped AM (SeenAsWrapped),
/// so answers are remembered per backend: an access method's OID names the
/// same AM for as long as the extension that made it exists.
pub fn wraps(relam: pg_sys::Oid) -> Option<pg_sys::Oid> {
    const BUILT_IN: [u32; 6] = [
        pg_sys::BTREE_AM_OID.to_u32(),
        pg_sys::HASH_AM_OID.to_u32(),
        pg_sys::GIST_AM_OID.to_u32(),
        pg_sys::GIN_AM_OID.to_u32(),
        pg_sys::SPGIST_AM_OID.to_u32(),
        pg_sys::BRIN_AM_OID.to_u32(),
    ];
    thread_local! {
        static KNOWN: std::cell::RefCell<Vec<(pg_sys::Oid, Option<pg_sys::Oid>)>> =
            const { std::cell::RefCell::new(Vec::new()) };
    }
    if BUILT_IN.contains(&relam.to_u32()) {
        return None;
    }
    if let Some(known) = KNOWN.with(|k| {
        k.borrow()
            .iter()
            .find(|(am, _)| *am == relam)
            .map(|(_, wrapped)| *wrapped)
    }) {
        return known;
    }
    // SAFETY: get_am_name returns a palloc'd copy (freed here) or null.
    let name = unsafe {
        let name = pg_sys::get_am_name(relam);
        if name.is_null() {
            return None;
        }
        let owned = std::ffi::CStr::from_ptr(name)
            .to_string_lossy()
            .into_owned();
        pg_sys::pfree(name.cast());
        owned
    };
    let wrapped = WRAPPED
        .iter()
        .find(|(w, _, _)| *w == name)
        .map(|(_, oid, _)| pg_sys::Oid::from(*oid));
    KNOWN.with(|k| k.borrow_mut().push((relam, wrapped)));
    wrapped
}

thread_local! {
    /// Relfilenodes of shadowed indexes whose local part is known built.
    static LOCAL_READY: std::cell::RefCell<std::collections::HashSet<u32>> =
        std::cell::RefCell::new(std::collections::HashSet::new());
}

/// # Safety
/// `index` must be a valid, open index.
unsafe fn local_blocks(index: pg_sys::Relation) -> u32 {
    // SAFETY: guaranteed by the caller; an index is sized by its own file.
    unsafe { pg_sys::RelationGetNumberOfBlocksInFork(index, pg_sys::ForkNumber::MAIN_FORKNUM) }
}

/// Serializes building a local part with readers that find it half-written.
///
/// # Safety
/// `index` must be a valid, open index.
unsafe fn local_part_lock(index: pg_sys::Relation, mode: u32, lock: bool) {
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
unsafe fn local_part_ready(index: pg_sys::Relation) -> bool {
    // SAFETY: guaranteed by the caller.
    unsafe {
        let node = u32::from(compat::relfilenode_of(index));
        if LOCAL_READY.with(|r| r.borrow().contains(&node)) {
            return true;
        }
        if local_blocks(index) == 0 {
            return false;
        }
        // Wait out a build still writing it.
        local_part_lock(index, pg_sys::ShareLock, true);
        local_part_lock(index, pg_sys::ShareLock, false);
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
unsafe fn ensure_local_part(index: pg_sys::Relation, heap: pg_sys::Relation) {
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
            let _local = crate::writes::LocalSizing::enter();
            crate::tableam::with_empty_build_scans(|| build_as_wrapped(heap, index, info));
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

/// What the source's part of a unique index says about a new key.
enum Probe {
    Clear,
    Conflict,
    /// A running transaction is changing a source row with the key.
    Wait(pg_sys::TransactionId, pg_sys::ItemPointerData),
}

/// Looks up a key in the source's part of a unique btree index and judges
/// each row found as a unique check does: visible to a dirty snapshot
/// (T sees it and no committed or own tombstone hides it).
///
/// # Safety
/// `index` a valid, open shadowed unique index of `heap`; `values` and
/// `isnull` hold its key columns.
unsafe fn probe_source(
    index: pg_sys::Relation,
    heap: pg_sys::Relation,
    values: *mut pg_sys::Datum,
    isnull: *mut bool,
) -> Probe {
    // SAFETY: guaranteed by the caller; the inner scan ends and the copy is
    // closed before returning.
    unsafe {
        let form = (*index).rd_index;
        let natts = (*form).indnkeyatts as usize;
        let mut keys: Vec<pg_sys::ScanKeyData> = vec![std::mem::zeroed(); natts];
        for (i, key) in keys.iter_mut().enumerate() {
            let attno = (i + 1) as i16;
            if *isnull.add(i) {
                if !(*form).indnullsnotdistinct {
                    return Probe::Clear;
                }
                pg_sys::ScanKeyEntryInitialize(
                    key,
                    (pg_sys::SK_ISNULL | pg_sys::SK_SEARCHNULL) as i32,
                    attno,
                    0,
                    pg_sys::InvalidOid,
                    pg_sys::InvalidOid,
                    pg_sys::InvalidOid,
                    pg_sys::Datum::from(0),
                );
                continue;
            }
            let family = *(*index).rd_opfamily.add(i);
            let input = *(*index).rd_opcintype.add(i);
            let equal = pg_sys::BTEqualStrategyNumber as i16;
            let operator = pg_sys::get_opfamily_member(family, input, input, equal);
            pg_sys::ScanKeyEntryInitialize(
                key,
                0,
                attno,
                equal as u16,
                input,
                *(*index).rd_indcollation.add(i),
                pg_sys::get_opcode(operator),
                *values.add(i),
            );
        }
        let Some(source) = SourceIndex::open(index) else {
            return Probe::Clear;
        };
        let routine = source.routine();
        let begin = routine.ambeginscan.expect("every AM begins scans");
        let inner = pg_call!(begin(source.rel(), natts as i32, 0));
        prepare_inner(inner, heap, &raw mut pg_sys::SnapshotAnyData, false);
        let rescan = routine.amrescan.expect("every AM rescans");
        pg_call!(rescan(
            inner,
            keys.as_mut_ptr(),
            natts as i32,
            std::ptr::null_mut(),
            0
        ));
        let get = routine.amgettuple.expect("btree returns tuples");
        let mut probe = Probe::Clear;
        while pg_call!(get(inner, pg_sys::ScanDirection::ForwardScanDirection)) {
            let found = (*inner).xs_heaptid;
            let mut tid = clone_view::source_tid(clone_view::block_of(&found), found.ip_posid);
            let mut dirty: pg_sys::SnapshotData = std::mem::zeroed();
            dirty.snapshot_type = pg_sys::SnapshotType::SNAPSHOT_DIRTY;
            let mut all_dead = false;
            if pg_sys::table_index_fetch_tuple_check(heap, &mut tid, &mut dirty, &mut all_dead) {
                probe = if dirty.xmax != pg_sys::InvalidTransactionId {
                    Probe::Wait(dirty.xmax, tid)
                } else {
                    Probe::Conflict
                };
                break;
            }
        }
        let end = routine.amendscan.expect("every AM ends scans");
        pg_call!(end(inner));
        source.close();
        probe
    }
}

/// # Safety
/// As for `probe_source`.
unsafe fn unique_violation(
    index: pg_sys::Relation,
    values: *mut pg_sys::Datum,
    isnull: *mut bool,
) -> ! {
    // SAFETY: guaranteed by the caller.
    unsafe {
        let name = relation_name(index);
        let description = pg_sys::BuildIndexValueDescription(index, values, isnull);
        let mut error = CowError::new(
            PgSqlErrorCode::ERRCODE_UNIQUE_VIOLATION,
            format!("duplicate key value violates unique constraint \"{name}\""),
        );
        if !description.is_null() {
            let key = std::ffi::CStr::from_ptr(description).to_string_lossy();
            error = error.detail(format!("Key {key} already exists."));
        }
        error.raise()
    }
}

/// Whether an index still has a source part (its own file is then its
/// local part).
///
/// # Safety
/// `index` must be a valid relation.
pub unsafe fn is_shadowed_index(index: pg_sys::Relation) -> bool {
    // SAFETY: guaranteed by the caller.
    unsafe { is_shadowed(index) }
}

/// Whether an index still has a source part. One without (on a table
/// created in a clone, or restored from a clone's dump elsewhere) is simply
/// an index of the wrapped AM, and every callback hands it over.
///
/// # Safety
/// `index` must be a valid relation.
unsafe fn is_shadowed(index: pg_sys::Relation) -> bool {
    // SAFETY: guaranteed by the caller.
    clone_view::current()
        .and_then(|view| view.source_locator(unsafe { compat::relfilenode_of(index) }))
        .is_some()
}

#[pg_guard]
unsafe extern "C-unwind" fn ambuild(
    heap: pg_sys::Relation,
    index: pg_sys::Relation,
    info: *mut pg_sys::IndexInfo,
) -> *mut pg_sys::IndexBuildResult {
    // SAFETY: PostgreSQL passes valid relations, handed on unchanged.
    unsafe {
        if is_shadowed(index) {
            refuse("build", index)
        }
        build_as_wrapped(heap, index, info)
    }
}

/// Shows an index to its wrapped AM as one of the wrapped AM's own for the
/// length of one call: the AMs' reloption accessors (fillfactor, fast
/// update, pages per range, ...) assert that the relation's `relam` is
/// theirs. The relcache's form is patched in place and put back afterwards,
/// also when the call raises (pg_call! turns the error into an unwinding
/// panic, which drops this guard); a relcache rebuild meanwhile replaces
/// the form with the catalog's, which is left alone.
struct SeenAsWrapped {
    rel: pg_sys::Relation,
    own_am: pg_sys::Oid,
    wrapped_am: pg_sys::Oid,
}

impl SeenAsWrapped {
    /// # Safety
    /// `rel` must be an open index relation that stays open past the guard.
    unsafe fn new(rel: pg_sys::Relation) -> Self {
        // SAFETY: guaranteed by the caller.
        unsafe {
            let own_am = (*(*rel).rd_rel).relam;
            let wrapped_am = wraps(own_am).unwrap_or(own_am);
            (*(*rel).rd_rel).relam = wrapped_am;
            Self {
                rel,
                own_am,
                wrapped_am,
            }
        }
    }
}

impl Drop for SeenAsWrapped {
    fn drop(&mut self) {
        // SAFETY: the relation is still open (see new); its form is read afresh.
        unsafe {
            let form = (*self.rel).rd_rel;
            if !form.is_null() && (*form).relam == self.wrapped_am {
                (*form).relam = self.own_am;
            }
        }
    }
}

/// Makes a descriptor copy of a wrapper index the wrapped AM's own index:
/// its routine, its own caches in the copy's context, and its own pg_class
/// form naming the wrapped AM (the wrapped AM's code asserts that the index
/// is its own, see SeenAsWrapped; the relcache's form keeps the wrapper's).
///
/// # Safety
/// `copy` must be a fresh copy of `index`, a valid wrapper index relation.
unsafe fn make_wrapped_index(copy: &RelationCopy, index: pg_sys::Relation) {
    // SAFETY: guaranteed by the caller; everything lives in the copy's context.
    unsafe {
        let rel = copy.rel;
        let form = pg_sys::MemoryContextAlloc(
            copy.context,
            std::mem::size_of::<pg_sys::FormData_pg_class>(),
        ) as *mut pg_sys::FormData_pg_class;
        std::ptr::copy_nonoverlapping((*index).rd_rel, form, 1);
        (*form).relam = wraps((*form).relam).unwrap_or((*form).relam);
        (*rel).rd_rel = form;
        (*rel).rd_amcache = std::ptr::null_mut();
        (*rel).rd_indexcxt = copy.context;
        (*rel).rd_indam = wrapped_routine(index) as *const _ as *mut _;
    }
}

/// Runs one call of the wrapped AM with `rel` seen as its own.
macro_rules! as_wrapped {
    ($rel:expr, $call:expr) => {{
        // SAFETY: the relation is open for the whole call.
        #[allow(unused_unsafe)]
        let _seen = unsafe { SeenAsWrapped::new($rel) };
        $call
    }};
}

/// Runs the wrapped AM's build on a copy of the index descriptor that names
/// the wrapped AM (btree's sorted build checks it), writing the index's own
/// file.
///
/// # Safety
/// `index` a valid, open wrapper index of `heap` with an empty main fork.
unsafe fn build_as_wrapped(
    heap: pg_sys::Relation,
    index: pg_sys::Relation,
    info: *mut pg_sys::IndexInfo,
) -> *mut pg_sys::IndexBuildResult {
    // SAFETY: guaranteed by the caller; the copy's pg_class form is its own
    // and its caches live in its own context, freed with it.
    unsafe {
        let routine = wrapped_routine(index);
        let copy = RelationCopy::new(index, c"cowclone wrapped build", std::ptr::null_mut());
        let rel = copy.rel;
        make_wrapped_index(&copy, index);
        let build = routine.ambuild.expect("every AM builds");
        let result = pg_call!(build(heap, rel, info));
        copy.close();
        result
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn ambuildempty(index: pg_sys::Relation) {
    // SAFETY: as above.
    unsafe {
        if is_shadowed(index) {
            refuse("build", index)
        }
        let build = wrapped_routine(index)
            .ambuildempty
            .expect("every AM builds");
        as_wrapped!(index, pg_call!(build(index)))
    }
}

#[pg_guard]
#[allow(clippy::too_many_arguments)]
unsafe extern "C-unwind" fn aminsert(
    index: pg_sys::Relation,
    values: *mut pg_sys::Datum,
    isnull: *mut bool,
    heap_tid: pg_sys::ItemPointer,
    heap: pg_sys::Relation,
    check_unique: pg_sys::IndexUniqueCheck::Type,
    index_unchanged: bool,
    info: *mut pg_sys::IndexInfo,
) -> bool {
    // SAFETY: as above.
    unsafe {
        let shadowed = is_shadowed(index);
        let checks = shadowed && check_unique != pg_sys::IndexUniqueCheck::UNIQUE_CHECK_NO;
        let partial = check_unique == pg_sys::IndexUniqueCheck::UNIQUE_CHECK_PARTIAL;
        let mut maybe_duplicate = false;
        if shadowed {
            ensure_local_part(index, heap);
        }
        // Checked before the entry goes in, waiting as a unique check waits,
        // so no writer of the source row ever waits for this inserter.
        if checks {
            loop {
                match probe_source(index, heap, values, isnull) {
                    Probe::Clear => break,
                    Probe::Conflict if partial => {
                        maybe_duplicate = true;
                        break;
                    }
                    Probe::Conflict => unique_violation(index, values, isnull),
                    Probe::Wait(_, _) if partial => {
                        maybe_duplicate = true;
                        break;
                    }
                    Probe::Wait(xid, mut tid) => pg_sys::XactLockTableWait(
                        xid,
                        heap,
                        &mut tid,
                        pg_sys::XLTW_Oper::XLTW_InsertIndex,
                    ),
                }
            }
        }
        let insert = wrapped_routine(index).aminsert.expect("every AM inserts");
        let unique = as_wrapped!(
            index,
            pg_call!(insert(
                index,
                values,
                isnull,
                heap_tid,
                heap,
                check_unique,
                index_unchanged,
                info
            ))
        );
        unique && !maybe_duplicate
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn ambulkdelete(
    info: *mut pg_sys::IndexVacuumInfo,
    stats: *mut pg_sys::IndexBulkDeleteResult,
    callback: pg_sys::IndexBulkDeleteCallback,
    state: *mut std::ffi::c_void,
) -> *mut pg_sys::IndexBulkDeleteResult {
    // SAFETY: PostgreSQL passes valid vacuum info naming the index.
    unsafe {
        let index = (*info).index;
        if is_shadowed(index) && !local_part_ready(index) {
            return stats;
        }
        let delete = wrapped_routine(index)
            .ambulkdelete
            .expect("every AM vacuums");
        as_wrapped!(index, pg_call!(delete(info, stats, callback, state)))
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn amvacuumcleanup(
    info: *mut pg_sys::IndexVacuumInfo,
    stats: *mut pg_sys::IndexBulkDeleteResult,
) -> *mut pg_sys::IndexBulkDeleteResult {
    // SAFETY: as above.
    unsafe {
        let index = (*info).index;
        if is_shadowed(index) && ((*info).analyze_only || !local_part_ready(index)) {
            // Nothing of the local part to clean; the source's is the source's.
            return stats;
        }
        let cleanup = wrapped_routine(index)
            .amvacuumcleanup
            .expect("every AM vacuums");
        as_wrapped!(index, pg_call!(cleanup(info, stats)))
    }
}

/// The routine of the AM a wrapper index wraps, looked up once per wrapper
/// AM in this backend (a backend's database, and so its AM OIDs, never
/// change) and kept in TopMemoryContext.
///
/// # Safety
/// `index` must be a valid index relation using one of the wrappers.
unsafe fn wrapped_routine(index: pg_sys::Relation) -> &'static pg_sys::IndexAmRoutine {
    thread_local! {
        static ROUTINES: std::cell::RefCell<Vec<(pg_sys::Oid, usize)>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    // SAFETY: guaranteed by the caller.
    let wrapper = unsafe { (*(*index).rd_rel).relam };
    if let Some(found) = ROUTINES.with(|r| {
        r.borrow()
            .iter()
            .find(|(am, _)| *am == wrapper)
            .map(|(_, p)| *p)
    }) {
        // SAFETY: stored below from a routine allocated in TopMemoryContext.
        return unsafe { &*(found as *const pg_sys::IndexAmRoutine) };
    }
    // SAFETY: get_am_name returns a palloc'd copy or null; the handler's
    // routine is allocated in TopMemoryContext so it lives for the process.
    let routine = unsafe {
        let name = pg_sys::get_am_name(wrapper);
        let name = if name.is_null() {
            String::new()
        } else {
            std::ffi::CStr::from_ptr(name)
                .to_string_lossy()
                .into_owned()
        };
        // A btree wrapper's descriptor may name btree itself (see
        // read_hooks::btree_for_on_conflict).
        let wrapped = WRAPPED
            .iter()
            .find(|(w, oid, _)| *w == name || pg_sys::Oid::from(*oid) == wrapper)
            .map(|(_, oid, _)| pg_sys::Oid::from(*oid))
            .unwrap_or_else(|| {
                CowError::new(
                    PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
                    format!("access method \"{name}\" is not a cowclone index wrapper"),
                )
                .raise()
            });
        let old = pg_sys::MemoryContextSwitchTo(pg_sys::TopMemoryContext);
        let routine = pg_sys::GetIndexAmRoutineByAmId(wrapped, false);
        pg_sys::MemoryContextSwitchTo(old);
        routine
    };
    ROUTINES.with(|r| r.borrow_mut().push((wrapper, routine as usize)));
    // SAFETY: allocated in TopMemoryContext, never freed.
    unsafe { &*routine }
}

/// A copy of a clone's index descriptor that reads the source's index file.
///
/// The wrapped AM caches metapages and support functions in the copy's
/// memory context (never in the clone's relcache entry, whose caches
/// describe the local file); the storage handle goes back to the backend's
/// owner field for the source file when the copy goes. The wrapped AM's
/// routine is shared and long-lived.
struct SourceIndex {
    copy: RelationCopy,
}

impl SourceIndex {
    /// None when the index does not shadow source storage.
    ///
    /// # Safety
    /// `index` must be a valid, open index relation using a wrapper AM.
    unsafe fn open(index: pg_sys::Relation) -> Option<Self> {
        // SAFETY: guaranteed by the caller; the fields replaced below are
        // the ones that describe the storage and its caches.
        unsafe {
            let view = clone_view::current()?;
            let locator = view.source_locator(compat::relfilenode_of(index))?;
            let home = clone_view::smgr_home(locator);
            let copy = RelationCopy::new(index, c"cowclone source index", home);
            let rel = copy.rel;
            compat::set_relation_locator(rel, locator);
            make_wrapped_index(&copy, index);
            let support =
                (*(*rel).rd_indam).amsupport as usize * (*(*index).rd_rel).relnatts as usize;
            (*rel).rd_supportinfo = pg_sys::MemoryContextAllocZero(
                copy.context,
                support.max(1) * std::mem::size_of::<pg_sys::FmgrInfo>(),
            ) as *mut pg_sys::FmgrInfo;
            compat::own_smgr(home, locator);
            compat::hand_smgr_to(home, &mut (*rel).rd_smgr);
            Some(Self { copy })
        }
    }

    fn rel(&self) -> pg_sys::Relation {
        self.copy.rel
    }

    fn routine(&self) -> &pg_sys::IndexAmRoutine {
        // SAFETY: set in open() to the wrapped AM's routine, which lives for the process.
        unsafe { &*(*self.copy.rel).rd_indam }
    }

    fn close(self) {
        self.copy.close();
    }
}

/// One part's scan and the item it has found but not yet returned.
struct Side {
    scan: pg_sys::IndexScanDesc,
    /// Whether TIDs it returns are source TIDs (moved into the source TID space).
    from_source: bool,
    pending: bool,
    exhausted: bool,
    item: Item,
}

/// A found index entry, copied out of the part's scan (which overwrites its
/// own at its next call) into the outer scan's memory.
#[derive(Clone, Copy)]
struct Item {
    tid: pg_sys::ItemPointerData,
    itup: pg_sys::IndexTuple,
    itupdesc: pg_sys::TupleDesc,
    hitup: pg_sys::HeapTuple,
    hitupdesc: pg_sys::TupleDesc,
    recheck: bool,
    recheck_order_by: bool,
    /// Distances of a KNN scan (float8), with nulls.
    distances: [f64; MAX_ORDER_BYS],
    distance_nulls: [bool; MAX_ORDER_BYS],
}

const MAX_ORDER_BYS: usize = 4;

impl Item {
    fn empty() -> Self {
        // SAFETY: an all-zero Item is a valid empty one (null pointers, false, 0.0).
        unsafe { std::mem::zeroed() }
    }

    /// Copies what `scan` just returned.
    ///
    /// # Safety
    /// `scan`'s last amgettuple returned true.
    unsafe fn take(scan: pg_sys::IndexScanDesc, from_source: bool, orderbys: usize) -> Self {
        // SAFETY: guaranteed by the caller; copies go to the current context.
        unsafe {
            let tid = (*scan).xs_heaptid;
            let mut item = Item {
                tid: if from_source {
                    clone_view::source_tid(clone_view::block_of(&tid), tid.ip_posid)
                } else {
                    tid
                },
                itup: std::ptr::null_mut(),
                itupdesc: (*scan).xs_itupdesc,
                hitup: std::ptr::null_mut(),
                hitupdesc: (*scan).xs_hitupdesc,
                recheck: (*scan).xs_recheck,
                recheck_order_by: (*scan).xs_recheckorderby,
                distances: [0.0; MAX_ORDER_BYS],
                distance_nulls: [true; MAX_ORDER_BYS],
            };
            if !(*scan).xs_itup.is_null() {
                item.itup = pg_sys::CopyIndexTuple((*scan).xs_itup);
            }
            if !(*scan).xs_hitup.is_null() {
                item.hitup = pg_sys::heap_copytuple((*scan).xs_hitup);
            }
            for i in 0..orderbys.min(MAX_ORDER_BYS) {
                item.distance_nulls[i] = *(*scan).xs_orderbynulls.add(i);
                if !item.distance_nulls[i] {
                    item.distances[i] =
                        f64::from_bits((*(*scan).xs_orderbyvals.add(i)).value() as u64);
                }
            }
            item
        }
    }

    /// Frees the item's copies.
    ///
    /// # Safety
    /// No one uses them any more.
    unsafe fn free(&mut self) {
        // SAFETY: guaranteed by the caller; both were palloc'd by take or duplicate.
        unsafe {
            if !self.itup.is_null() {
                pg_sys::pfree(self.itup.cast());
            }
            if !self.hitup.is_null() {
                pg_sys::pfree(self.hitup.cast());
            }
        }
        self.itup = std::ptr::null_mut();
        self.hitup = std::ptr::null_mut();
    }

    /// A deep copy, for a mark.
    ///
    /// # Safety
    /// The item's tuples are valid.
    unsafe fn duplicate(&self) -> Self {
        // SAFETY: guaranteed by the caller.
        unsafe {
            let mut copy = *self;
            if !self.itup.is_null() {
                copy.itup = pg_sys::CopyIndexTuple(self.itup);
            }
            if !self.hitup.is_null() {
                copy.hitup = pg_sys::heap_copytuple(self.hitup);
            }
            copy
        }
    }
}

/// How a scan combines its parts.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Combine {
    /// One part only: the source's (local part not built) or the index itself.
    Single,
    /// Source part, then local part.
    Concatenate,
    /// Both in index order (btree).
    KeyOrder,
    /// Both in distance order (KNN).
    DistanceOrder,
}

/// The state of a wrapper index scan, in the outer scan's `opaque`.
struct CowIndexScan {
    source: Option<SourceIndex>,
    /// sides[0]: the source's part (or the index itself); sides[1]: the local part.
    sides: Vec<Side>,
    routine: &'static pg_sys::IndexAmRoutine,
    combine: Combine,
    orderbys: usize,
    /// The side the last returned item came from.
    last: usize,
    /// Side states at the last mark (merge joins).
    marked: Vec<(bool, bool, Item)>,
    /// KNN distances handed to the executor.
    distances: *mut pg_sys::Datum,
    distance_nulls: *mut bool,
    memory: pg_sys::MemoryContext,
}

/// # Safety
/// `scan` must be a scan begun by `ambeginscan`.
unsafe fn state<'a>(scan: pg_sys::IndexScanDesc) -> &'a mut CowIndexScan {
    // SAFETY: guaranteed by the caller.
    unsafe { &mut *((*scan).opaque as *mut CowIndexScan) }
}

/// Fields index_beginscan_internal would set on a scan begun by hand.
///
/// # Safety
/// `inner` is a freshly begun scan.
unsafe fn prepare_inner(
    inner: pg_sys::IndexScanDesc,
    heap: pg_sys::Relation,
    snapshot: pg_sys::Snapshot,
    want_itup: bool,
) {
    // SAFETY: guaranteed by the caller.
    unsafe {
        (*inner).parallel_scan = std::ptr::null_mut();
        (*inner).xs_heapfetch = std::ptr::null_mut();
        (*inner).xs_temp_snap = false;
        (*inner).heapRelation = heap;
        (*inner).xs_snapshot = snapshot;
        (*inner).xs_want_itup = want_itup;
        (*inner).kill_prior_tuple = false;
        (*inner).ignore_killed_tuples = true;
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn ambeginscan(
    index: pg_sys::Relation,
    nkeys: std::ffi::c_int,
    norderbys: std::ffi::c_int,
) -> pg_sys::IndexScanDesc {
    // SAFETY: PostgreSQL passes a valid, open index. The parts' scans are
    // begun by hand; their remaining fields are set in amrescan.
    unsafe {
        let scan = pg_sys::RelationGetIndexScan(index, nkeys, norderbys);
        let routine = wrapped_routine(index);
        let source = SourceIndex::open(index);
        let begin = routine.ambeginscan.expect("every AM begins scans");
        let mut sides = Vec::with_capacity(2);
        let first = source.as_ref().map_or(index, SourceIndex::rel);
        sides.push(Side {
            scan: as_wrapped!(first, pg_call!(begin(first, nkeys, norderbys))),
            from_source: source.is_some(),
            pending: false,
            exhausted: false,
            item: Item::empty(),
        });
        let with_local = source.is_some() && local_part_ready(index);
        if with_local {
            sides.push(Side {
                scan: as_wrapped!(index, pg_call!(begin(index, nkeys, norderbys))),
                from_source: false,
                pending: false,
                exhausted: false,
                item: Item::empty(),
            });
        }
        let orderbys = norderbys.max(0) as usize;
        let combine = if !with_local {
            Combine::Single
        } else if orderbys > 0 {
            if orderbys > MAX_ORDER_BYS {
                CowError::new(
                    PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
                    "ordered index scans of shadowed indexes take at most 4 ORDER BY distances",
                )
                .raise();
            }
            Combine::DistanceOrder
        } else if routine.amcanorder {
            Combine::KeyOrder
        } else {
            Combine::Concatenate
        };
        let memory = pg_sys::AllocSetContextCreateInternal(
            pg_sys::CurrentMemoryContext,
            c"cowclone index scan items".as_ptr(),
            0,
            8 * 1024,
            8 * 1024 * 1024,
        );
        let state = pg_sys::palloc0(std::mem::size_of::<CowIndexScan>()) as *mut CowIndexScan;
        std::ptr::write(
            state,
            CowIndexScan {
                source,
                sides,
                routine,
                combine,
                orderbys,
                last: 0,
                marked: Vec::new(),
                distances: pg_sys::palloc0(std::mem::size_of::<pg_sys::Datum>() * orderbys.max(1))
                    as *mut pg_sys::Datum,
                distance_nulls: pg_sys::palloc0(orderbys.max(1)) as *mut bool,
                memory,
            },
        );
        (*scan).opaque = state.cast();
        scan
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn amrescan(
    scan: pg_sys::IndexScanDesc,
    keys: pg_sys::ScanKey,
    nkeys: std::ffi::c_int,
    orderbys: pg_sys::ScanKey,
    norderbys: std::ffi::c_int,
) {
    // SAFETY: a scan begun by ambeginscan; keys are the executor's.
    unsafe {
        let state = state(scan);
        if state.combine == Combine::DistanceOrder {
            for i in 0..state.orderbys {
                let function = (*orderbys.add(i)).sk_func.fn_oid;
                if pg_sys::get_func_rettype(function) != pg_sys::FLOAT8OID {
                    CowError::new(
                        PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
                        "distance-ordered scans of a shadowed index the clone has written to need float8 distances",
                    )
                    .raise();
                }
            }
        }
        let merging = matches!(state.combine, Combine::KeyOrder);
        let rescan = state.routine.amrescan.expect("every AM rescans");
        for side in state.sides.iter_mut() {
            let snapshot = if side.from_source {
                &raw mut pg_sys::SnapshotAnyData
            } else {
                (*scan).xs_snapshot
            };
            prepare_inner(
                side.scan,
                (*scan).heapRelation,
                snapshot,
                (*scan).xs_want_itup || merging,
            );
            if !side.from_source {
                (*side.scan).ignore_killed_tuples = (*scan).ignore_killed_tuples;
            }
            compat::share_scan_instrumentation(side.scan, scan);
            side.pending = false;
            side.exhausted = false;
            side.item = Item::empty();
            as_wrapped!(
                (*side.scan).indexRelation,
                pg_call!(rescan(side.scan, keys, nkeys, orderbys, norderbys))
            );
        }
        if state.source.is_some()
            && !(*scan).xs_snapshot.is_null()
            && (*(*scan).xs_snapshot).snapshot_type == pg_sys::SnapshotType::SNAPSHOT_MVCC
        {
            // The source's part takes no predicate locks on its own pages:
            // a serializable reader locks the whole index instead, which
            // every insert into the local part checks.
            compat::predicate_lock_relation((*scan).indexRelation, (*scan).xs_snapshot);
        }
        state.marked.clear();
        pg_sys::MemoryContextReset(state.memory);
    }
}

/// Compares two btree index tuples in index order (per-column DESC and
/// NULLS FIRST options honoured).
///
/// # Safety
/// Both tuples belong to `index`, described by `desc`.
unsafe fn key_order(
    index: pg_sys::Relation,
    desc: pg_sys::TupleDesc,
    a: pg_sys::IndexTuple,
    b: pg_sys::IndexTuple,
) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    // SAFETY: guaranteed by the caller.
    unsafe {
        let natts = (*(*index).rd_index).indnkeyatts as usize;
        let mut va = [pg_sys::Datum::from(0); pg_sys::INDEX_MAX_KEYS as usize];
        let mut na = [false; pg_sys::INDEX_MAX_KEYS as usize];
        let mut vb = va;
        let mut nb = na;
        pg_sys::index_deform_tuple(a, desc, va.as_mut_ptr(), na.as_mut_ptr());
        pg_sys::index_deform_tuple(b, desc, vb.as_mut_ptr(), nb.as_mut_ptr());
        for i in 0..natts {
            let option = *(*index).rd_indoption.add(i) as u32;
            let descending = option & pg_sys::INDOPTION_DESC != 0;
            let nulls_first = option & pg_sys::INDOPTION_NULLS_FIRST != 0;
            let order = match (na[i], nb[i]) {
                (true, true) => Ordering::Equal,
                (true, false) if nulls_first => Ordering::Less,
                (true, false) => Ordering::Greater,
                (false, true) if nulls_first => Ordering::Greater,
                (false, true) => Ordering::Less,
                (false, false) => {
                    let compare = pg_sys::index_getprocinfo(index, (i + 1) as i16, BTORDER_PROC);
                    let collation = *(*index).rd_indcollation.add(i);
                    let result =
                        pg_sys::FunctionCall2Coll(compare, collation, va[i], vb[i]).value() as i32;
                    let order = result.cmp(&0);
                    if descending {
                        order.reverse()
                    } else {
                        order
                    }
                }
            };
            if order != Ordering::Equal {
                return order;
            }
        }
        Ordering::Equal
    }
}

/// nbtree.h's support function 1: three-way comparison.
const BTORDER_PROC: u16 = 1;

fn distance_order(a: &Item, b: &Item, count: usize) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    for i in 0..count {
        let order = match (a.distance_nulls[i], b.distance_nulls[i]) {
            (true, true) => Ordering::Equal,
            (true, false) => Ordering::Greater,
            (false, true) => Ordering::Less,
            (false, false) => a.distances[i].total_cmp(&b.distances[i]),
        };
        if order != Ordering::Equal {
            return order;
        }
    }
    Ordering::Equal
}

impl CowIndexScan {
    /// Makes sure `side` has a pending item unless it is exhausted.
    ///
    /// # Safety
    /// The scan has been rescanned.
    unsafe fn fill(&mut self, side: usize, direction: pg_sys::ScanDirection::Type, kill: bool) {
        // SAFETY: guaranteed by the caller; items are copied into the
        // scan's memory context.
        unsafe {
            let s = &mut self.sides[side];
            if s.pending || s.exhausted {
                return;
            }
            // Killed-item hints are the clone's idea of deadness: never for
            // the source's index, as heapam gives them for the index itself.
            (*s.scan).kill_prior_tuple = kill && !s.from_source;
            let get = self
                .routine
                .amgettuple
                .expect("amgettuple is only called when the AM has it");
            if !as_wrapped!((*s.scan).indexRelation, pg_call!(get(s.scan, direction))) {
                s.exhausted = true;
                return;
            }
            // The previous item was returned at the last call, and the
            // executor is done with it.
            s.item.free();
            let old = pg_sys::MemoryContextSwitchTo(self.memory);
            s.item = Item::take(s.scan, s.from_source, self.orderbys);
            pg_sys::MemoryContextSwitchTo(old);
            s.pending = true;
        }
    }

    /// The side whose pending item comes next.
    ///
    /// # Safety
    /// Pending items are valid.
    unsafe fn next_side(&self, index: pg_sys::Relation, forward: bool) -> Option<usize> {
        let pending: Vec<usize> = (0..self.sides.len())
            .filter(|&i| self.sides[i].pending)
            .collect();
        match pending.as_slice() {
            [] => None,
            [one] => Some(*one),
            _ => {
                let (a, b) = (&self.sides[0].item, &self.sides[1].item);
                let order = match self.combine {
                    // SAFETY: guaranteed by the caller.
                    Combine::KeyOrder => unsafe { key_order(index, a.itupdesc, a.itup, b.itup) },
                    Combine::DistanceOrder => distance_order(a, b, self.orderbys),
                    _ => std::cmp::Ordering::Less,
                };
                let order = if forward { order } else { order.reverse() };
                Some(if order == std::cmp::Ordering::Greater {
                    1
                } else {
                    0
                })
            }
        }
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn amgettuple(
    scan: pg_sys::IndexScanDesc,
    direction: pg_sys::ScanDirection::Type,
) -> bool {
    // SAFETY: a scan begun by ambeginscan and rescanned; the item returned
    // stays valid until the next call, as the outer scan's must.
    unsafe {
        let state = state(scan);
        let kill = (*scan).kill_prior_tuple;
        let forward = direction != pg_sys::ScanDirection::BackwardScanDirection;
        let chosen = if state.combine == Combine::Single || state.combine == Combine::Concatenate {
            let mut chosen = None;
            for side in 0..state.sides.len() {
                state.fill(side, direction, kill && side == state.last);
                if state.sides[side].pending {
                    chosen = Some(side);
                    break;
                }
            }
            chosen
        } else {
            for side in 0..state.sides.len() {
                state.fill(side, direction, kill && side == state.last);
            }
            state.next_side((*scan).indexRelation, forward)
        };
        let Some(side) = chosen else {
            return false;
        };
        state.last = side;
        let s = &mut state.sides[side];
        s.pending = false;
        let item = s.item;
        (*scan).xs_heaptid = item.tid;
        (*scan).xs_recheck = item.recheck;
        (*scan).xs_itup = item.itup;
        (*scan).xs_itupdesc = item.itupdesc;
        (*scan).xs_hitup = item.hitup;
        (*scan).xs_hitupdesc = item.hitupdesc;
        (*scan).xs_recheckorderby = item.recheck_order_by;
        for i in 0..state.orderbys.min(MAX_ORDER_BYS) {
            *state.distance_nulls.add(i) = item.distance_nulls[i];
            *state.distances.add(i) = pg_sys::Datum::from(item.distances[i].to_bits() as usize);
        }
        (*scan).xs_orderbyvals = state.distances;
        (*scan).xs_orderbynulls = state.distance_nulls;
        true
    }
}

/// The source's part fills a private bitmap with its TIDs, moved into the
/// source TID space page by page (lossy pages stay lossy); the local part
/// adds its own directly.
#[pg_guard]
unsafe extern "C-unwind" fn amgetbitmap(
    scan: pg_sys::IndexScanDesc,
    tbm: *mut pg_sys::TIDBitmap,
) -> i64 {
    // SAFETY: a scan begun by ambeginscan and rescanned; the private bitmap
    // and its iterator are freed before returning.
    unsafe {
        let state = state(scan);
        let get = state
            .routine
            .amgetbitmap
            .expect("amgetbitmap is only called when the AM has it");
        let mut found = 0;
        for side in &state.sides {
            if !side.from_source {
                found += as_wrapped!((*side.scan).indexRelation, pg_call!(get(side.scan, tbm)));
                continue;
            }
            let own = compat::tbm_create();
            found += as_wrapped!((*side.scan).indexRelation, pg_call!(get(side.scan, own)));
            let mut tids: Vec<pg_sys::ItemPointerData> = Vec::new();
            compat::for_each_bitmap_page(own, |page| {
                let block = page.block;
                let Some(offsets) = page.offsets else {
                    pg_sys::tbm_add_page(tbm, block + clone_view::SOURCE_BLOCK_BASE);
                    return;
                };
                tids.clear();
                tids.extend(
                    offsets
                        .iter()
                        .map(|&offset| clone_view::source_tid(block, offset)),
                );
                pg_sys::tbm_add_tuples(tbm, tids.as_mut_ptr(), tids.len() as i32, page.recheck);
            });
            pg_sys::tbm_free(own);
        }
        found
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn amendscan(scan: pg_sys::IndexScanDesc) {
    // SAFETY: a scan begun by ambeginscan; the parts' scans end before the
    // descriptor copy they read is freed.
    unsafe {
        let state = state(scan);
        let end = state.routine.amendscan.expect("every AM ends scans");
        for side in &state.sides {
            as_wrapped!((*side.scan).indexRelation, pg_call!(end(side.scan)));
        }
        if let Some(source) = state.source.take() {
            source.close();
        }
        pg_sys::MemoryContextDelete(state.memory);
        std::ptr::drop_in_place(state as *mut CowIndexScan);
        pg_sys::pfree((*scan).opaque);
        (*scan).opaque = std::ptr::null_mut();
    }
}

/// Marks every part still running, and remembers which items were found
/// but not yet returned: a restore brings them back.
#[pg_guard]
unsafe extern "C-unwind" fn ammarkpos(scan: pg_sys::IndexScanDesc) {
    // SAFETY: a scan begun by ambeginscan; only called when the wrapped AM marks.
    unsafe {
        let state = state(scan);
        let mark = state.routine.ammarkpos.expect("marking AM");
        let old = pg_sys::MemoryContextSwitchTo(state.memory);
        for (_, _, item) in state.marked.iter_mut() {
            item.free();
        }
        state.marked.clear();
        for side in &state.sides {
            if !side.exhausted {
                as_wrapped!((*side.scan).indexRelation, pg_call!(mark(side.scan)));
            }
            let item = if side.pending {
                side.item.duplicate()
            } else {
                Item::empty()
            };
            state.marked.push((side.pending, side.exhausted, item));
        }
        pg_sys::MemoryContextSwitchTo(old);
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn amrestrpos(scan: pg_sys::IndexScanDesc) {
    // SAFETY: as in ammarkpos.
    unsafe {
        let state = state(scan);
        let restore = state.routine.amrestrpos.expect("marking AM");
        let old = pg_sys::MemoryContextSwitchTo(state.memory);
        for (i, side) in state.sides.iter_mut().enumerate() {
            let Some((pending, exhausted, item)) = state.marked.get(i) else {
                continue;
            };
            side.exhausted = *exhausted;
            side.pending = *pending;
            if !*exhausted {
                as_wrapped!((*side.scan).indexRelation, pg_call!(restore(side.scan)));
            }
            if *pending {
                side.item.free();
                side.item = item.duplicate();
            }
        }
        pg_sys::MemoryContextSwitchTo(old);
    }
}

/// SP-GiST answers from its metapage cache, so ask the source's index.
#[pg_guard]
unsafe extern "C-unwind" fn amcanreturn(index: pg_sys::Relation, attno: std::ffi::c_int) -> bool {
    // SAFETY: PostgreSQL passes a valid, open index.
    unsafe {
        let Some(source) = SourceIndex::open(index) else {
            return match wrapped_routine(index).amcanreturn {
                Some(can_return) => as_wrapped!(index, pg_call!(can_return(index, attno))),
                None => false,
            };
        };
        let answer = match source.routine().amcanreturn {
            Some(can_return) => pg_call!(can_return(source.rel(), attno)),
            None => false,
        };
        source.close();
        answer
    }
}

/// The wrapped AM's estimate. For a shadowed index it is told the source
/// index's real size and marked hypothetical, so that GIN and BRIN do not
/// read statistics from the empty local file (they estimate from the size).
#[pg_guard]
#[allow(clippy::too_many_arguments)]
unsafe extern "C-unwind" fn amcostestimate(
    root: *mut pg_sys::PlannerInfo,
    path: *mut pg_sys::IndexPath,
    loop_count: f64,
    startup_cost: *mut pg_sys::Cost,
    total_cost: *mut pg_sys::Cost,
    selectivity: *mut pg_sys::Selectivity,
    correlation: *mut f64,
    pages: *mut f64,
) {
    // SAFETY: the planner passes a valid path whose indexinfo names a
    // wrapper index it has locked.
    unsafe {
        let info = (*path).indexinfo;
        let index = pg_sys::RelationIdGetRelation((*info).indexoid);
        let routine = wrapped_routine(index);
        let source = clone_view::current()
            .and_then(|view| view.source_locator(compat::relfilenode_of(index)));
        if let Some(locator) = source {
            (*info).pages = clone_view::source_block_count(locator);
        }
        pg_sys::RelationClose(index);
        let hypothetical = (*info).hypothetical;
        (*info).hypothetical = hypothetical || source.is_some();
        let estimate = routine.amcostestimate.expect("every AM estimates");
        pg_call!(estimate(
            root,
            path,
            loop_count,
            startup_cost,
            total_cost,
            selectivity,
            correlation,
            pages,
        ));
        (*info).hypothetical = hypothetical;
    }
}

/// The wrapped AM's routine with the wrapper's callbacks in place.
fn wrapper_routine(wrapped_am: pg_sys::Oid) -> pg_sys::Datum {
    // SAFETY: a built-in AM's handler returns a freshly palloc'd routine,
    // which we own and may edit before handing it to PostgreSQL.
    unsafe {
        let routine = pg_sys::GetIndexAmRoutineByAmId(wrapped_am, false);
        (*routine).ambuild = Some(ambuild);
        (*routine).ambuildempty = Some(ambuildempty);
        (*routine).aminsert = Some(aminsert);
        (*routine).ambulkdelete = Some(ambulkdelete);
        (*routine).amvacuumcleanup = Some(amvacuumcleanup);
        (*routine).ambeginscan = Some(ambeginscan);
        (*routine).amrescan = Some(amrescan);
        (*routine).amendscan = Some(amendscan);
        (*routine).amcostestimate = Some(amcostestimate);
        // Parallel index scans would share the wrapped AM's state across
        // workers; shadowed tables get no partial paths anyway.
        (*routine).amcanparallel = false;
        // A scan merging two parts keeps one found item per part, which a
        // change of direction would have to give back: scrollable cursors
        // over these indexes get a Material node instead.
        (*routine).amcanbackward = false;
        compat::keep_wrapper_routine_as_on_15(routine);
        if (*routine).amgettuple.is_some() {
            (*routine).amgettuple = Some(amgettuple);
        }
        if (*routine).amgetbitmap.is_some() {
            (*routine).amgetbitmap = Some(amgetbitmap);
        }
        if (*routine).ammarkpos.is_some() {
            (*routine).ammarkpos = Some(ammarkpos);
            (*routine).amrestrpos = Some(amrestrpos);
        }
        if (*routine).amcanreturn.is_some() {
            (*routine).amcanreturn = Some(amcanreturn);
        }
        pg_sys::Datum::from(routine)
    }
}

macro_rules! wrapper_handler {
    ($handler:ident, $finfo:ident, $am:expr) => {
        #[no_mangle]
        pub extern "C" fn $finfo() -> &'static pg_sys::Pg_finfo_record {
            static V1: pg_sys::Pg_finfo_record = pg_sys::Pg_finfo_record { api_version: 1 };
            &V1
        }

        #[pg_guard]
        #[no_mangle]
        pub extern "C-unwind" fn $handler(_fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
            wrapper_routine($am)
        }
    };
}

wrapper_handler!(
    cow_btree_handler,
    pg_finfo_cow_btree_handler,
    pg_sys::BTREE_AM_OID
);
wrapper_handler!(
    cow_hash_handler,
    pg_finfo_cow_hash_handler,
    pg_sys::HASH_AM_OID
);
wrapper_handler!(
    cow_gist_handler,
    pg_finfo_cow_gist_handler,
    pg_sys::GIST_AM_OID
);
wrapper_handler!(
    cow_gin_handler,
    pg_finfo_cow_gin_handler,
    pg_sys::GIN_AM_OID
);
wrapper_handler!(
    cow_spgist_handler,
    pg_finfo_cow_spgist_handler,
    pg_sys::SPGIST_AM_OID
);
wrapper_handler!(
    cow_brin_handler,
    pg_finfo_cow_brin_handler,
    pg_sys::BRIN_AM_OID
);

extension_sql!(
    r#"
CREATE FUNCTION cow.cow_btree_handler(internal) RETURNS index_am_handler
    LANGUAGE c STRICT AS 'MODULE_PATHNAME', 'cow_btree_handler';
CREATE FUNCTION cow.cow_hash_handler(internal) RETURNS index_am_handler
    LANGUAGE c STRICT AS 'MODULE_PATHNAME', 'cow_hash_handler';
CREATE FUNCTION cow.cow_gist_handler(internal) RETURNS index_am_handler
    LANGUAGE c STRICT AS 'MODULE_PATHNAME', 'cow_gist_handler';
CREATE FUNCTION cow.cow_gin_handler(internal) RETURNS index_am_handler
    LANGUAGE c STRICT AS 'MODULE_PATHNAME', 'cow_gin_handler';
CREATE FUNCTION cow.cow_spgist_handler(internal) RETURNS index_am_handler
    LANGUAGE c STRICT AS 'MODULE_PATHNAME', 'cow_spgist_handler';
CREATE FUNCTION cow.cow_brin_handler(internal) RETURNS index_am_handler
    LANGUAGE c STRICT AS 'MODULE_PATHNAME', 'cow_brin_handler';
CREATE ACCESS METHOD cow_btree TYPE INDEX HANDLER cow.cow_btree_handler;
CREATE ACCESS METHOD cow_hash TYPE INDEX HANDLER cow.cow_hash_handler;
CREATE ACCESS METHOD cow_gist TYPE INDEX HANDLER cow.cow_gist_handler;
CREATE ACCESS METHOD cow_gin TYPE INDEX HANDLER cow.cow_gin_handler;
CREATE ACCESS METHOD cow_spgist TYPE INDEX HANDLER cow.cow_spgist_handler;
CREATE ACCESS METHOD cow_brin TYPE INDEX HANDLER cow.cow_brin_handler;
"#,
    name = "cow_index_access_methods",
    requires = ["require_preloaded_at_create"],
);
