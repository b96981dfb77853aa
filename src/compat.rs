//! The one place that knows which PostgreSQL major the extension is built
//! for. Everything else calls these functions; a new major means a new arm
//! here, not `cfg`s scattered through the code.
//!
//! Tested on PostgreSQL 15, 16, 17 and 18. The `pg14` feature exists, but
//! 14 would need bridges this module does not have (the code uses 15's
//! `datlocprovider`, `indnullsnotdistinct` and `RelationMapCopy`), and no
//! PostgreSQL 14 can be installed on these machines to write them against.
//! The version boundaries (`before_pg16`, `before_pg17`, `before_pg18`) come
//! from build.rs.

use std::ffi::{c_char, CString};

use pgrx::pg_sys;

/// A relation's storage: `RelFileNode` up to 15, `RelFileLocator` from 16.
#[cfg(before_pg16)]
pub type RelLocator = pg_sys::RelFileNode;
#[cfg(not(before_pg16))]
pub type RelLocator = pg_sys::RelFileLocator;

#[cfg(before_pg16)]
pub fn rel_locator(
    tablespace: pg_sys::Oid,
    database: pg_sys::Oid,
    relfilenode: pg_sys::Oid,
) -> RelLocator {
    pg_sys::RelFileNode {
        spcNode: tablespace,
        dbNode: database,
        relNode: relfilenode,
    }
}

#[cfg(not(before_pg16))]
pub fn rel_locator(
    tablespace: pg_sys::Oid,
    database: pg_sys::Oid,
    relfilenode: pg_sys::Oid,
) -> RelLocator {
    pg_sys::RelFileLocator {
        spcOid: tablespace,
        dbOid: database,
        relNumber: relfilenode,
    }
}

/// (tablespace, database, relfilenode) of a locator.
pub fn locator_parts(locator: &RelLocator) -> (pg_sys::Oid, pg_sys::Oid, pg_sys::Oid) {
    #[cfg(before_pg16)]
    return (locator.spcNode, locator.dbNode, locator.relNode);
    #[cfg(not(before_pg16))]
    return (locator.spcOid, locator.dbOid, locator.relNumber);
}

/// Opens a relation's storage manager handle (not temporary).
///
/// # Safety
/// Must run in a backend with a valid transaction state; the handle lives
/// until the end of the transaction.
pub unsafe fn smgr_open(locator: RelLocator) -> pg_sys::SMgrRelation {
    // Backend ids became process numbers in 17; both are -1 for "not temporary".
    #[cfg(before_pg17)]
    let permanent = pg_sys::InvalidBackendId;
    #[cfg(not(before_pg17))]
    let permanent = -1;
    // SAFETY: guaranteed by the caller.
    unsafe { pg_sys::smgropen(locator, permanent) }
}

/// How `read_buffer` obtains a block.
#[derive(Clone, Copy)]
pub enum BlockRead {
    /// The block as stored (read from disk if not in shared buffers).
    Existing,
    /// A zeroed page, returned exclusively locked; the block need not exist
    /// on disk yet, only within the file's length.
    ZeroedAndLocked,
}

/// A buffer for a block of any database's permanent relation.
///
/// # Safety
/// The block must be within the fork's length; the caller must release the buffer.
pub unsafe fn read_buffer(
    locator: RelLocator,
    fork: pg_sys::ForkNumber::Type,
    block: u32,
    how: BlockRead,
) -> pg_sys::Buffer {
    let mode = match how {
        BlockRead::Existing => pg_sys::ReadBufferMode::RBM_NORMAL,
        BlockRead::ZeroedAndLocked => pg_sys::ReadBufferMode::RBM_ZERO_AND_LOCK,
    };
    // SAFETY: guaranteed by the caller; a null strategy means the default one.
    unsafe {
        pg_sys::ReadBufferWithoutRelcache(locator, fork, block, mode, std::ptr::null_mut(), true)
    }
}

/// A buffer for a block of a relation's main fork in any database, read
/// with a buffer access strategy (null: the default one).
///
/// # Safety
/// The block must exist; the caller must release the buffer.
pub unsafe fn read_buffer_shared(
    locator: RelLocator,
    block: u32,
    strategy: pg_sys::BufferAccessStrategy,
    permanent: bool,
) -> pg_sys::Buffer {
    // SAFETY: guaranteed by the caller.
    unsafe {
        pg_sys::ReadBufferWithoutRelcache(
            locator,
            pg_sys::ForkNumber::MAIN_FORKNUM,
            block,
            pg_sys::ReadBufferMode::RBM_NORMAL,
            strategy,
            permanent,
        )
    }
}

/// The relfilenode part of a locator.
pub fn locator_relfilenode(locator: &RelLocator) -> pg_sys::Oid {
    locator_parts(locator).2
}

/// The storage a relation descriptor points at.
///
/// # Safety
/// `rel` must be a valid relation.
pub unsafe fn relation_locator(rel: pg_sys::Relation) -> RelLocator {
    // SAFETY: guaranteed by the caller.
    #[cfg(before_pg16)]
    return unsafe { (*rel).rd_node };
    #[cfg(not(before_pg16))]
    return unsafe { (*rel).rd_locator };
}

/// The relfilenode a relation's storage is named after.
///
/// # Safety
/// `rel` must be a valid relation.
pub unsafe fn relfilenode_of(rel: pg_sys::Relation) -> pg_sys::Oid {
    // SAFETY: guaranteed by the caller.
    locator_relfilenode(&unsafe { relation_locator(rel) })
}

/// Points a (copied) relation descriptor at other storage.
///
/// # Safety
/// `rel` must be a valid, writable relation descriptor.
pub unsafe fn set_relation_locator(rel: pg_sys::Relation, locator: RelLocator) {
    // SAFETY: guaranteed by the caller.
    #[cfg(before_pg16)]
    unsafe {
        (*rel).rd_node = locator
    };
    #[cfg(not(before_pg16))]
    unsafe {
        (*rel).rd_locator = locator
    };
}

/// Relfilenodes of one database's default tablespace that the committing
/// transaction would unlink.
pub fn storage_dropped_at_commit(database: pg_sys::Oid) -> Vec<pg_sys::Oid> {
    let mut locators: *mut RelLocator = std::ptr::null_mut();
    // SAFETY: returns a palloc'd array of `count` entries (or none).
    unsafe {
        let count = pg_sys::smgrGetPendingDeletes(true, &mut locators);
        (0..count.max(0) as usize)
            .map(|i| locator_parts(&*locators.add(i)))
            .filter(|(tablespace, db, _)| {
                *db == database && *tablespace == pg_sys::DEFAULTTABLESPACE_OID
            })
            .map(|(_, _, relfilenode)| relfilenode)
            .collect()
    }
}

/// Whether the current user may connect to a database.
pub fn may_connect_to(database: pg_sys::Oid) -> bool {
    // SAFETY: a plain catalog privilege check inside a transaction.
    unsafe {
        #[cfg(before_pg16)]
        let result = pg_sys::pg_database_aclcheck(
            database,
            pg_sys::GetUserId(),
            pg_sys::ACL_CONNECT as pg_sys::AclMode,
        );
        #[cfg(not(before_pg16))]
        let result = pg_sys::object_aclcheck(
            pg_sys::DatabaseRelationId,
            database,
            pg_sys::GetUserId(),
            pg_sys::ACL_CONNECT as pg_sys::AclMode,
        );
        result == pg_sys::AclResult::ACLCHECK_OK
    }
}

/// Capacity and size of a relation map file (`RelMapFile`): 62 mappings and
/// a padding word up to 15, 64 mappings and no padding from 16.
#[cfg(before_pg16)]
pub const RELMAP_MAX_MAPPINGS: usize = 62;
#[cfg(not(before_pg16))]
pub const RELMAP_MAX_MAPPINGS: usize = 64;
#[cfg(before_pg16)]
pub const RELMAP_FILE_SIZE: usize = 512;
#[cfg(not(before_pg16))]
pub const RELMAP_FILE_SIZE: usize = 524;

/// A table AM's callback giving a relation new storage (TRUNCATE,
/// rewrites): `relation_set_new_filenode` up to 15, `..._filelocator` from 16.
pub type SetNewStorage = unsafe extern "C-unwind" fn(
    pg_sys::Relation,
    *const RelLocator,
    c_char,
    *mut pg_sys::TransactionId,
    *mut pg_sys::MultiXactId,
);

/// A routine's new-storage callback.
pub fn set_new_storage_of(routine: &pg_sys::TableAmRoutine) -> Option<SetNewStorage> {
    #[cfg(before_pg16)]
    return routine.relation_set_new_filenode;
    #[cfg(not(before_pg16))]
    return routine.relation_set_new_filelocator;
}

/// Installs a routine's new-storage callback.
pub fn install_set_new_storage(routine: &mut pg_sys::TableAmRoutine, callback: SetNewStorage) {
    #[cfg(before_pg16)]
    {
        routine.relation_set_new_filenode = Some(callback);
    }
    #[cfg(not(before_pg16))]
    {
        routine.relation_set_new_filelocator = Some(callback);
    }
}

/// What a table AM's `tuple_update` reports about index maintenance:
/// a bool up to 15, `TU_UpdateIndexes` from 16.
#[cfg(before_pg16)]
pub type UpdateIndexes = bool;
#[cfg(not(before_pg16))]
pub type UpdateIndexes = pg_sys::TU_UpdateIndexes::Type;

/// The `UpdateIndexes` value for "every index needs the new row version".
#[cfg(before_pg16)]
pub const UPDATE_ALL_INDEXES: UpdateIndexes = true;
#[cfg(not(before_pg16))]
pub const UPDATE_ALL_INDEXES: UpdateIndexes = pg_sys::TU_UpdateIndexes::TU_All;

/// Makes `owner` (a long-lived field) keep the storage handle for `locator`,
/// as a relcache entry keeps its relation's: a kept handle keeps its files
/// open across transactions. Up to 16 the field becomes the handle's owner
/// and PostgreSQL nulls it when it closes the handle (invalidation, DROP
/// DATABASE barriers), after which the next call opens it again; from 17 the
/// handle is pinned instead, and closing it only closes its files.
///
/// # Safety
/// `owner` must stay valid until the handle is handed elsewhere or let go.
pub unsafe fn own_smgr(
    owner: *mut pg_sys::SMgrRelation,
    locator: RelLocator,
) -> pg_sys::SMgrRelation {
    // SAFETY: guaranteed by the caller.
    unsafe {
        if (*owner).is_null() {
            let handle = smgr_open(locator);
            #[cfg(before_pg17)]
            pg_sys::smgrsetowner(owner, handle);
            #[cfg(not(before_pg17))]
            {
                pg_sys::smgrpin(handle);
                *owner = handle;
            }
        }
        *owner
    }
}

/// Hands the handle `from` keeps (if any) to `to`, so `from` can be freed.
///
/// # Safety
/// Both must be addresses of owner fields; `to` must stay valid.
pub unsafe fn hand_smgr_to(from: *mut pg_sys::SMgrRelation, to: *mut pg_sys::SMgrRelation) {
    // SAFETY: guaranteed by the caller; smgrsetowner nulls `from`.
    unsafe {
        if (*from).is_null() {
            return;
        }
        #[cfg(before_pg17)]
        pg_sys::smgrsetowner(to, *from);
        #[cfg(not(before_pg17))]
        {
            if !(*to).is_null() {
                pg_sys::smgrunpin(*to);
            }
            *to = *from;
            *from = std::ptr::null_mut();
        }
    }
}

/// Lets go of the handle `owner` keeps (if any): it is closed at the end of
/// the transaction like any handle nobody keeps.
///
/// # Safety
/// `owner` must be the address of an owner field.
pub unsafe fn let_go_of_smgr(owner: *mut pg_sys::SMgrRelation) {
    // SAFETY: guaranteed by the caller.
    unsafe {
        if (*owner).is_null() {
            return;
        }
        #[cfg(before_pg17)]
        pg_sys::smgrclearowner(owner, *owner);
        #[cfg(not(before_pg17))]
        {
            pg_sys::smgrunpin(*owner);
            *owner = std::ptr::null_mut();
        }
    }
}

/// A block buffer aligned as PostgreSQL's file I/O wants it (16+ asserts
/// the alignment, for direct I/O).
#[repr(C, align(4096))]
struct IoAlignedBlock([u8; crate::page::BLCKSZ]);

/// Appends `page` (a full block) to a fork as block `block`.
/// `skip_fsync`: the caller makes the contents durable another way (WAL).
///
/// # Safety
/// `smgr` must be open and the fork must exist with `block` blocks.
pub unsafe fn extend_with(
    smgr: pg_sys::SMgrRelation,
    fork: pg_sys::ForkNumber::Type,
    block: u32,
    page: &[u8],
    skip_fsync: bool,
) {
    let mut aligned = Box::new(IoAlignedBlock([0; crate::page::BLCKSZ]));
    aligned.0.copy_from_slice(page);
    // SAFETY: guaranteed by the caller; the buffer is a full, aligned block.
    unsafe { pg_sys::smgrextend(smgr, fork, block, aligned.0.as_mut_ptr().cast(), skip_fsync) }
}

/// Extends a fork so that `block` exists, writing one zero page there.
/// `skip_fsync`: the caller makes the contents durable another way (WAL).
///
/// # Safety
/// The fork must exist.
pub unsafe fn extend_to(
    locator: RelLocator,
    fork: pg_sys::ForkNumber::Type,
    block: u32,
    skip_fsync: bool,
) {
    let zero = [0u8; crate::page::BLCKSZ];
    // SAFETY: guaranteed by the caller.
    unsafe { extend_with(smgr_open(locator), fork, block, &zero, skip_fsync) }
}

/// WAL-logs a full page image and stamps the page with the record's LSN.
///
/// # Safety
/// `page` must point to a full, standard-layout page of BLCKSZ bytes.
pub unsafe fn log_newpage(
    mut locator: RelLocator,
    fork: pg_sys::ForkNumber::Type,
    block: u32,
    page: *mut u8,
) {
    // SAFETY: guaranteed by the caller.
    unsafe {
        pg_sys::log_newpage(&mut locator, fork, block, page.cast::<c_char>(), true);
    }
}

// Exported by the server (storage_xlog.h / relmapper.h) but not in pgrx's
// bindings. PostgreSQL reports errors by longjmp, not unwinding, so they are
// declared "C" and every call goes through pg_guard_ffi_boundary, which
// catches the longjmp and turns it into a Rust-safe error.
unsafe extern "C" {
    fn log_smgrcreate(rnode: *const RelLocator, fork: pg_sys::ForkNumber::Type);
    #[link_name = "ExecStoreBufferHeapTuple"]
    fn ExecStoreBufferHeapTupleUnguarded(
        tuple: pg_sys::HeapTuple,
        slot: *mut pg_sys::TupleTableSlot,
        buffer: pg_sys::Buffer,
    ) -> *mut pg_sys::TupleTableSlot;
    fn PredicateLockRelation(relation: pg_sys::Relation, snapshot: pg_sys::Snapshot);
    fn find_all_inheritors(
        parent: pg_sys::Oid,
        lockmode: std::ffi::c_int,
        parents: *mut *mut pg_sys::List,
    ) -> *mut pg_sys::List;
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
    fn RelationMapCopy(
        dbid: pg_sys::Oid,
        tsid: pg_sys::Oid,
        srcdbpath: *mut c_char,
        dstdbpath: *mut c_char,
    );
}

/// Stores a tuple that lives on a pinned buffer page in a slot (which takes
/// its own pin). This is the per-row call of every scan, so it skips pgrx's
/// error boundary (a sigsetjmp per call, about a tenth of a scan's time)
/// whenever it cannot raise: its one ERROR of its own is for a slot of
/// another type, checked here first. What remains is running out of memory
/// while the slot takes its pin; that ERROR would skip the scan callback's
/// Rust frames, which hold only plain data (nothing to drop or unlock).
///
/// # Safety
/// `tuple` must point into the page of `buffer`, which must be pinned.
pub unsafe fn store_buffer_tuple(
    tuple: pg_sys::HeapTuple,
    slot: *mut pg_sys::TupleTableSlot,
    buffer: pg_sys::Buffer,
) {
    // SAFETY: guaranteed by the caller; the slot's ops pointer identifies its type.
    unsafe {
        if std::ptr::eq((*slot).tts_ops, &raw const pg_sys::TTSOpsBufferHeapTuple) {
            ExecStoreBufferHeapTupleUnguarded(tuple, slot, buffer);
        } else {
            pg_sys::ExecStoreBufferHeapTuple(tuple, slot, buffer);
        }
    }
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

/// A table and all its partitions and inheritance children (no new locks).
///
/// # Safety
/// Inside a transaction.
pub unsafe fn table_and_inheritors(table: pg_sys::Oid) -> *mut pg_sys::List {
    // SAFETY: guaranteed by the caller.
    unsafe {
        pg_sys::ffi::pg_guard_ffi_boundary(|| {
            find_all_inheritors(table, pg_sys::NoLock as i32, std::ptr::null_mut())
        })
    }
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
        let block = crate::clone_view::block_of(&*tid);
        pg_sys::ffi::pg_guard_ffi_boundary(|| CheckForSerializableConflictIn(rel, tid, block))
    }
}

/// Creates the init fork of an unlogged relation, WAL-logged.
///
/// # Safety
/// The relation's main fork must already exist.
pub unsafe fn create_init_fork(locator: RelLocator) {
    // SAFETY: guaranteed by the caller; the fork does not exist yet.
    unsafe {
        let smgr = smgr_open(locator);
        pg_sys::smgrcreate(smgr, pg_sys::ForkNumber::INIT_FORKNUM, false);
        pg_sys::ffi::pg_guard_ffi_boundary(|| {
            log_smgrcreate(&locator, pg_sys::ForkNumber::INIT_FORKNUM)
        });
        pg_sys::smgrimmedsync(smgr, pg_sys::ForkNumber::INIT_FORKNUM);
    }
}

/// Copies one database's relation map file to another's, WAL-logged.
///
/// # Safety
/// Both databases must exist in `tablespace`; the target must not be in use.
pub unsafe fn copy_relation_map(source: pg_sys::Oid, target: pg_sys::Oid, tablespace: pg_sys::Oid) {
    // SAFETY: guaranteed by the caller; GetDatabasePath returns palloc'd strings.
    unsafe {
        let source_path = pg_sys::GetDatabasePath(source, tablespace);
        let target_path = pg_sys::GetDatabasePath(target, tablespace);
        pg_sys::ffi::pg_guard_ffi_boundary(|| {
            RelationMapCopy(target, tablespace, source_path, target_path)
        });
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

/// Locale options of `CREATE DATABASE` that reproduce a source database's.
pub struct DatabaseLocale {
    pub encoding: String,
    pub collate: String,
    pub ctype: String,
    /// `c` (libc), `i` (ICU), `b` (builtin, 17+).
    pub provider: u8,
    /// The ICU or builtin locale (`daticulocale` up to 16, `datlocale` from 17).
    pub locale: Option<String>,
    /// ICU tailoring rules (16+).
    pub icu_rules: Option<String>,
}

#[cfg(before_pg17)]
const LOCALE_COLUMN: u32 = pg_sys::Anum_pg_database_daticulocale;
#[cfg(not(before_pg17))]
const LOCALE_COLUMN: u32 = pg_sys::Anum_pg_database_datlocale;

/// The name of an encoding.
fn encoding_name(encoding: i32) -> String {
    // SAFETY: returns a static string ("" for an invalid id).
    unsafe {
        #[cfg(before_pg17)]
        let name = pg_sys::pg_encoding_to_char(encoding);
        #[cfg(not(before_pg17))]
        let name = pg_sys::pg_encoding_to_char_private(encoding);
        std::ffi::CStr::from_ptr(name)
            .to_string_lossy()
            .into_owned()
    }
}

/// Reads a database's locale from its `pg_database` row.
///
/// # Safety
/// `row` must be a valid pg_database heap tuple.
pub unsafe fn database_locale(row: pg_sys::HeapTuple) -> DatabaseLocale {
    // SAFETY: guaranteed by the caller; the columns are NOT NULL except the
    // ICU/builtin locale and rules.
    unsafe {
        let form = &*(pg_sys::heap_tuple_get_struct::<pg_sys::FormData_pg_database>(row));
        let text_column = |attno: u32| -> Option<String> {
            let mut isnull = false;
            let datum = pg_sys::SysCacheGetAttr(
                pg_sys::SysCacheIdentifier::DATABASEOID as i32,
                row,
                attno as i16,
                &mut isnull,
            );
            (!isnull).then(|| {
                std::ffi::CStr::from_ptr(pg_sys::text_to_cstring(datum.cast_mut_ptr()))
                    .to_string_lossy()
                    .into_owned()
            })
        };
        #[cfg(before_pg16)]
        let icu_rules = None;
        #[cfg(not(before_pg16))]
        let icu_rules = text_column(pg_sys::Anum_pg_database_daticurules);
        DatabaseLocale {
            encoding: encoding_name(form.encoding),
            collate: text_column(pg_sys::Anum_pg_database_datcollate).unwrap_or_default(),
            ctype: text_column(pg_sys::Anum_pg_database_datctype).unwrap_or_default(),
            provider: form.datlocprovider as u8,
            locale: text_column(LOCALE_COLUMN),
            icu_rules,
        }
    }
}

/// The `CREATE DATABASE` options for a locale.
pub fn locale_options(locale: &DatabaseLocale) -> Vec<(&'static str, String)> {
    let provider = match locale.provider {
        b'i' => "icu",
        b'b' => "builtin",
        _ => "libc",
    };
    let mut options = vec![
        ("encoding", locale.encoding.clone()),
        ("lc_collate", locale.collate.clone()),
        ("lc_ctype", locale.ctype.clone()),
        ("locale_provider", provider.into()),
    ];
    match (locale.provider, &locale.locale) {
        (b'i', Some(icu)) => options.push(("icu_locale", icu.clone())),
        (b'b', Some(builtin)) => options.push(("builtin_locale", builtin.clone())),
        _ => {}
    }
    if let Some(rules) = &locale.icu_rules {
        options.push(("icu_rules", rules.clone()));
    }
    options
}

/// Whether a database has login event triggers (17+; the server skips
/// them for a database whose flag is false).
pub fn has_login_event_triggers(form: &pg_sys::FormData_pg_database) -> bool {
    #[cfg(before_pg17)]
    return {
        let _ = form;
        false
    };
    #[cfg(not(before_pg17))]
    return form.dathasloginevt;
}

/// Sets a database's login-event-trigger flag (a no-op before 17).
pub fn set_login_event_triggers(form: &mut pg_sys::FormData_pg_database, has: bool) {
    #[cfg(not(before_pg17))]
    {
        form.dathasloginevt = has;
    }
    #[cfg(before_pg17)]
    let _ = (form, has);
}

/// Up to 17 `INSERT ... ON CONFLICT` accepts only arbiter indexes whose
/// access method is btree by OID; 18 asks the access method instead.
pub const ARBITERS_MUST_BE_BTREE_BY_OID: bool = cfg!(before_pg18);

/// Makes a wrapper index AM's routine (a copy of the wrapped AM's) keep what
/// cowclone's wrappers promised on 15: no parallel builds (17 lets any AM
/// with `amcanbuildparallel` build in parallel) and no tree height for the
/// planner (18 asks any AM with `amgettreeheight`, which would read the
/// clone's local part, empty until the first write).
///
/// # Safety
/// `routine` must be a valid, writable routine.
pub unsafe fn keep_wrapper_routine_as_on_15(routine: *mut pg_sys::IndexAmRoutine) {
    #[cfg(not(before_pg17))]
    // SAFETY: guaranteed by the caller.
    unsafe {
        (*routine).amcanbuildparallel = false;
    }
    #[cfg(not(before_pg18))]
    // SAFETY: guaranteed by the caller.
    unsafe {
        (*routine).amgettreeheight = None;
    }
    let _ = routine;
}

/// Lets a part's inner index scan count its searches into the wrapper
/// scan's instrumentation (18: EXPLAIN ANALYZE's "Index Searches"), which
/// index_beginscan sets on the wrapper scan only.
///
/// # Safety
/// Both must be valid index scans.
pub unsafe fn share_scan_instrumentation(
    inner: pg_sys::IndexScanDesc,
    outer: pg_sys::IndexScanDesc,
) {
    #[cfg(not(before_pg18))]
    // SAFETY: guaranteed by the caller.
    unsafe {
        (*inner).instrument = (*outer).instrument;
    }
    let _ = (inner, outer);
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

/// One page of a TID bitmap: its block, and either the offsets it names or
/// `None` for a lossy page (every tuple, to be rechecked).
pub struct BitmapPage<'a> {
    pub block: pg_sys::BlockNumber,
    pub offsets: Option<&'a [pg_sys::OffsetNumber]>,
    pub recheck: bool,
}

/// Reads one iteration result (18 stores offsets compactly and hands them
/// out on request, into `offsets`).
///
/// # Safety
/// `result` must be a valid result of tbm_iterate.
unsafe fn bitmap_page<'a>(
    result: *mut pg_sys::TBMIterateResult,
    offsets: &'a mut Vec<pg_sys::OffsetNumber>,
) -> BitmapPage<'a> {
    // SAFETY: guaranteed by the caller.
    unsafe {
        #[cfg(before_pg18)]
        {
            let _ = offsets;
            let ntuples = (*result).ntuples;
            BitmapPage {
                block: (*result).blockno,
                offsets: (ntuples >= 0).then(|| {
                    std::slice::from_raw_parts((*result).offsets.as_ptr(), ntuples as usize)
                }),
                recheck: (*result).recheck,
            }
        }
        #[cfg(not(before_pg18))]
        {
            let lossy = (*result).lossy;
            if !lossy {
                offsets.resize(crate::heap_page::MAX_TUPLES_PER_PAGE, 0);
                let n = pg_sys::tbm_extract_page_tuple(
                    result,
                    offsets.as_mut_ptr(),
                    offsets.len() as u32,
                );
                offsets.truncate(n.max(0) as usize);
            }
            BitmapPage {
                block: (*result).blockno,
                offsets: (!lossy).then_some(offsets.as_slice()),
                recheck: (*result).recheck,
            }
        }
    }
}

/// A private TID bitmap of `work_mem` bytes.
///
/// # Safety
/// Inside a transaction; freed with tbm_free.
pub unsafe fn tbm_create() -> *mut pg_sys::TIDBitmap {
    // SAFETY: guaranteed by the caller.
    unsafe {
        let bytes = pg_sys::work_mem as usize * 1024;
        pg_sys::tbm_create(bytes as _, std::ptr::null_mut())
    }
}

/// Calls `each` for every page of a private TID bitmap, in block order.
///
/// # Safety
/// `tbm` must be a valid private bitmap not being iterated.
pub unsafe fn for_each_bitmap_page(tbm: *mut pg_sys::TIDBitmap, mut each: impl FnMut(BitmapPage)) {
    let mut offsets = Vec::new();
    // SAFETY: guaranteed by the caller; the iterator ends before returning.
    unsafe {
        #[cfg(before_pg18)]
        {
            let iterator = pg_sys::tbm_begin_iterate(tbm);
            loop {
                let result = pg_sys::tbm_iterate(iterator);
                if result.is_null() {
                    break;
                }
                each(bitmap_page(result, &mut offsets));
            }
            pg_sys::tbm_end_iterate(iterator);
        }
        #[cfg(not(before_pg18))]
        {
            let mut iterator = pg_sys::tbm_begin_iterate(tbm, std::ptr::null_mut(), 0);
            let mut result: pg_sys::TBMIterateResult = std::mem::zeroed();
            while pg_sys::tbm_iterate(&mut iterator, &mut result) {
                each(bitmap_page(&mut result, &mut offsets));
            }
            pg_sys::tbm_end_iterate(&mut iterator);
        }
    }
}

/// Turns off a bitmap heap scan's read-ahead through the relation's own
/// file (up to 17; from 18 read-ahead is the table AM's, and cowclone's
/// scans do none).
///
/// # Safety
/// `scan` must be a valid bitmap heap scan state.
pub unsafe fn no_bitmap_prefetch(scan: *mut pg_sys::BitmapHeapScanState) {
    // SAFETY: guaranteed by the caller.
    #[cfg(before_pg18)]
    unsafe {
        (*scan).prefetch_maximum = 0;
    }
    #[cfg(not(before_pg18))]
    let _ = scan;
}

/// Installs the scan callbacks whose shape changed between majors: ANALYZE's
/// next block (17 hands a read stream instead of a block number) and bitmap
/// scans (18 lets the table AM iterate the bitmap itself).
pub fn install_shaped_scan_callbacks(routine: &mut pg_sys::TableAmRoutine) {
    routine.scan_analyze_next_block = Some(shaped::scan_analyze_next_block);
    #[cfg(before_pg18)]
    {
        routine.scan_bitmap_next_block = Some(shaped::scan_bitmap_next_block);
    }
    routine.scan_bitmap_next_tuple = Some(shaped::scan_bitmap_next_tuple);
}

/// The callbacks `install_shaped_scan_callbacks` installs: each hands
/// heapam's own scans to heapam and the rest to `tableam`'s shape-free code.
mod shaped {
    use pgrx::pg_sys;
    use pgrx::prelude::*;

    use crate::tableam::{analyze_block, bitmap_page, bitmap_tuple, heap_scan_unless_ours};

    #[cfg(before_pg17)]
    #[pg_guard]
    pub unsafe extern "C-unwind" fn scan_analyze_next_block(
        scan: pg_sys::TableScanDesc,
        block: pg_sys::BlockNumber,
        strategy: pg_sys::BufferAccessStrategy,
    ) -> bool {
        heap_scan_unless_ours!(scan, scan_analyze_next_block(scan, block, strategy));
        // SAFETY: one of our scans; ANALYZE picked the block.
        unsafe { analyze_block(scan, block, strategy) }
    }

    /// ANALYZE's stream would read the sampled blocks through the
    /// relation's own file, which holds only the clone's local part: the
    /// block numbers are taken from it without reading, and read here.
    #[cfg(not(before_pg17))]
    #[pg_guard]
    pub unsafe extern "C-unwind" fn scan_analyze_next_block(
        scan: pg_sys::TableScanDesc,
        stream: *mut pg_sys::ReadStream,
    ) -> bool {
        heap_scan_unless_ours!(scan, scan_analyze_next_block(scan, stream));
        loop {
            let mut strategy: pg_sys::BufferAccessStrategy = std::ptr::null_mut();
            // SAFETY: ANALYZE's own stream, never read from.
            let block = unsafe { pg_sys::read_stream_next_block(stream, &mut strategy) };
            if block == pg_sys::InvalidBlockNumber {
                return false;
            }
            // SAFETY: one of our scans.
            if unsafe { analyze_block(scan, block, strategy) } {
                return true;
            }
        }
    }

    #[cfg(before_pg18)]
    #[pg_guard]
    pub unsafe extern "C-unwind" fn scan_bitmap_next_block(
        scan: pg_sys::TableScanDesc,
        result: *mut pg_sys::TBMIterateResult,
    ) -> bool {
        heap_scan_unless_ours!(scan, scan_bitmap_next_block(scan, result));
        let mut offsets = Vec::new();
        // SAFETY: the executor's current iteration result for one of our scans.
        unsafe { bitmap_page(scan, super::bitmap_page(result, &mut offsets)).unwrap_or(false) }
    }

    #[cfg(before_pg18)]
    #[pg_guard]
    pub unsafe extern "C-unwind" fn scan_bitmap_next_tuple(
        scan: pg_sys::TableScanDesc,
        result: *mut pg_sys::TBMIterateResult,
        slot: *mut pg_sys::TupleTableSlot,
    ) -> bool {
        heap_scan_unless_ours!(scan, scan_bitmap_next_tuple(scan, result, slot));
        // SAFETY: one of our scans, on the page scan_bitmap_next_block loaded.
        unsafe { bitmap_tuple(scan, slot) }
    }

    /// From 18 the scan walks the executor's bitmap iterator itself.
    #[cfg(not(before_pg18))]
    #[pg_guard]
    pub unsafe extern "C-unwind" fn scan_bitmap_next_tuple(
        scan: pg_sys::TableScanDesc,
        slot: *mut pg_sys::TupleTableSlot,
        recheck: *mut bool,
        lossy_pages: *mut u64,
        exact_pages: *mut u64,
    ) -> bool {
        heap_scan_unless_ours!(
            scan,
            scan_bitmap_next_tuple(scan, slot, recheck, lossy_pages, exact_pages)
        );
        let mut offsets = Vec::new();
        // SAFETY: one of our scans; the executor set its iterator before
        // the first call and the counters are its own.
        unsafe {
            loop {
                if bitmap_tuple(scan, slot) {
                    return true;
                }
                let mut result: pg_sys::TBMIterateResult = std::mem::zeroed();
                if !pg_sys::tbm_iterate(&mut (*scan).st.rs_tbmiterator, &mut result) {
                    return false;
                }
                let page = super::bitmap_page(&mut result, &mut offsets);
                *recheck = page.recheck;
                let exact = page.offsets.is_some();
                if bitmap_page(scan, page).is_some() {
                    if exact {
                        *exact_pages += 1;
                    } else {
                        *lossy_pages += 1;
                    }
                }
            }
        }
    }
}

unsafe extern "C" {
    // md.c; not in pgrx's bindings (see above).
    fn ForgetDatabaseSyncRequests(dbid: pg_sys::Oid);
}

/// Tells the checkpointer to forget pending fsyncs of a database's files,
/// before they are removed.
///
/// # Safety
/// The database's buffers must have been dropped already.
pub unsafe fn forget_database_sync_requests(database: pg_sys::Oid) {
    // SAFETY: guaranteed by the caller.
    unsafe { pg_sys::ffi::pg_guard_ffi_boundary(|| ForgetDatabaseSyncRequests(database)) }
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

/// The payload of an `XLOG_DBASE_DROP` record for one tablespace
/// (`xl_dbase_drop_rec`, the same from 15 to 18).
#[repr(C)]
struct DatabaseDropRecord {
    db_id: pg_sys::Oid,
    ntablespaces: i32,
    tablespace: pg_sys::Oid,
}

const XLOG_DBASE_DROP: u8 = 0x20;

/// WAL-logs the removal of a database's directory in one tablespace, as
/// `DROP DATABASE` does, so a replica or crash recovery removes it too.
///
/// # Safety
/// The database's buffers and pending syncs must be gone already.
pub unsafe fn log_database_drop(database: pg_sys::Oid, tablespace: pg_sys::Oid) {
    let mut record = DatabaseDropRecord {
        db_id: database,
        ntablespaces: 1,
        tablespace,
    };
    let length = std::mem::size_of::<DatabaseDropRecord>();
    // SAFETY: the record outlives XLogInsert, which copies it.
    unsafe {
        pg_sys::XLogBeginInsert();
        pg_sys::XLogRegisterData((&raw mut record).cast(), length as _);
        pg_sys::XLogInsert(
            pg_sys::RmgrIds::RM_DBASE_ID as u8,
            XLOG_DBASE_DROP | pg_sys::XLR_SPECIAL_REL_UPDATE as u8,
        );
    }
}
