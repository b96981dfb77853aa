//! Hooks that keep PostgreSQL's generic heap machinery away from the parts
//! of a shadowed table it cannot know about.
//!
//! - Planner: no partial (parallel) paths for shadowed tables. Parallel
//!   scans would split the table through heapam's shared scan state, which
//!   knows nothing of the source part. A worker may still scan a shadowed
//!   table whole (the inner side of a parallel join, say): that is correct.
//! - Executor and ANALYZE: no read-ahead. PostgreSQL prefetches through the
//!   relation's own file; for a shadowed table that is the clone's local
//!   file, which has none of the source's blocks, and md.c refuses to
//!   prefetch past a missing segment ("previous segment is only 0 blocks").
//!   (The ANALYZE part, like the translation of `CREATE INDEX ... USING
//!   cow_btree`, runs from the utility hook in `hooks`.)

use pgrx::pg_sys;
use pgrx::prelude::*;

use crate::pg::hooks;
use crate::read::clone_view;
use crate::read::tableam::{is_cow_relation, is_shadowed};

static mut PREVIOUS_PATHLIST: pg_sys::set_rel_pathlist_hook_type = None;
static mut PREVIOUS_EXECUTOR_START: pg_sys::ExecutorStart_hook_type = None;
static mut PREVIOUS_EXECUTOR_END: pg_sys::ExecutorEnd_hook_type = None;

/// Installed once, while the postmaster preloads the library.
pub fn install() {
    // SAFETY: runs once in the postmaster before any backend exists; hooks
    // are plain globals chained by saving the previous value.
    unsafe {
        PREVIOUS_PATHLIST = pg_sys::set_rel_pathlist_hook;
        pg_sys::set_rel_pathlist_hook = Some(without_partial_paths);
        PREVIOUS_EXECUTOR_START = pg_sys::ExecutorStart_hook;
        pg_sys::ExecutorStart_hook = Some(executor_start);
        PREVIOUS_EXECUTOR_END = pg_sys::ExecutorEnd_hook;
        pg_sys::ExecutorEnd_hook = Some(executor_end);
    }
}

/// No `#[pg_guard]`: see `hooks`.
#[allow(ffi_unwind_calls)]
unsafe extern "C-unwind" fn without_partial_paths(
    root: *mut pg_sys::PlannerInfo,
    rel: *mut pg_sys::RelOptInfo,
    rti: pg_sys::Index,
    rte: *mut pg_sys::RangeTblEntry,
) {
    // SAFETY: the planner's arguments go unchanged to the previous hook,
    // which reports errors by longjmp; this frame holds plain values only.
    unsafe {
        if let Some(previous) = PREVIOUS_PATHLIST {
            previous(root, rel, rti, rte);
        }
        drop_partial_paths(rel, rte);
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn drop_partial_paths(
    rel: *mut pg_sys::RelOptInfo,
    rte: *mut pg_sys::RangeTblEntry,
) {
    // SAFETY: the planner passes valid structures and has already locked
    // the relation, so opening it without a lock is safe.
    unsafe {
        if (*rel).partial_pathlist.is_null()
            || (*rte).rtekind != pg_sys::RTEKind::RTE_RELATION
            || clone_view::current().is_none()
        {
            return;
        }
        let relation = pg_sys::RelationIdGetRelation((*rte).relid);
        if relation.is_null() {
            return;
        }
        if is_cow_relation(relation) && is_shadowed(relation) {
            (*rel).partial_pathlist = std::ptr::null_mut();
        }
        pg_sys::RelationClose(relation);
    }
}

/// No `#[pg_guard]`: see `hooks`.
unsafe extern "C-unwind" fn executor_start(query: *mut pg_sys::QueryDesc, eflags: std::ffi::c_int) {
    // SAFETY: a valid query about to start.
    unsafe { before_executor_start(query) };
    // SAFETY: the arguments go unchanged to the next hook or the standard
    // executor start; this frame holds plain values only.
    unsafe { hooks::pass_on_executor_start(PREVIOUS_EXECUTOR_START, query, eflags) };
    // SAFETY: the executor has just built the query's plan state.
    unsafe { after_executor_start(query) };
}

/// No `#[pg_guard]`: see `hooks`.
unsafe extern "C-unwind" fn executor_end(query: *mut pg_sys::QueryDesc) {
    // SAFETY: the argument goes unchanged to the next hook or the standard
    // executor end; this frame holds plain values only.
    unsafe { hooks::pass_on_executor_end(PREVIOUS_EXECUTOR_END, query) };
    // SAFETY: only the query's address is compared.
    unsafe { after_executor_end(query) };
}

#[pg_guard]
unsafe extern "C-unwind" fn after_executor_end(query: *mut pg_sys::QueryDesc) {
    if DISGUISING_QUERY.with(|q| q.get()) == Some(query as usize) {
        undisguise();
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn before_executor_start(query: *mut pg_sys::QueryDesc) {
    if crate::pg::compat::ARBITERS_MUST_BE_BTREE_BY_OID && clone_view::current().is_some() {
        // SAFETY: a planned statement whose relations the executor has locked.
        let disguised = unsafe { btree_for_on_conflict((*query).plannedstmt) };
        if disguised {
            DISGUISING_QUERY.with(|q| {
                if q.get().is_none() {
                    q.set(Some(query as usize));
                }
            });
        }
    }
}

/// `INSERT ... ON CONFLICT` insists that its unique indexes are btree
/// (`BuildSpeculativeIndexInfo` checks the descriptor's access method, up
/// to PostgreSQL 17). A `cow_btree` index is a btree in all but name, so
/// the cached descriptors of the target's unique indexes (and its
/// partitions') are given btree's name for the statement; the wrapper's
/// own callbacks, reached through the descriptor's routine, are unaffected.
/// The planner asks a "btree" for its tree height, read from the clone's
/// local part, so that part is built first (empty) where it is missing; and
/// the descriptors get their own name back when the statement ends, or its
/// (sub)transaction aborts, so later statements plan with the wrapper.
///
/// # Safety
/// `stmt` is a valid planned statement whose relations are locked.
unsafe fn btree_for_on_conflict(stmt: *mut pg_sys::PlannedStmt) -> bool {
    let mut disguised = false;
    // SAFETY: guaranteed by the caller; relations are opened without new
    // locks (the executor holds them) and closed again.
    unsafe {
        let plan = (*stmt).planTree;
        if plan.is_null() || (*plan).type_ != pg_sys::NodeTag::T_ModifyTable {
            return false;
        }
        let modify = plan as *mut pg_sys::ModifyTable;
        if (*modify).onConflictAction == pg_sys::OnConflictAction::ONCONFLICT_NONE {
            return false;
        }
        each_list_int((*modify).resultRelations, |rt_index| {
            let entry =
                pg_sys::list_nth((*stmt).rtable, rt_index - 1) as *mut pg_sys::RangeTblEntry;
            let tables = crate::pg::compat::table_and_inheritors((*entry).relid);
            each_list_oid(tables, |table| {
                let relation = pg_sys::RelationIdGetRelation(table);
                if relation.is_null() {
                    return;
                }
                for index in crate::pg::relation::index_oids(relation) {
                    let index = pg_sys::RelationIdGetRelation(index);
                    if index.is_null() {
                        continue;
                    }
                    let form = (*index).rd_rel;
                    if crate::read::indexam::wraps((*form).relam) == Some(pg_sys::BTREE_AM_OID) {
                        crate::read::indexam::ensure_local_part_if_shadowed(index, relation);
                        (*form).relam = pg_sys::BTREE_AM_OID;
                        disguised_as_btree((*index).rd_id);
                        disguised = true;
                    }
                    pg_sys::RelationClose(index);
                }
                pg_sys::RelationClose(relation);
            });
        });
    }
    disguised
}

thread_local! {
    /// Wrapper indexes whose cached descriptor says btree for the running
    /// ON CONFLICT statement.
    static DISGUISED: std::cell::RefCell<Vec<pg_sys::Oid>> =
        const { std::cell::RefCell::new(Vec::new()) };
    /// The outermost running statement that disguised them (a statement
    /// run by one of its triggers must not undo it early).
    static DISGUISING_QUERY: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
}

fn disguised_as_btree(index: pg_sys::Oid) {
    static CALLBACKS: std::sync::Once = std::sync::Once::new();
    CALLBACKS.call_once(|| {
        // SAFETY: registered once per backend; the callbacks live for the process.
        unsafe {
            pg_sys::RegisterXactCallback(Some(undisguise_at_transaction_end), std::ptr::null_mut());
            pg_sys::RegisterSubXactCallback(
                Some(undisguise_at_subtransaction_abort),
                std::ptr::null_mut(),
            );
        }
    });
    DISGUISED.with(|d| {
        let mut d = d.borrow_mut();
        if !d.contains(&index) {
            d.push(index);
        }
    });
}

/// Gives the disguised descriptors their own access method back by
/// invalidating their relcache entries in this backend: an open index is
/// reloaded from pg_class (at once, or at its next use outside a valid
/// transaction), a closed one is dropped from the cache. No catalog access
/// here, so it is safe while a transaction aborts.
fn undisguise() {
    DISGUISING_QUERY.with(|q| q.set(None));
    let disguised = DISGUISED.with(|d| std::mem::take(&mut *d.borrow_mut()));
    for index in disguised {
        // SAFETY: a relcache invalidation message for one relation of this
        // database, processed locally as if another backend had sent it.
        unsafe {
            let mut message: pg_sys::SharedInvalidationMessage = std::mem::zeroed();
            message.rc = pg_sys::SharedInvalRelcacheMsg {
                id: SHARED_INVAL_RELCACHE_ID,
                dbId: pg_sys::MyDatabaseId,
                relId: index,
            };
            pg_sys::LocalExecuteInvalidationMessage(&mut message);
        }
    }
}

/// `SHAREDINVALRELCACHE_ID` (sinval.h), the same from 15 to 18.
const SHARED_INVAL_RELCACHE_ID: i8 = -2;

#[pg_guard]
unsafe extern "C-unwind" fn undisguise_at_transaction_end(
    _event: pg_sys::XactEvent::Type,
    _arg: *mut std::ffi::c_void,
) {
    undisguise();
}

#[pg_guard]
unsafe extern "C-unwind" fn undisguise_at_subtransaction_abort(
    event: pg_sys::SubXactEvent::Type,
    _my_subid: pg_sys::SubTransactionId,
    _parent_subid: pg_sys::SubTransactionId,
    _arg: *mut std::ffi::c_void,
) {
    if event == pg_sys::SubXactEvent::SUBXACT_EVENT_ABORT_SUB {
        undisguise();
    }
}

/// # Safety
/// `list` is an integer List or null.
unsafe fn each_list_int(list: *mut pg_sys::List, mut each: impl FnMut(i32)) {
    if list.is_null() {
        return;
    }
    // SAFETY: guaranteed by the caller.
    unsafe {
        for i in 0..(*list).length.max(0) as usize {
            each((*(*list).elements.add(i)).int_value);
        }
    }
}

/// # Safety
/// `list` is an OID List or null.
unsafe fn each_list_oid(list: *mut pg_sys::List, mut each: impl FnMut(pg_sys::Oid)) {
    if list.is_null() {
        return;
    }
    // SAFETY: guaranteed by the caller.
    unsafe {
        for i in 0..(*list).length.max(0) as usize {
            each((*(*list).elements.add(i)).oid_value);
        }
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn after_executor_start(query: *mut pg_sys::QueryDesc) {
    if clone_view::current().is_some() {
        // SAFETY: a started query's plan state tree.
        unsafe { no_bitmap_prefetch((*query).planstate) };
    }
}

/// Turns off prefetching in every bitmap heap scan of a shadowed table.
///
/// # Safety
/// `node` must be null or a valid plan state tree.
unsafe fn no_bitmap_prefetch(node: *mut pg_sys::PlanState) {
    if node.is_null() {
        return;
    }
    // SAFETY: guaranteed by the caller; node tags say which struct each is.
    unsafe {
        match (*node).type_ {
            pg_sys::NodeTag::T_BitmapHeapScanState => {
                let scan = node as *mut pg_sys::BitmapHeapScanState;
                let relation = (*scan).ss.ss_currentRelation;
                if !relation.is_null() && is_cow_relation(relation) && is_shadowed(relation) {
                    crate::pg::compat::no_bitmap_prefetch(scan);
                }
            }
            pg_sys::NodeTag::T_AppendState => {
                let append = node as *mut pg_sys::AppendState;
                for i in 0..(*append).as_nplans.max(0) as usize {
                    no_bitmap_prefetch(*(*append).appendplans.add(i));
                }
            }
            pg_sys::NodeTag::T_MergeAppendState => {
                let merge = node as *mut pg_sys::MergeAppendState;
                for i in 0..(*merge).ms_nplans.max(0) as usize {
                    no_bitmap_prefetch(*(*merge).mergeplans.add(i));
                }
            }
            pg_sys::NodeTag::T_SubqueryScanState => {
                no_bitmap_prefetch((*(node as *mut pg_sys::SubqueryScanState)).subplan);
            }
            _ => {}
        }
        no_bitmap_prefetch((*node).lefttree);
        no_bitmap_prefetch((*node).righttree);
        for list in [(*node).initPlan, (*node).subPlan] {
            for_each_pointer(list, |subplan| {
                no_bitmap_prefetch((*(subplan as *mut pg_sys::SubPlanState)).planstate)
            });
        }
    }
}

/// # Safety
/// `list` must be null (empty) or a valid pointer list.
unsafe fn for_each_pointer(list: *mut pg_sys::List, mut each: impl FnMut(*mut std::ffi::c_void)) {
    if list.is_null() {
        return;
    }
    // SAFETY: guaranteed by the caller; a List holds `length` cells.
    unsafe {
        for i in 0..(*list).length.max(0) as usize {
            each((*(*list).elements.add(i)).ptr_value);
        }
    }
}

const READ_AHEAD: &std::ffi::CStr = c"maintenance_io_concurrency";

/// `CREATE INDEX ... USING cow_btree` (what `pg_dump` writes for a clone's
/// indexes) creates a plain btree index, and so on for each wrapper: the
/// wrappers only mean something on storage a clone shadows, which only
/// `cow.clone` sets up, and they have no operator classes of their own.
#[pg_guard]
pub unsafe extern "C-unwind" fn with_wrapped_index_access_method(
    call: hooks::UtilityCall,
) -> hooks::UtilityCall {
    let mut call = call;
    // SAFETY: a valid planned utility statement; it is copied before being
    // changed when the caller's tree is read-only.
    unsafe {
        let node = (*call.pstmt).utilityStmt;
        if node.is_null() || (*node).type_ != pg_sys::NodeTag::T_IndexStmt {
            return call;
        }
        let method = (*(node as *mut pg_sys::IndexStmt)).accessMethod;
        if method.is_null() {
            return call;
        }
        let Some(wrapped) = std::ffi::CStr::from_ptr(method)
            .to_str()
            .ok()
            .and_then(|name| {
                crate::read::indexam::WRAPPED
                    .iter()
                    .find(|(w, _, _)| *w == name)
            })
            .map(|(_, _, wrapped)| *wrapped)
        else {
            return call;
        };
        if call.read_only_tree {
            call.pstmt = pg_sys::copyObjectImpl(call.pstmt.cast()) as *mut pg_sys::PlannedStmt;
            call.read_only_tree = false;
        }
        let stmt = (*call.pstmt).utilityStmt as *mut pg_sys::IndexStmt;
        let name = std::ffi::CString::new(wrapped).expect("no NUL");
        (*stmt).accessMethod = pg_sys::pstrdup(name.as_ptr());
        call
    }
}

/// A setting a utility statement in a clone runs with, to put back after.
#[repr(C)]
pub struct Deferred {
    name: *const std::ffi::c_char,
    previous: *mut std::ffi::c_char,
}

/// Statements in a clone that must run with a setting changed, returning
/// what to put back (`restore_setting`), or a null name:
///
/// * ANALYZE (alone or with VACUUM): maintenance_io_concurrency = 0, which
///   turns read-ahead off (it would read ahead in the empty local file);
/// * CREATE INDEX and REINDEX: max_parallel_maintenance_workers = 0, as a
///   shadowed table's source rows are read by the leader alone.
///
/// It is a session-level SET: if the statement fails, transaction abort
/// undoes it (an ANALYZE of several tables commits between them, so a
/// failure after the first leaves the session at 0, which only costs
/// read-ahead).
#[pg_guard]
pub unsafe extern "C-unwind" fn before_utility(pstmt: *mut pg_sys::PlannedStmt) -> Deferred {
    let none = Deferred {
        name: std::ptr::null(),
        previous: std::ptr::null_mut(),
    };
    // SAFETY: PostgreSQL passes a valid planned utility statement.
    let name = unsafe {
        let node = (*pstmt).utilityStmt;
        if node.is_null() {
            return none;
        }
        match (*node).type_ {
            pg_sys::NodeTag::T_VacuumStmt => READ_AHEAD,
            pg_sys::NodeTag::T_IndexStmt | pg_sys::NodeTag::T_ReindexStmt => PARALLEL_BUILD,
            _ => return none,
        }
    };
    if clone_view::current().is_none() {
        return none;
    }
    // SAFETY: reading a GUC by name returns a string owned by the GUC
    // machinery, copied with pstrdup before it can change.
    unsafe {
        let previous = pg_sys::pstrdup(pg_sys::GetConfigOption(name.as_ptr(), false, false));
        set_setting(name.as_ptr(), c"0".as_ptr().cast_mut());
        Deferred {
            name: name.as_ptr(),
            previous,
        }
    }
}

const PARALLEL_BUILD: &std::ffi::CStr = c"max_parallel_maintenance_workers";

#[pg_guard]
pub unsafe extern "C-unwind" fn restore_setting(deferred: Deferred) {
    if !deferred.name.is_null() {
        // SAFETY: a name and value before_utility saved.
        unsafe { set_setting(deferred.name, deferred.previous) };
    }
}

/// # Safety
/// A valid setting name and value.
unsafe fn set_setting(name: *const std::ffi::c_char, value: *mut std::ffi::c_char) {
    // SAFETY: set as a session-level SET.
    unsafe {
        pg_sys::set_config_option(
            name,
            value,
            pg_sys::GucContext::PGC_USERSET,
            pg_sys::GucSource::PGC_S_SESSION,
            pg_sys::GucAction::GUC_ACTION_SET,
            true,
            0,
            false,
        );
    }
}
