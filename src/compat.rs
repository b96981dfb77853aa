//! The one place that knows which PostgreSQL major the extension is built
//! for. Everything else calls these functions; a new major means a new arm
//! here, not `cfg`s scattered through the code.
//!
//! Only PostgreSQL 15 is implemented so far (issue #8 adds 16-18).

#[cfg(not(feature = "pg15"))]
compile_error!(
    "cowclone's compatibility layer implements PostgreSQL 15 only so far (see issue #8)"
);

use std::ffi::{c_char, CString};

use pgrx::pg_sys;

/// PostgreSQL 15 names a relation's storage `RelFileNode` (16+: `RelFileLocator`).
pub type RelLocator = pg_sys::RelFileNode;

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

/// Opens a relation's storage manager handle (not temporary).
///
/// # Safety
/// Must run in a backend with a valid transaction state; the handle lives
/// until the end of the transaction.
pub unsafe fn smgr_open(locator: RelLocator) -> pg_sys::SMgrRelation {
    // SAFETY: guaranteed by the caller.
    unsafe { pg_sys::smgropen(locator, pg_sys::InvalidBackendId) }
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
    locator.relNode
}

/// The relfilenode a relation's storage is named after.
///
/// # Safety
/// `rel` must be a valid relation.
pub unsafe fn relfilenode_of(rel: pg_sys::Relation) -> pg_sys::Oid {
    // SAFETY: guaranteed by the caller.
    unsafe { (*rel).rd_node.relNode }
}

/// Points a (copied) relation descriptor at other storage.
///
/// # Safety
/// `rel` must be a valid, writable relation descriptor.
pub unsafe fn set_relation_locator(rel: pg_sys::Relation, locator: RelLocator) {
    // SAFETY: guaranteed by the caller.
    unsafe { (*rel).rd_node = locator };
}

/// Makes `owner` (a long-lived field) the owner of the storage handle for
/// `locator`, as a relcache entry owns its relation's: an owned handle keeps
/// its files open across transactions, and PostgreSQL nulls the field when
/// it closes the handle (invalidation, DROP DATABASE barriers), after which
/// the next call opens it again.
///
/// # Safety
/// `owner` must stay valid until ownership is handed elsewhere.
pub unsafe fn own_smgr(
    owner: *mut pg_sys::SMgrRelation,
    locator: RelLocator,
) -> pg_sys::SMgrRelation {
    // SAFETY: guaranteed by the caller.
    unsafe {
        if (*owner).is_null() {
            pg_sys::smgrsetowner(owner, smgr_open(locator));
        }
        *owner
    }
}

/// Hands the handle `from` owns (if any) to `to`, so `from` can be freed.
///
/// # Safety
/// Both must be addresses of owner fields; `to` must stay valid.
pub unsafe fn hand_smgr_to(from: *mut pg_sys::SMgrRelation, to: *mut pg_sys::SMgrRelation) {
    // SAFETY: guaranteed by the caller; smgrsetowner nulls `from`.
    unsafe {
        if !(*from).is_null() {
            pg_sys::smgrsetowner(to, *from);
        }
    }
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
    let mut zero = vec![0u8; crate::page::BLCKSZ];
    // SAFETY: guaranteed by the caller; the page is a full zeroed block.
    unsafe {
        pg_sys::smgrextend(
            smgr_open(locator),
            fork,
            block,
            zero.as_mut_ptr().cast(),
            skip_fsync,
        )
    }
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
    fn log_smgrcreate(rnode: *const pg_sys::RelFileNode, fork: pg_sys::ForkNumber::Type);
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
        pg_sys::ReplicationSlotCreate(
            name.as_ptr(),
            false,
            pg_sys::ReplicationSlotPersistency::RS_EPHEMERAL,
            false,
        );
    }
}

/// Locale options of `CREATE DATABASE` that reproduce a source database's.
pub struct DatabaseLocale {
    pub encoding: String,
    pub collate: String,
    pub ctype: String,
    pub provider: u8,
    pub icu_locale: Option<String>,
}

/// Reads a database's locale from its `pg_database` row.
///
/// # Safety
/// `row` must be a valid pg_database heap tuple.
pub unsafe fn database_locale(row: pg_sys::HeapTuple) -> DatabaseLocale {
    // SAFETY: guaranteed by the caller; the columns are NOT NULL except daticulocale.
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
        DatabaseLocale {
            encoding: std::ffi::CStr::from_ptr(pg_sys::pg_encoding_to_char(form.encoding))
                .to_string_lossy()
                .into_owned(),
            collate: text_column(pg_sys::Anum_pg_database_datcollate).unwrap_or_default(),
            ctype: text_column(pg_sys::Anum_pg_database_datctype).unwrap_or_default(),
            provider: form.datlocprovider as u8,
            icu_locale: text_column(pg_sys::Anum_pg_database_daticulocale),
        }
    }
}

/// The `CREATE DATABASE` options for a locale.
pub fn locale_options(locale: &DatabaseLocale) -> Vec<(&'static str, String)> {
    let mut options = vec![
        ("encoding", locale.encoding.clone()),
        ("lc_collate", locale.collate.clone()),
        ("lc_ctype", locale.ctype.clone()),
        (
            "locale_provider",
            if locale.provider == b'i' {
                "icu".into()
            } else {
                "libc".into()
            },
        ),
    ];
    if let Some(icu) = &locale.icu_locale {
        options.push(("icu_locale", icu.clone()));
    }
    options
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

/// ReplicationSlotControlLock: MainLWLockArray[37] on PostgreSQL 15.
///
/// # Safety
/// Shared memory must be attached.
pub unsafe fn replication_slot_control_lock() -> *mut pg_sys::LWLock {
    // SAFETY: guaranteed by the caller; index 37 in lwlocknames.txt.
    unsafe { &mut (*pg_sys::MainLWLockArray.add(37)).lock }
}

/// The payload of an `XLOG_DBASE_DROP` record for one tablespace.
#[repr(C)]
pub struct DatabaseDropRecord {
    pub db_id: pg_sys::Oid,
    pub ntablespaces: i32,
    pub tablespace: pg_sys::Oid,
}

pub const XLOG_DBASE_DROP: u8 = 0x20;
