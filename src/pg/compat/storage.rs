//! Storage: relation file locators (`RelFileNode` up to 15, `RelFileLocator`
//! from 16), smgr handles and buffers, extending and WAL-logging files, the
//! relation map's size, and dropping a database's files.

use std::ffi::c_char;

use pgrx::pg_sys;

// Exported by the server but not in pgrx's bindings. PostgreSQL reports
// errors by longjmp, not unwinding, so they are declared "C" and every call
// goes through pg_guard_ffi_boundary, which catches the longjmp and turns it
// into a Rust-safe error.
unsafe extern "C" {
    fn log_smgrcreate(rnode: *const RelLocator, fork: pg_sys::ForkNumber::Type);
    fn RelationMapCopy(
        dbid: pg_sys::Oid,
        tsid: pg_sys::Oid,
        srcdbpath: *mut c_char,
        dstdbpath: *mut c_char,
    );
}

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
struct IoAlignedBlock([u8; pg_sys::BLCKSZ as usize]);

/// PostgreSQL's `MaxHeapTuplesPerPage` (a macro bindgen cannot see): the
/// most line pointers a heap page can hold.
pub const MAX_HEAP_TUPLES_PER_PAGE: usize = {
    let header = std::mem::offset_of!(pg_sys::PageHeaderData, pd_linp);
    let tuple_header = std::mem::offset_of!(pg_sys::HeapTupleHeaderData, t_bits);
    let aligned_tuple_header = tuple_header.next_multiple_of(pg_sys::MAXIMUM_ALIGNOF as usize);
    (pg_sys::BLCKSZ as usize - header)
        / (aligned_tuple_header + std::mem::size_of::<pg_sys::ItemIdData>())
};
// 291 on 8 kB pages, the value cowclone used as a literal before.
const _: () = assert!(pg_sys::BLCKSZ != 8192 || MAX_HEAP_TUPLES_PER_PAGE == 291);

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
    let mut aligned = Box::new(IoAlignedBlock([0; pg_sys::BLCKSZ as usize]));
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
    let zero = [0u8; pg_sys::BLCKSZ as usize];
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

/// Registers `data` as the main data of the WAL record being built (18 takes
/// a const pointer and a length of type u32, 16 and 17 a mutable pointer and
/// u32, 15 an int).
///
/// # Safety
/// Between XLogBeginInsert and XLogInsert; `data` must live until XLogInsert.
pub unsafe fn xlog_register_data(data: &[u8]) {
    // SAFETY: guaranteed by the caller; PostgreSQL only reads the bytes.
    unsafe {
        #[cfg(before_pg16)]
        pg_sys::XLogRegisterData(data.as_ptr() as *mut std::ffi::c_char, data.len() as i32);
        #[cfg(all(not(before_pg16), before_pg18))]
        pg_sys::XLogRegisterData(data.as_ptr() as *mut std::ffi::c_char, data.len() as u32);
        #[cfg(not(before_pg18))]
        pg_sys::XLogRegisterData(data.as_ptr().cast(), data.len() as u32);
    }
}
