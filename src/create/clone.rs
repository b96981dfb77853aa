//! `cow.clone(source, target)`: creating a clone.
//!
//! Everything happens in the caller's single transaction, so the clone's
//! `pg_database` row and its record, and with them the clone, become
//! visible only when it is complete. What a rollback cannot undo, the files
//! of the new database (its witness among them), is removed by an abort
//! callback registered here.

use std::collections::HashMap;
use std::ffi::CString;
use std::time::Instant;

use pgrx::{pg_sys, PgSqlErrorCode};

use crate::create::catalog_copy::{self, AccessMethodSwitch};
use crate::create::nested;
use crate::create::point::{self, PointRequest};
use crate::create::source::{SourceDatabase, SourceRelation};
use crate::pg::compat::{self, DatabaseLocale};
use crate::pg::error::CowError;
use crate::pg::failpoint;
use crate::pg::preload;
use crate::pin::exact;
use crate::pin::slot;
use crate::pin::snapshot::{self, PinTaken, PointSnapshot};
use crate::read::indexam;
use crate::state::record::{self, CloneRecord, ShadowedStorage};
use crate::state::wal;

const NAMEDATALEN: usize = 64;
/// pg_db_role_setting (not in pgrx's bindings).
const DB_ROLE_SETTING_RELATION_ID: pg_sys::Oid = pg_sys::Oid::from_u32(2964);

/// What `cow.clone` reports.
pub struct CloneOutcome {
    pub clone_oid: u32,
    /// The database whose files the clone reads: for a clone of a clone,
    /// the root of the chain, whose pin holder serves it.
    pub source_oid: pg_sys::Oid,
    pub source_name: String,
    pub clone_point_lsn: String,
    pub clone_point_time: i64,
    pub catalog_relations: i64,
    pub shadowed_relations: i64,
    pub elapsed_ms: f64,
}

pub(super) struct SourceInfo {
    tablespace: pg_sys::Oid,
    frozen_xid: pg_sys::TransactionId,
    min_multi: pg_sys::MultiXactId,
    pub(super) locale: DatabaseLocale,
    has_login_event_triggers: bool,
}

fn validate_target_name(target: &str) {
    if target.is_empty() {
        CowError::new(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "target database name must not be empty",
        )
        .raise();
    }
    if target.len() >= NAMEDATALEN || target.contains('\0') {
        CowError::new(
            PgSqlErrorCode::ERRCODE_NAME_TOO_LONG,
            format!("target database name \"{target}\" is too long"),
        )
        .detail(format!(
            "Database names have at most {} bytes.",
            NAMEDATALEN - 1
        ))
        .raise();
    }
}

pub fn database_oid(name: &str) -> pg_sys::Oid {
    let Ok(c_name) = CString::new(name) else {
        return pg_sys::InvalidOid;
    };
    // SAFETY: a catalog lookup by name inside a transaction.
    unsafe { pg_sys::get_database_oid(c_name.as_ptr(), true) }
}

/// Serializes clones to the same target name until commit, cluster-wide. Two
/// racing clones would otherwise both pass the existence check and the loser
/// would fail inside createdb with a unique violation instead of 42P04; now
/// it waits, then sees the winner's database.
fn lock_target_name(target: &str) {
    // A lock tag no catalog uses: (class "cowclone clone target", hash of the name).
    const TARGET_NAME_LOCK_CLASS: pg_sys::Oid = pg_sys::Oid::from_u32(0x636f_7763);
    let hash = target.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ b as u32).wrapping_mul(0x0100_0193)
    });
    // SAFETY: a lock on a shared pseudo-object, released at transaction end;
    // acquiring it also processes invalidations, so the existence check that
    // follows sees a database the winner committed.
    unsafe {
        pg_sys::LockSharedObject(
            TARGET_NAME_LOCK_CLASS,
            pg_sys::Oid::from_u32(hash),
            0,
            pg_sys::ExclusiveLock as i32,
        )
    };
}

/// Who may clone follows PostgreSQL's rule for `CREATE DATABASE ... TEMPLATE`
/// (createdb in dbcommands.c): a superuser; or a role with CREATEDB that has
/// the privileges of the source's owner, or any role with CREATEDB when the
/// source is marked `datistemplate`. A clone pins its source and makes the
/// source guard refuse the owner's TRUNCATE, VACUUM FULL and DROP DATABASE,
/// so CONNECT alone must not be enough.
fn check_privileges(source: pg_sys::Oid, source_name: &str) {
    let (owner, is_template) = with_database_row(source, source_name, |_, form| {
        (form.datdba, form.datistemplate)
    });
    // SAFETY: plain privilege checks of the current user inside a transaction.
    let allowed = unsafe {
        pg_sys::superuser()
            || (pg_sys::have_createdb_privilege()
                && (is_template || pg_sys::has_privs_of_role(pg_sys::GetUserId(), owner)))
    };
    if !allowed {
        // SAFETY: a syscache lookup; null (no error) for a dropped role.
        let owner_name = unsafe { pg_sys::GetUserNameFromId(owner, true) };
        let owner_name = if owner_name.is_null() {
            format!("{}", u32::from(owner))
        } else {
            // SAFETY: a palloc'd NUL-terminated name.
            unsafe { std::ffi::CStr::from_ptr(owner_name) }
                .to_string_lossy()
                .into_owned()
        };
        CowError::new(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("permission denied to clone database \"{source_name}\""),
        )
        .detail("Cloning follows the rule of CREATE DATABASE ... TEMPLATE: it requires superuser, or the CREATEDB attribute plus the privileges of the role that owns the source, or the CREATEDB attribute when the source is a template (datistemplate).")
        .hint(format!("Database \"{source_name}\" is owned by role \"{owner_name}\": a member of that role with CREATEDB may clone it, or its owner can mark it with ALTER DATABASE ... IS_TEMPLATE true."))
        .raise();
    }
}

/// Runs `read` on a database's `pg_database` row (3D000 if there is none).
pub fn with_database_row<R>(
    oid: pg_sys::Oid,
    name: &str,
    read: impl FnOnce(pg_sys::HeapTuple, &pg_sys::FormData_pg_database) -> R,
) -> R {
    // SAFETY: syscache lookup and release inside a transaction; the form is
    // read before the tuple is released.
    unsafe {
        let tuple = pg_sys::SearchSysCache1(
            pg_sys::SysCacheIdentifier::DATABASEOID as i32,
            pg_sys::Datum::from(oid),
        );
        if tuple.is_null() {
            CowError::new(
                PgSqlErrorCode::ERRCODE_INVALID_CATALOG_NAME,
                format!("database \"{name}\" does not exist"),
            )
            .raise();
        }
        let form = &*pg_sys::heap_tuple_get_struct::<pg_sys::FormData_pg_database>(tuple);
        let result = read(tuple, form);
        pg_sys::ReleaseSysCache(tuple);
        result
    }
}

/// Reads what the clone needs of the source's `pg_database` row.
fn source_info(oid: pg_sys::Oid, name: &str) -> SourceInfo {
    with_database_row(oid, name, |tuple, form| SourceInfo {
        tablespace: form.dattablespace,
        frozen_xid: form.datfrozenxid,
        min_multi: form.datminmxid,
        // SAFETY: the row's tuple, valid while `read` runs.
        locale: unsafe { compat::database_locale(tuple) },
        has_login_event_triggers: compat::has_login_event_triggers(form),
    })
}

/// The cowclone access methods as OIDs of the source's catalog, keyed by
/// the AM each replaces. Refuses a source without the extension.
fn access_method_switch(
    source: &SourceDatabase,
    relations: &[SourceRelation],
    snapshot: pg_sys::Snapshot,
    source_name: &str,
) -> AccessMethodSwitch {
    let not_installed = || {
        CowError::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("extension cowclone is not installed in database \"{source_name}\""),
        )
        .detail("The clone's catalog is a copy of the source's, and it needs cowclone's access methods.")
        .hint(format!("Run CREATE EXTENSION cowclone in database \"{source_name}\" first."))
        .raise()
    };
    if !source
        .extensions(relations, snapshot)
        .iter()
        .any(|e| e == "cowclone")
    {
        not_installed();
    }
    let methods: HashMap<String, u32> = source
        .access_methods(relations, snapshot)
        .into_iter()
        .map(|(oid, name)| (name, oid))
        .collect();
    let mut replacement = HashMap::new();
    let cow = *methods.get("cow").unwrap_or_else(not_installed);
    replacement.insert(u32::from(pg_sys::HEAP_TABLE_AM_OID), cow);
    for (wrapper, wrapped, _) in indexam::WRAPPED {
        let wrapper_oid = *methods.get(wrapper).unwrap_or_else(not_installed);
        replacement.insert(wrapped, wrapper_oid);
    }
    AccessMethodSwitch { replacement }
}

/// The source's relations as `snapshot` sees them and the access methods
/// its shadowed ones get, refusing what this version cannot shadow.
fn shadowing_plan(
    source: &SourceDatabase,
    snapshot: pg_sys::Snapshot,
    source_name: &str,
) -> (Vec<SourceRelation>, AccessMethodSwitch) {
    let relations = source.relations(snapshot);
    catalog_copy::set_extension_namespace(source.namespace_oid(&relations, snapshot, "cow"));
    let switch = access_method_switch(source, &relations, snapshot, source_name);
    check_supported(&relations, &switch);
    (relations, switch)
}

/// Refuses sources with relations this version cannot shadow.
fn check_supported(relations: &[SourceRelation], switch: &AccessMethodSwitch) {
    for rel in relations
        .iter()
        .filter(|r| !r.is_system() && r.persistence != b't')
    {
        refuse_other_tablespace(rel);
        let shadowed = catalog_copy::is_shadowed(rel.oid, rel.kind, rel.persistence, rel.namespace);
        if shadowed && !switch.replacement.contains_key(&rel.am) {
            CowError::new(
                PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
                format!(
                    "relation \"{}\" uses an access method cowclone cannot shadow",
                    rel.name
                ),
            )
            .detail("Tables must use heap; indexes btree, hash, gist, gin, spgist or brin.")
            .raise();
        }
    }
}

/// Refuses a relation stored outside pg_default (0A000).
pub(super) fn refuse_other_tablespace(rel: &SourceRelation) {
    if rel.tablespace != 0 && rel.tablespace != pg_sys::DEFAULTTABLESPACE_OID.to_u32() {
        CowError::new(
            PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            format!(
                "relation \"{}\" is in a tablespace other than pg_default",
                rel.name
            ),
        )
        .detail("cowclone does not clone relations stored in other tablespaces yet.")
        .raise();
    }
}

/// The clone being built by this backend, for the transaction callback.
#[derive(Clone, Copy)]
pub(super) struct Pending {
    pub(super) clone: pg_sys::Oid,
    pub(super) source: pg_sys::Oid,
    /// This clone made its source's slot (standbys were told through its
    /// first witness, and must hear that it goes if the clone fails).
    pub(super) made_source_slot: bool,
    /// ... and persisted it: PostgreSQL no longer drops it on error, and no
    /// other clone relies on it yet.
    pub(super) persisted_source_slot: bool,
}

static mut PENDING_CLONE: Option<Pending> = None;
static mut CALLBACK_REGISTERED: bool = false;

pub(super) fn set_pending(pending: Option<Pending>) {
    // SAFETY: backend-local state, touched only by this single-threaded backend.
    unsafe {
        if pending.is_some() && !CALLBACK_REGISTERED {
            pg_sys::RegisterXactCallback(Some(on_transaction_end), std::ptr::null_mut());
            CALLBACK_REGISTERED = true;
        }
        PENDING_CLONE = pending;
    }
}

/// At commit the clone is complete; at abort its files are removed with its
/// witness (and an `XLOG_DBASE_DROP` record, so a standby removes them too;
/// its record aborts with the transaction), and its source's slot is
/// dropped if this clone made and persisted it (an ephemeral one PostgreSQL
/// drops itself); standbys are told the slot they made from its first
/// witness goes too. All of it runs before the lock on the source is
/// released, so no other clone or holder can have used the slot.
#[pgrx::pg_guard]
unsafe extern "C-unwind" fn on_transaction_end(
    event: pg_sys::XactEvent::Type,
    _arg: *mut std::ffi::c_void,
) {
    // SAFETY: backend-local state; the callback runs in this backend only.
    let Some(pending) = (unsafe { PENDING_CLONE }) else {
        return;
    };
    match event {
        pg_sys::XactEvent::XACT_EVENT_COMMIT => {
            set_pending(None);
            record::unmark_building(pending.clone);
        }
        pg_sys::XactEvent::XACT_EVENT_ABORT => {
            set_pending(None);
            remove_clone_files(pending.clone);
            // The slot this clone made goes now, while the source lock is
            // held: PostgreSQL would drop an ephemeral one only after the
            // lock is released, and a clone waiting for it would take it
            // for a pin.
            if slot::has_acquired() {
                slot::release_acquired();
            }
            if pending.persisted_source_slot {
                slot::drop_slot(&slot::source_slot_name(pending.source));
            }
            if pending.made_source_slot {
                wal::log_pin(pending.source, None);
            }
            record::unmark_building(pending.clone);
        }
        _ => {}
    }
}

pub fn remove_clone_files(clone: pg_sys::Oid) {
    let tablespace = pg_sys::DEFAULTTABLESPACE_OID;
    let dir = crate::create::source::database_dir(clone, tablespace);
    // SAFETY: the database never became visible, so nobody else uses its
    // buffers or files; the WAL record is the one dropdb writes.
    unsafe {
        pg_sys::DropDatabaseBuffers(clone);
        compat::forget_database_sync_requests(clone);
        compat::log_database_drop(clone, tablespace);
        let path = CString::new(dir.to_string_lossy().as_bytes()).expect("paths have no NUL");
        pg_sys::rmtree(path.as_ptr(), true);
    }
}

/// A catalog rewritten in the source after T (VACUUM FULL, REINDEX, CLUSTER)
/// has new files: T's files may already be empty. The copy is only
/// trustworthy if every catalog still has the storage T's pg_class names.
pub(super) fn check_catalog_not_rewritten(
    source: &SourceDatabase,
    at_clone_point: &[SourceRelation],
) {
    let current_source = SourceDatabase::open(source.oid, source.tablespace);
    let now = snapshot::HeldSnapshot::latest();
    let current = current_source.relations(now.0);
    let rewritten = current_source.relation_map != source.relation_map
        || at_clone_point
            .iter()
            .filter(|r| r.is_system() && !r.shared && r.has_storage())
            .any(|old| {
                current
                    .iter()
                    .find(|r| r.oid == old.oid)
                    .is_some_and(|r| r.relfilenode != old.relfilenode)
            });
    if rewritten {
        CowError::new(
            PgSqlErrorCode::ERRCODE_T_R_SERIALIZATION_FAILURE,
            "a catalog of the source was rewritten during the clone",
        )
        .hint("Retry the clone.")
        .raise();
    }
}

/// Creates the clone's database from template0 with the source's locale.
pub(super) fn create_database_shell(target: &str, locale: &DatabaseLocale) -> pg_sys::Oid {
    let mut options: Vec<(&str, String)> = vec![
        ("template", "template0".into()),
        ("strategy", "wal_log".into()),
    ];
    options.extend(compat::locale_options(locale));
    // SAFETY: builds a CreatedbStmt in the current memory context, as the
    // parser would, and hands it to PostgreSQL's own createdb().
    unsafe {
        let mut list: *mut pg_sys::List = std::ptr::null_mut();
        for (name, value) in options {
            let name = pg_sys::pstrdup(CString::new(name).expect("no NUL").as_ptr());
            let value = pg_sys::pstrdup(
                CString::new(value)
                    .expect("locale names have no NUL")
                    .as_ptr(),
            );
            let elem =
                pg_sys::makeDefElem(name, pg_sys::makeString(value) as *mut pg_sys::Node, -1);
            list = pg_sys::lappend(list, elem.cast());
        }
        let stmt = pg_sys::palloc0(std::mem::size_of::<pg_sys::CreatedbStmt>())
            as *mut pg_sys::CreatedbStmt;
        (*stmt).type_ = pg_sys::NodeTag::T_CreatedbStmt;
        (*stmt).dbname = pg_sys::pstrdup(CString::new(target).expect("validated").as_ptr());
        (*stmt).options = list;
        let oid = pg_sys::createdb(pg_sys::make_parsestate(std::ptr::null_mut()), stmt);
        pg_sys::CommandCounterIncrement();
        oid
    }
}

/// The clone's catalog holds the source's tuples, so its `pg_database` row
/// must promise no newer xids than the source's does, and announce the
/// source's login event triggers (template0's row, which it starts from,
/// has none).
pub(super) fn inherit_frozen_horizons(clone: pg_sys::Oid, info: &SourceInfo) {
    // SAFETY: updates this transaction's own, not yet committed, pg_database
    // row, under the tuple lock current releases check for updates of that
    // catalog (as ALTER DATABASE takes it); nobody else knows the row yet.
    unsafe {
        let rel = pg_sys::table_open(pg_sys::DatabaseRelationId, pg_sys::RowExclusiveLock as i32);
        let cached = pg_sys::SearchSysCache1(
            pg_sys::SysCacheIdentifier::DATABASEOID as i32,
            pg_sys::Datum::from(clone),
        );
        if cached.is_null() {
            CowError::new(
                PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
                "the new database's row is missing",
            )
            .raise();
        }
        let tuple = pg_sys::heap_copytuple(cached);
        pg_sys::ReleaseSysCache(cached);
        // InplaceUpdateTupleLock is ExclusiveLock; the update moves the
        // copy's t_self to the new version, so the old TID is kept to unlock.
        let mut old_tid = (*tuple).t_self;
        pg_sys::LockTuple(rel, &mut old_tid, pg_sys::ExclusiveLock as i32);
        let form = &mut *pg_sys::heap_tuple_get_struct::<pg_sys::FormData_pg_database>(tuple);
        form.datfrozenxid = info.frozen_xid;
        form.datminmxid = info.min_multi;
        compat::set_login_event_triggers(form, info.has_login_event_triggers);
        pg_sys::CatalogTupleUpdate(rel, &mut old_tid, tuple);
        pg_sys::UnlockTuple(rel, &mut old_tid, pg_sys::ExclusiveLock as i32);
        pg_sys::table_close(rel, pg_sys::RowExclusiveLock as i32);
        pg_sys::CommandCounterIncrement();
    }
}

/// The source's `ALTER DATABASE ... SET` settings (all roles, and per role)
/// apply to the clone too: `pg_db_role_setting` is a shared catalog keyed by
/// database OID, so its rows are copied under the clone's OID.
pub(super) fn inherit_settings(source: pg_sys::Oid, clone: pg_sys::Oid) {
    let query = format!(
        "SELECT setrole, setconfig FROM pg_catalog.pg_db_role_setting WHERE setdatabase = {}",
        u32::from(source)
    );
    let settings: Vec<(pg_sys::Oid, Vec<String>)> = pgrx::spi::Spi::connect(|client| {
        client
            .select(&query, None, &[])?
            .map(|row| {
                Ok((
                    row.get::<pg_sys::Oid>(1)?.unwrap_or(pg_sys::InvalidOid),
                    row.get::<Vec<String>>(2)?.unwrap_or_default(),
                ))
            })
            .collect::<Result<Vec<_>, pgrx::spi::SpiError>>()
    })
    .unwrap_or_else(|e| {
        CowError::new(
            PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
            format!("reading the source's settings failed: {e}"),
        )
        .raise()
    });
    if settings.is_empty() {
        return;
    }
    // SAFETY: inserts rows into a shared catalog through the catalog API, in
    // this transaction, with a tuple built from the catalog's own descriptor.
    unsafe {
        let rel = pg_sys::table_open(DB_ROLE_SETTING_RELATION_ID, pg_sys::RowExclusiveLock as i32);
        for (role, config) in settings {
            let mut values = [
                pg_sys::Datum::from(clone),
                pg_sys::Datum::from(role),
                pgrx::IntoDatum::into_datum(config).expect("an array is never null"),
            ];
            let mut nulls = [false; 3];
            let tuple =
                pg_sys::heap_form_tuple((*rel).rd_att, values.as_mut_ptr(), nulls.as_mut_ptr());
            pg_sys::CatalogTupleInsert(rel, tuple);
        }
        pg_sys::table_close(rel, pg_sys::RowExclusiveLock as i32);
        pg_sys::CommandCounterIncrement();
    }
}

/// Local storage for shadowed relations (empty) and copies of sequences.
fn create_local_storage(
    clone: pg_sys::Oid,
    source: &SourceDatabase,
    relations: &[SourceRelation],
) -> i64 {
    let tablespace = pg_sys::DEFAULTTABLESPACE_OID;
    let mut shadowed = 0;
    for rel in relations
        .iter()
        .filter(|r| !r.is_system() && r.persistence != b't' && r.has_storage())
    {
        let locator = compat::rel_locator(tablespace, clone, pg_sys::Oid::from(rel.relfilenode));
        // SAFETY: the clone's directory has no file at a user relfilenode
        // (template0's files are all below 16384); files are removed on abort.
        unsafe {
            pg_sys::RelationCreateStorage(locator, rel.persistence as std::ffi::c_char, true)
        };
        let unlogged = rel.persistence == b'u';
        let own = !catalog_copy::is_shadowed(rel.oid, rel.kind, rel.persistence, rel.namespace)
            && rel.kind != b'S';
        if rel.kind == b'S' || own {
            let from = source.locator(rel.relfilenode);
            let main = pg_sys::ForkNumber::MAIN_FORKNUM;
            catalog_copy::copy_fork(from, main, rel.oid, &rel.name, None, locator, !unlogged);
            if unlogged {
                // SAFETY: the main fork exists now.
                unsafe { compat::create_init_fork(locator) };
                let init = pg_sys::ForkNumber::INIT_FORKNUM;
                catalog_copy::copy_fork(from, init, rel.oid, &rel.name, None, locator, false);
            }
        } else {
            if unlogged {
                // SAFETY: the main fork exists now.
                unsafe { compat::create_init_fork(locator) };
            }
            shadowed += 1;
        }
    }
    shadowed
}

/// Refuses a call that cannot clone here: a server that did not preload
/// cowclone (55000), a standby (25006), or inside a transaction block (25001).
pub fn refuse_unless_callable() {
    preload::require_preloaded();
    // SAFETY: reads shared recovery state.
    if unsafe { pg_sys::RecoveryInProgress() } {
        CowError::new(
            PgSqlErrorCode::ERRCODE_READ_ONLY_SQL_TRANSACTION,
            "cannot clone a database during recovery",
        )
        .detail("This server is a standby (or still recovering): it cannot create databases.")
        .hint("Run cow.clone on the primary; the clone reaches this standby through WAL.")
        .raise();
    }
    // SAFETY: the same check CREATE DATABASE makes (SQLSTATE 25001).
    unsafe { pg_sys::PreventInTransactionBlock(true, c"cow.clone()".as_ptr()) };
}

/// Makes the clone. The caller has called `refuse_unless_callable` and
/// removed what crashed clones left behind (`lifecycle::reconcile`, which
/// sits above this folder), so a name a crashed clone took is free again.
pub fn clone_database(source_name: &str, target: &str, request: PointRequest) -> CloneOutcome {
    let started = Instant::now();
    validate_target_name(target);
    let source_oid = database_oid(source_name);
    if source_oid == pg_sys::InvalidOid {
        CowError::new(
            PgSqlErrorCode::ERRCODE_INVALID_CATALOG_NAME,
            format!("database \"{source_name}\" does not exist"),
        )
        .raise();
    }
    if source_name == target {
        CowError::new(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "source and target must be different databases",
        )
        .raise();
    }
    lock_target_name(target);
    if database_oid(target) != pg_sys::InvalidOid {
        CowError::new(
            PgSqlErrorCode::ERRCODE_DUPLICATE_DATABASE,
            format!("database \"{target}\" already exists"),
        )
        .raise();
    }
    check_privileges(source_oid, source_name);

    // Hold the source against DROP DATABASE (which takes AccessExclusiveLock)
    // and order this clone with storage drops in the source (see `lifecycle::guard`)
    // until commit, then make sure the source did not vanish meanwhile. Not
    // ShareLock, as CREATE DATABASE takes on its template: PostgreSQL takes
    // RowExclusiveLock on a database to create storage in it, so DDL in the
    // source would wait for the clone.
    record::lock_source(source_oid);
    let info = source_info(source_oid, source_name);
    let parent = record::read_record(source_oid);
    if let Some(parent) = &parent {
        nested::refuse(parent, source_name, request);
    }
    if info.tablespace != pg_sys::DEFAULTTABLESPACE_OID {
        CowError::new(
            PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            format!("database \"{source_name}\" is not in tablespace pg_default"),
        )
        .detail("cowclone does not clone databases stored in other tablespaces yet.")
        .raise();
    }
    let source = SourceDatabase::open(source_oid, info.tablespace);
    if let Some(parent) = parent {
        return nested::clone_of_clone(started, &source, source_name, target, &info, parent);
    }
    let past =
        (request != PointRequest::Now).then(|| point::resolve(source_oid, source_name, request));

    // Refuse what cannot be cloned before creating anything. A past point's
    // plan is its final one (its snapshot does not change); a clone of now
    // plans again as of T, taken below.
    let past_plan = match &past {
        None => {
            shadowing_plan(&source, snapshot::HeldSnapshot::latest().0, source_name);
            None
        }
        Some(past) => {
            let mut as_of = PointSnapshot::new(&past.point);
            let plan = shadowing_plan(&source, as_of.as_ptr(), source_name);
            point::refuse_rewritten(&source, source_name, &plan.0, past);
            Some(plan)
        }
    };

    let clone = create_database_shell(target, &info.locale);
    set_pending(Some(Pending {
        clone,
        source: source_oid,
        made_source_slot: false,
        persisted_source_slot: false,
    }));
    record::mark_building(clone);
    // A witness from the start, with no pin yet: if this server fails over,
    // or is restored to a point, before the clone commits, the directory it
    // leaves is known for what it is (`lifecycle::reconcile`).
    record::announce(clone, source_oid, 0);
    inherit_frozen_horizons(clone, &info);
    inherit_settings(source_oid, clone);
    failpoint::reached("after_createdb");

    let (held, point, pin) = match past {
        None => {
            let (held, taken, pin) = snapshot::pin_and_take(source_oid, |pin_xmin, taken| {
                if taken == PinTaken::Created {
                    // Before the witness reaches standbys: from here, an abort
                    // must tell them the slot goes.
                    set_pending(Some(Pending {
                        clone,
                        source: source_oid,
                        made_source_slot: true,
                        persisted_source_slot: false,
                    }));
                }
                record::announce(clone, source_oid, pin_xmin)
            });
            // The snapshot PostgreSQL took, made exact at its WAL position.
            (Some(held), exact::refine(&taken), pin)
        }
        Some(past) => {
            // The history's pin holds the point (checked by `resolve`), and
            // the source lock keeps the window from sliding past it.
            let pin_xmin = slot::source_slot(source_oid).map_or(0, |s| s.xmin);
            record::announce(clone, source_oid, pin_xmin);
            (None, past.point, PinTaken::Existing)
        }
    };
    let mut clone_point = PointSnapshot::new(&point);
    if pin == PinTaken::Created {
        // The slot moved from its conservative xmin to T's.
        wal::log_pin(source_oid, Some(point.xmin));
    }
    failpoint::reached("after_pin");
    let (relations, switch) = match past_plan {
        Some(plan) => plan,
        None => shadowing_plan(&source, clone_point.as_ptr(), source_name),
    };
    let copies = catalog_copy::copy_catalog(&source, &relations, clone_point.as_ptr(), &switch);

    // SAFETY: nobody can use the clone before commit; template0's pages copied
    // by createdb are discarded before the files are rewritten underneath them.
    unsafe { pg_sys::DropDatabaseBuffers(clone) };
    catalog_copy::write_catalog(clone, pg_sys::DEFAULTTABLESPACE_OID, &copies);
    // SAFETY: both databases live in pg_default; the clone is not in use.
    unsafe { compat::copy_relation_map(source_oid, clone, pg_sys::DEFAULTTABLESPACE_OID) };
    check_catalog_not_rewritten(&source, &relations);
    let shadowed = create_local_storage(clone, &source, &relations);
    drop(clone_point);
    drop(held);
    failpoint::reached("after_catalog_copy");

    record::save(&CloneRecord {
        clone: u32::from(clone),
        source: u32::from(source_oid),
        source_name: source_name.to_string(),
        depth: 1,
        point: point.clone(),
        // SAFETY: reads the clock.
        created_at: unsafe { pg_sys::GetCurrentTimestamp() },
        shadowed: relations
            .iter()
            .filter(|r| {
                catalog_copy::is_shadowed(r.oid, r.kind, r.persistence, r.namespace)
                    && r.relfilenode != 0
            })
            .map(|r| ShadowedStorage {
                relfilenode: r.relfilenode,
                name: r.name.clone(),
            })
            .collect(),
        materialized: Vec::new(),
        owners: relations
            .iter()
            .filter(|r| {
                catalog_copy::is_shadowed(r.oid, r.kind, r.persistence, r.namespace)
                    && r.relfilenode != 0
            })
            .map(|r| (r.relfilenode, r.oid))
            .collect(),
        chain: Vec::new(),
    });
    if pin == PinTaken::Created {
        slot::persist_acquired();
        slot::release_acquired();
        set_pending(Some(Pending {
            clone,
            source: source_oid,
            made_source_slot: true,
            persisted_source_slot: true,
        }));
    }
    failpoint::reached("before_commit");

    CloneOutcome {
        clone_oid: u32::from(clone),
        source_oid,
        source_name: source_name.to_string(),
        clone_point_lsn: record::format_lsn(point.lsn),
        clone_point_time: point.taken_at,
        catalog_relations: copies.len() as i64,
        shadowed_relations: shadowed,
        elapsed_ms: started.elapsed().as_secs_f64() * 1000.0,
    }
}
