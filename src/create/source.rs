//! Reading another database's catalogs and pages, as of a snapshot.
//!
//! Pages are read through shared buffers (so changes not yet written to disk
//! are seen) under a share lock, and tuples are judged with the clone point's
//! snapshot on the source buffer itself: PostgreSQL may set hint bits there,
//! which is the only change clone code ever makes to a source page.

use std::path::PathBuf;

use pgrx::{pg_sys, PgSqlErrorCode};

use crate::create::relmap::RelationMap;
use crate::pg::compat::{self, RelLocator};
use crate::pg::error::CowError;
use crate::pg::page::{self, LP_NORMAL};

pub const FIRST_NORMAL_OBJECT_ID: u32 = 16384;
const PG_CLASS: u32 = 1259;
const PG_AM: u32 = 2601;
const PG_NAMESPACE: u32 = 2615;
const PG_EXTENSION: u32 = 3079;

/// One relation of the source's `pg_class` as of the clone point.
#[derive(Clone, Debug)]
pub struct SourceRelation {
    pub oid: u32,
    pub name: String,
    pub kind: u8,
    pub persistence: u8,
    pub shared: bool,
    pub relfilenode: u32,
    pub am: u32,
    pub tablespace: u32,
    pub namespace: u32,
}

impl SourceRelation {
    pub fn has_storage(&self) -> bool {
        matches!(self.kind, b'r' | b't' | b'i' | b'm' | b'S')
    }

    pub fn is_system(&self) -> bool {
        self.oid < FIRST_NORMAL_OBJECT_ID
    }
}

/// A database being cloned: where its files are and how its catalogs map.
pub struct SourceDatabase {
    pub oid: pg_sys::Oid,
    pub tablespace: pg_sys::Oid,
    pub relation_map: RelationMap,
}

impl SourceDatabase {
    pub fn open(oid: pg_sys::Oid, tablespace: pg_sys::Oid) -> Self {
        let relation_map = read_relation_map(oid, tablespace);
        Self {
            oid,
            tablespace,
            relation_map,
        }
    }

    pub fn locator(&self, relfilenode: u32) -> RelLocator {
        compat::rel_locator(self.tablespace, self.oid, pg_sys::Oid::from(relfilenode))
    }

    /// Every relation of the source's `pg_class` the snapshot sees.
    pub fn relations(&self, snapshot: pg_sys::Snapshot) -> Vec<SourceRelation> {
        let pg_class = self.mapped_filenode(PG_CLASS);
        let mut relations = Vec::new();
        for_each_visible_tuple(self.locator(pg_class), PG_CLASS, snapshot, |data| {
            // SAFETY: a pg_class heap tuple's fixed-size part is a FormData_pg_class.
            let form =
                unsafe { std::ptr::read_unaligned(data as *const pg_sys::FormData_pg_class) };
            let oid = u32::from(form.oid);
            let kind = form.relkind as u8;
            // Mapped catalogs have relfilenode 0; so do relations without storage.
            let mapped = oid < FIRST_NORMAL_OBJECT_ID
                && !form.relisshared
                && matches!(kind, b'r' | b't' | b'i');
            let relfilenode = match u32::from(form.relfilenode) {
                0 if mapped => self.mapped_filenode(oid),
                node => node,
            };
            relations.push(SourceRelation {
                oid,
                name: pgrx::name_data_to_str(&form.relname).to_string(),
                kind,
                persistence: form.relpersistence as u8,
                shared: form.relisshared,
                relfilenode,
                am: u32::from(form.relam),
                tablespace: u32::from(form.reltablespace),
                namespace: u32::from(form.relnamespace),
            });
        });
        relations
    }

    /// The source's access methods (oid, name) the snapshot sees.
    pub fn access_methods(
        &self,
        relations: &[SourceRelation],
        snapshot: pg_sys::Snapshot,
    ) -> Vec<(u32, String)> {
        let mut methods = Vec::new();
        for_each_visible_tuple(
            self.locator(filenode_of(relations, PG_AM)),
            PG_AM,
            snapshot,
            |data| {
                // SAFETY: a pg_am heap tuple's fixed-size part is a FormData_pg_am.
                let form =
                    unsafe { std::ptr::read_unaligned(data as *const pg_sys::FormData_pg_am) };
                methods.push((
                    u32::from(form.oid),
                    pgrx::name_data_to_str(&form.amname).to_string(),
                ));
            },
        );
        methods
    }

    /// The OID of the source's schema `name` as of the snapshot (0 if none).
    pub fn namespace_oid(
        &self,
        relations: &[SourceRelation],
        snapshot: pg_sys::Snapshot,
        name: &str,
    ) -> u32 {
        let mut found = 0;
        for_each_visible_tuple(
            self.locator(filenode_of(relations, PG_NAMESPACE)),
            PG_NAMESPACE,
            snapshot,
            |data| {
                // SAFETY: a pg_namespace heap tuple's fixed-size part is a FormData_pg_namespace.
                let form = unsafe {
                    std::ptr::read_unaligned(data as *const pg_sys::FormData_pg_namespace)
                };
                if pgrx::name_data_to_str(&form.nspname) == name {
                    found = u32::from(form.oid);
                }
            },
        );
        found
    }

    /// Names of the extensions installed in the source as of the snapshot.
    pub fn extensions(
        &self,
        relations: &[SourceRelation],
        snapshot: pg_sys::Snapshot,
    ) -> Vec<String> {
        let mut names = Vec::new();
        let locator = self.locator(filenode_of(relations, PG_EXTENSION));
        for_each_visible_tuple(locator, PG_EXTENSION, snapshot, |data| {
            // SAFETY: a pg_extension heap tuple's fixed-size part is a FormData_pg_extension.
            let form =
                unsafe { std::ptr::read_unaligned(data as *const pg_sys::FormData_pg_extension) };
            names.push(pgrx::name_data_to_str(&form.extname).to_string());
        });
        names
    }

    fn mapped_filenode(&self, relation: u32) -> u32 {
        self.relation_map.filenode(relation).unwrap_or_else(|| {
            CowError::new(
                PgSqlErrorCode::ERRCODE_DATA_CORRUPTED,
                "source relation map lacks a catalog",
            )
            .detail(format!(
                "Relation {relation} has no entry in the map of database {}.",
                self.oid
            ))
            .raise()
        })
    }
}

fn filenode_of(relations: &[SourceRelation], oid: u32) -> u32 {
    relations
        .iter()
        .find(|r| r.oid == oid)
        .map(|r| r.relfilenode)
        .unwrap_or_else(|| {
            CowError::new(
                PgSqlErrorCode::ERRCODE_DATA_CORRUPTED,
                format!("source catalog lacks relation {oid}"),
            )
            .raise()
        })
}

pub fn database_dir(database: pg_sys::Oid, tablespace: pg_sys::Oid) -> PathBuf {
    // SAFETY: DataDir is set at startup; GetDatabasePath returns a palloc'd
    // path relative to it.
    unsafe {
        let data_dir = std::ffi::CStr::from_ptr(pg_sys::DataDir)
            .to_string_lossy()
            .into_owned();
        let relative = std::ffi::CStr::from_ptr(pg_sys::GetDatabasePath(database, tablespace));
        PathBuf::from(data_dir).join(relative.to_string_lossy().as_ref())
    }
}

/// The map file is rewritten in place, 512 bytes at once, only when a mapped
/// catalog is rewritten (VACUUM FULL pg_class and the like); PostgreSQL relies
/// on such a write being atomic, and so does this read.
fn read_relation_map(database: pg_sys::Oid, tablespace: pg_sys::Oid) -> RelationMap {
    let path = database_dir(database, tablespace).join("pg_filenode.map");
    let bytes = std::fs::read(&path).unwrap_or_else(|e| {
        CowError::new(
            PgSqlErrorCode::ERRCODE_IO_ERROR,
            format!("could not read \"{}\": {e}", path.display()),
        )
        .raise()
    });
    RelationMap::parse(&bytes).unwrap_or_else(|e| {
        CowError::new(
            PgSqlErrorCode::ERRCODE_DATA_CORRUPTED,
            format!("invalid relation map \"{}\"", path.display()),
        )
        .detail(e)
        .raise()
    })
}

/// Number of blocks in a fork of any database's relation.
pub fn block_count(locator: RelLocator, fork: pg_sys::ForkNumber::Type) -> u32 {
    // SAFETY: smgr handles are valid for the transaction; a missing fork is
    // checked before asking for its size.
    unsafe {
        let smgr = compat::smgr_open(locator);
        if !pg_sys::smgrexists(smgr, fork) {
            return 0;
        }
        pg_sys::smgrnblocks(smgr, fork)
    }
}

/// A copy of one page, and which of its line pointers hold a tuple the
/// snapshot sees (index 0 is offset 1).
pub struct PageCopy {
    pub bytes: Vec<u8>,
    pub visible: Vec<bool>,
    pub lsn: u64,
}

/// Copies a block of another database's relation, judging each tuple with
/// `snapshot` when one is given (heap pages), or raw (index pages).
pub fn copy_page(
    locator: RelLocator,
    fork: pg_sys::ForkNumber::Type,
    table_oid: u32,
    block: u32,
    snapshot: Option<pg_sys::Snapshot>,
) -> PageCopy {
    // SAFETY: the block exists (callers stay below block_count); the buffer
    // is pinned and share-locked while its page is read, and released after.
    unsafe {
        let buffer = compat::read_buffer(locator, fork, block, compat::BlockRead::Existing);
        pg_sys::LockBuffer(buffer, pg_sys::BUFFER_LOCK_SHARE as i32);
        let page_ptr = pg_sys::BufferGetPage(buffer) as *mut u8;
        let page_bytes = std::slice::from_raw_parts(page_ptr, page::BLCKSZ);
        let mut visible = Vec::new();
        if let Some(snapshot) = snapshot {
            for offset in 1..=page::max_offset(page_bytes) {
                let lp = page::line_pointer(page_bytes, offset);
                if lp.flags != LP_NORMAL {
                    visible.push(false);
                    continue;
                }
                let mut tuple = pg_sys::HeapTupleData {
                    t_len: lp.len as u32,
                    t_self: crate::state::tid::make_tid(block, offset as u16),
                    t_tableOid: pg_sys::Oid::from(table_oid),
                    t_data: page_ptr.add(lp.off as usize) as pg_sys::HeapTupleHeader,
                };
                visible.push(pg_sys::HeapTupleSatisfiesVisibility(
                    &mut tuple, snapshot, buffer,
                ));
            }
        }
        let bytes = page_bytes.to_vec();
        pg_sys::UnlockReleaseBuffer(buffer);
        let lsn = page_lsn(&bytes);
        PageCopy {
            bytes,
            visible,
            lsn,
        }
    }
}

pub fn page_lsn(page: &[u8]) -> u64 {
    let hi = u32::from_le_bytes(page[0..4].try_into().expect("4 bytes")) as u64;
    let lo = u32::from_le_bytes(page[4..8].try_into().expect("4 bytes")) as u64;
    (hi << 32) | lo
}

/// Calls `each` with the fixed-size part of every tuple the snapshot sees.
fn for_each_visible_tuple(
    locator: RelLocator,
    table_oid: u32,
    snapshot: pg_sys::Snapshot,
    mut each: impl FnMut(*const u8),
) {
    for block in 0..block_count(locator, pg_sys::ForkNumber::MAIN_FORKNUM) {
        let copy = copy_page(
            locator,
            pg_sys::ForkNumber::MAIN_FORKNUM,
            table_oid,
            block,
            Some(snapshot),
        );
        for (index, visible) in copy.visible.iter().enumerate() {
            if *visible {
                let lp = page::line_pointer(&copy.bytes, index + 1);
                let hoff = copy.bytes[lp.off as usize + 22] as usize;
                each(copy.bytes[lp.off as usize + hoff..].as_ptr());
            }
        }
    }
}
