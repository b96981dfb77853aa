//! The source guard: a source database must not drop or rewrite storage a
//! live clone still reads.
//!
//! Every way PostgreSQL drops or rewrites a relation's storage (DROP of a
//! table, index, materialized view or schema, DROP OWNED, TRUNCATE, VACUUM
//! FULL, CLUSTER, REINDEX, rewriting ALTER TABLE, REFRESH MATERIALIZED VIEW,
//! SET TABLESPACE) ends the same way: the old files are scheduled for unlink
//! at commit. So one check at `PRE_COMMIT` covers them all: if the committing
//! transaction would unlink a file that a clone of this database shadows, it
//! fails with 2BP01 naming the clone. `DROP DATABASE` and `ALTER DATABASE ...
//! SET TABLESPACE` of a source are refused by the utility hook, as is
//! `REINDEX ... CONCURRENTLY` there (its early transactions already swap the
//! index in); the hook also forgets a clone whose own database is dropped.
//!
//! A clone being made holds `ShareUpdateExclusiveLock` on its source's
//! database object until it commits, and the commit check takes the same
//! lock: a drop either commits before the clone point is taken (and the
//! clone never sees the relation) or is checked against the new clone.

use std::ffi::CStr;

use pgrx::prelude::*;
use pgrx::{pg_sys, PgSqlErrorCode};

use crate::lifecycle::holder;
use crate::pg::error::CowError;
use crate::state::record::{self, CloneRecord};

/// `pg_upgrade` carries relation files and the catalog, but neither a
/// clone's witness nor its source's slot: a clone would come out of it
/// unpinned, and with the witness gone, unable to tell that its record is
/// missing. So a server started for an upgrade (binary-upgrade mode, as
/// pg_upgrade starts the old cluster, `--check` included) refuses to start
/// while a clone exists, before pg_upgrade has changed anything.
pub fn refuse_binary_upgrade_with_clones() {
    // SAFETY: a start-up flag, set before shared_preload_libraries is processed.
    if !unsafe { pg_sys::IsBinaryUpgrade } {
        return;
    }
    let clones: Vec<String> = match crate::state::witness::all() {
        Ok(found) => found
            .iter()
            .map(|(database, _)| database.to_string())
            .collect(),
        Err(e) => vec![format!("(unknown: base/ could not be listed: {e})")],
    };
    if clones.is_empty() {
        return;
    }
    CowError::new(
        PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
        "pg_upgrade cannot carry cowclone clones",
    )
    .detail(format!(
        "The databases with OIDs {} are clones; pg_upgrade would copy their catalogs but not their pins or witnesses, and their rows would be lost.",
        clones.join(", ")
    ))
    .hint("Start the old cluster normally, drop the clones (SELECT clone FROM cow.clones lists them), then run pg_upgrade again.")
    .fatal()
}

pub fn install() {
    // SAFETY: _PG_init runs once in the postmaster, single-threaded, before
    // any backend exists; backends inherit the callback and the hook.
    unsafe {
        pg_sys::RegisterXactCallback(Some(check_storage_at_commit), std::ptr::null_mut());
        pg_sys::CacheRegisterRelcacheCallback(
            Some(note_invalidated_relation),
            pg_sys::Datum::from(0),
        );
    }
}

thread_local! {
    /// Relations whose relation cache entries this backend invalidated in
    /// the running transaction (its own changes, at each command's end, and
    /// others' it received): the candidates for a storage swap.
    static INVALIDATED: std::cell::RefCell<Vec<pg_sys::Oid>> = const { std::cell::RefCell::new(Vec::new()) };
}

#[pg_guard]
unsafe extern "C-unwind" fn note_invalidated_relation(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
    if relid != pg_sys::InvalidOid {
        INVALIDATED.with(|i| i.borrow_mut().push(relid));
    }
}

/// Relations whose `pg_class` row this transaction changed, with their
/// relfilenode now.
fn relfilenodes_changed_here() -> Vec<(u32, u32)> {
    let mut candidates = INVALIDATED.with(|i| std::mem::take(&mut *i.borrow_mut()));
    // SAFETY: reads this backend's transaction state. Without an xid the
    // transaction wrote no pg_class row.
    if unsafe { pg_sys::GetTopTransactionIdIfAny() } == pg_sys::InvalidTransactionId {
        return Vec::new();
    }
    candidates.sort_unstable_by_key(|o| u32::from(*o));
    candidates.dedup();
    candidates
        .into_iter()
        .filter_map(|relid| {
            // SAFETY: a syscache lookup in the committing transaction; the
            // row is read before it is released.
            unsafe {
                let tuple = pg_sys::SearchSysCache1(
                    pg_sys::SysCacheIdentifier::RELOID as i32,
                    pg_sys::Datum::from(relid),
                );
                if tuple.is_null() {
                    return None;
                }
                let xmin = (*(*tuple).t_data).t_choice.t_heap.t_xmin;
                let form = &*pg_sys::heap_tuple_get_struct::<pg_sys::FormData_pg_class>(tuple);
                let relfilenode = u32::from(form.relfilenode);
                pg_sys::ReleaseSysCache(tuple);
                pg_sys::TransactionIdIsCurrentTransactionId(xmin)
                    .then_some((u32::from(relid), relfilenode))
            }
        })
        .collect()
}

/// Refuses a commit that gives a relation a clone reads another storage
/// while its own stays (what pg_repack's swap does): no file is dropped, so
/// the pending-delete check does not see it, but the relation would no
/// longer be where the clone reads it, and the old file would be dropped
/// later under another relation's name.
fn refuse_swapped_storage(this_database: pg_sys::Oid) {
    let changed = relfilenodes_changed_here();
    if changed.is_empty() {
        return;
    }
    let mut clones = Vec::new();
    let mut relations = Vec::new();
    for (clone, record) in clones_of(this_database) {
        let hits: Vec<String> = record
            .owners
            .iter()
            .filter(|(relfilenode, owner)| {
                changed
                    .iter()
                    .any(|(relid, now)| relid == owner && now != relfilenode && *now != 0)
            })
            .filter_map(|(relfilenode, _)| {
                record
                    .shadowed
                    .iter()
                    .find(|s| s.relfilenode == *relfilenode)
                    .map(|s| s.name.clone())
            })
            .collect();
        if !hits.is_empty() {
            clones.push(clone);
            relations.extend(hits);
        }
    }
    if clones.is_empty() {
        return;
    }
    relations.sort();
    relations.dedup();
    CowError::new(
        PgSqlErrorCode::ERRCODE_DEPENDENT_OBJECTS_STILL_EXIST,
        format!(
            "cannot give {} other storage because clone {} still reads it",
            list(&relations),
            list(&clones)
        ),
    )
    .detail("A clone reads its source's files as of its clone point; this transaction swaps a relation's files for others', as pg_repack does before dropping the old ones.")
    .hint(format!(
        "Materialize the clone first (SELECT cow.materialize('{}')), which makes it stop reading this database, or drop it.",
        clones[0]
    ))
    .raise()
}

pub(crate) fn database_name(oid: u32) -> Option<String> {
    // SAFETY: a syscache lookup inside a transaction; null when missing.
    let name = unsafe { pg_sys::get_database_name(pg_sys::Oid::from(oid)) };
    // SAFETY: a palloc'd NUL-terminated string when not null.
    (!name.is_null()).then(|| {
        unsafe { CStr::from_ptr(name) }
            .to_string_lossy()
            .into_owned()
    })
}

/// The live clones of a database, with their names.
fn clones_of(source: pg_sys::Oid) -> Vec<(String, CloneRecord)> {
    record::clones_of(source)
        .into_iter()
        .filter_map(|r| Some((database_name(r.clone)?, r)))
        .collect()
}

fn list(names: &[String]) -> String {
    names
        .iter()
        .map(|n| format!("\"{n}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Relfilenodes of this database that the committing transaction would unlink.
fn storage_dropped_at_commit() -> Vec<u32> {
    // SAFETY: reading a backend-global set once at connection start.
    let database = unsafe { pg_sys::MyDatabaseId };
    crate::pg::compat::storage_dropped_at_commit(database)
        .into_iter()
        .map(u32::from)
        .collect()
}

#[pg_guard]
unsafe extern "C-unwind" fn check_storage_at_commit(
    event: pg_sys::XactEvent::Type,
    _arg: *mut std::ffi::c_void,
) {
    if event == pg_sys::XactEvent::XACT_EVENT_COMMIT || event == pg_sys::XactEvent::XACT_EVENT_ABORT
    {
        INVALIDATED.with(|i| i.borrow_mut().clear());
        // SAFETY: backend-local state of this single-threaded backend.
        let dropped_clone_of = unsafe { (&raw mut WAKE_AT_END).replace(None) };
        if let Some(source) = dropped_clone_of {
            // The holder counts the clone until its record is gone: now.
            crate::pin::slot::wake_holder(source);
        }
        return;
    }
    if event != pg_sys::XactEvent::XACT_EVENT_PRE_COMMIT {
        return;
    }
    // SAFETY: MyDatabaseId is set for the life of a connected backend.
    let this_database = unsafe { pg_sys::MyDatabaseId };
    let dropped = storage_dropped_at_commit();
    if dropped.is_empty() {
        if this_database != pg_sys::InvalidOid {
            refuse_swapped_storage(this_database);
        }
        return;
    }
    record::lock_source(this_database);
    let mut clones = Vec::new();
    let mut relations = Vec::new();
    for (clone, record) in clones_of(this_database) {
        let hits: Vec<String> = record
            .shadowed
            .iter()
            .filter(|s| dropped.contains(&s.relfilenode))
            .map(|s| s.name.clone())
            .collect();
        if !hits.is_empty() {
            clones.push(clone);
            relations.extend(hits);
        }
    }
    if clones.is_empty() {
        refuse_swapped_storage(this_database);
        return;
    }
    relations.sort();
    relations.dedup();
    CowError::new(
        PgSqlErrorCode::ERRCODE_DEPENDENT_OBJECTS_STILL_EXIST,
        format!("cannot drop or rewrite the storage of {} because clone {} still reads it", list(&relations), list(&clones)),
    )
    .detail("A clone reads its source's files as of its clone point; this command would remove or replace them.")
    .hint(format!(
        "Materialize the clone first (SELECT cow.materialize('{}')), which makes it stop reading this database, or drop it.",
        clones[0]
    ))
    .raise()
}

fn refuse_if_source(database: pg_sys::Oid, what: &str) {
    if database == pg_sys::InvalidOid {
        return;
    }
    let clones: Vec<String> = clones_of(database)
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    if clones.is_empty() {
        return;
    }
    let source = database_name(u32::from(database)).unwrap_or_default();
    CowError::new(
        PgSqlErrorCode::ERRCODE_DEPENDENT_OBJECTS_STILL_EXIST,
        format!(
            "cannot {what} database \"{source}\" because clone {} still reads it",
            list(&clones)
        ),
    )
    .detail("A clone reads its source's files as of its clone point.")
    .hint(if what == "drop" {
        format!(
            "SELECT cow.drop_database('{source}', force => true) materializes every clone first and then drops it; or materialize (cow.materialize) or drop each clone."
        )
    } else {
        format!(
            "Materialize the clone first (SELECT cow.materialize('{}')), which makes it stop reading this database, or drop it.",
            clones[0]
        )
    })
    .raise()
}

fn option_named(options: *mut pg_sys::List, wanted: &str) -> bool {
    if options.is_null() {
        return false;
    }
    // SAFETY: a parser-built, non-empty list of DefElem nodes.
    unsafe {
        (0..(*options).length.max(0) as usize).any(|i| {
            let def = (*(*options).elements.add(i)).ptr_value as *mut pg_sys::DefElem;
            CStr::from_ptr((*def).defname).to_str() == Ok(wanted)
        })
    }
}

/// The string value of a statement option (`template = name`), if given.
fn option_value(options: *mut pg_sys::List, wanted: &str) -> Option<std::ffi::CString> {
    if options.is_null() {
        return None;
    }
    // SAFETY: a parser-built, non-empty list of DefElem nodes; defGetString
    // converts the argument (a name or a string) to a palloc'd string.
    unsafe {
        (0..(*options).length.max(0) as usize).find_map(|i| {
            let def = (*(*options).elements.add(i)).ptr_value as *mut pg_sys::DefElem;
            if CStr::from_ptr((*def).defname).to_str() != Ok(wanted) || (*def).arg.is_null() {
                return None;
            }
            Some(CStr::from_ptr(pg_sys::defGetString(def)).to_owned())
        })
    }
}

/// The clone a DROP DATABASE in this backend is dropping, and its source:
/// its record goes with the database, so it is read before.
static mut DROPPING_CLONE: Option<(pg_sys::Oid, pg_sys::Oid)> = None;
/// The source whose holder must recount once that DROP DATABASE has ended.
static mut WAKE_AT_END: Option<pg_sys::Oid> = None;

/// After a DROP DATABASE: forgets the clone it dropped, if it was one.
#[pg_guard]
pub extern "C-unwind" fn forget_dropped_clone(database: pg_sys::Oid) {
    // SAFETY: backend-local state of this single-threaded backend.
    let dropping = unsafe { (&raw mut DROPPING_CLONE).replace(None) };
    if let Some((clone, source)) = dropping.filter(|(clone, _)| *clone == database) {
        record::forget_clone(clone, source);
        // SAFETY: as above.
        unsafe { WAKE_AT_END = Some(source) };
    }
}

/// A database with a record, or with a witness (its record lost), is a clone.
fn is_clone(database: pg_sys::Oid) -> bool {
    record::source_of(database).is_some() || crate::state::witness::exists(database)
}

/// A clone's directory holds its witness, which must stay in `base/`.
fn refuse_moving_a_clone(database: pg_sys::Oid) {
    if database == pg_sys::InvalidOid || !is_clone(database) {
        return;
    }
    let name = database_name(database.into()).unwrap_or_default();
    CowError::new(
        PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
        format!("cannot move clone \"{name}\" to another tablespace"),
    )
    .detail("cowclone keeps clones in tablespace pg_default.")
    .raise();
}

/// Refuses what must not run in or on a source; returns the database a
/// DROP DATABASE drops (InvalidOid otherwise).
#[pg_guard]
pub unsafe extern "C-unwind" fn check_utility(pstmt: *mut pg_sys::PlannedStmt) -> pg_sys::Oid {
    // SAFETY: PostgreSQL passes a valid planned utility statement.
    let dropped_database = unsafe {
        let node = (*pstmt).utilityStmt;
        match (*node).type_ {
            // A file copy of a clone would have its catalog and empty local
            // files but no clone record: its shadowed tables could not be read.
            pg_sys::NodeTag::T_CreatedbStmt => {
                let stmt = node as *mut pg_sys::CreatedbStmt;
                if let Some(template) = option_value((*stmt).options, "template") {
                    let oid = pg_sys::get_database_oid(template.as_ptr(), true);
                    if oid != pg_sys::InvalidOid && is_clone(oid) {
                        let name = template.to_string_lossy();
                        CowError::new(
                            PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
                            format!("cannot use clone \"{name}\" as a template"),
                        )
                        .detail("A clone's tables still read its source's files; a file copy of the clone would not know where.")
                        .hint(format!(
                            "Clone its source with cow.clone() instead, or drop \"{name}\" and clone again."
                        ))
                        .raise();
                    }
                    holder::step_aside(oid);
                }
                None
            }
            pg_sys::NodeTag::T_RenameStmt => {
                let stmt = node as *mut pg_sys::RenameStmt;
                if (*stmt).renameType == pg_sys::ObjectType::OBJECT_DATABASE {
                    holder::step_aside(pg_sys::get_database_oid((*stmt).subname, true));
                }
                None
            }
            pg_sys::NodeTag::T_DropdbStmt => {
                let stmt = node as *mut pg_sys::DropdbStmt;
                let oid = pg_sys::get_database_oid((*stmt).dbname, true);
                refuse_if_source(oid, "drop");
                holder::step_aside(oid);
                DROPPING_CLONE = (oid != pg_sys::InvalidOid)
                    .then(|| record::source_of(oid))
                    .flatten()
                    .map(|source| (oid, source));
                Some(oid)
            }
            pg_sys::NodeTag::T_AlterDatabaseStmt => {
                let stmt = node as *mut pg_sys::AlterDatabaseStmt;
                if option_named((*stmt).options, "tablespace") {
                    let oid = pg_sys::get_database_oid((*stmt).dbname, true);
                    refuse_if_source(oid, "move");
                    refuse_moving_a_clone(oid);
                }
                None
            }
            // Its first transactions swap in the new index; refusing only the
            // final drop of the old one would leave it behind as an invalid
            // index under another name. Refuse it whole.
            pg_sys::NodeTag::T_ReindexStmt => {
                let stmt = node as *mut pg_sys::ReindexStmt;
                if option_named((*stmt).params, "concurrently") {
                    refuse_if_source(pg_sys::MyDatabaseId, "REINDEX CONCURRENTLY in");
                }
                None
            }
            _ => None,
        }
    };
    dropped_database.unwrap_or(pg_sys::InvalidOid)
}
