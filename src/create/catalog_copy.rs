//! Building the clone's catalog: a physical copy of the source's catalog as
//! of the clone point, so that every OID in the clone equals the source's.
//!
//! Order per attempt (docs/ARCHITECTURE.md explains why):
//! 1. copy every catalog index raw, remembering each page's LSN;
//! 2. copy every catalog heap, sanitized as of T (`sanitize::sanitize_heap_page`);
//! 3. check that no index page changed since step 1. Then every index entry
//!    points at a line pointer that exists in the heap copy, and every tuple
//!    T sees has its entries. Otherwise the attempt is repeated.
//!
//! Pages are held in memory until the copy is known to be consistent, then
//! written into the clone with full-page WAL records.

use std::collections::{HashMap, HashSet};

use pgrx::{pg_sys, PgSqlErrorCode};

use crate::create::sanitize;
use crate::create::source::{self, SourceDatabase, SourceRelation};
use crate::pg::compat::{self, RelLocator};
use crate::pg::error::CowError;
use crate::pg::page::{self, LP_NORMAL};

const PG_CLASS: u32 = 1259;
const COPY_ATTEMPTS: usize = 5;

/// One relation's pages, ready to be written into the clone.
pub struct CopiedRelation {
    pub relfilenode: u32,
    pub pages: Vec<Vec<u8>>,
}

/// How `pg_class` rows of shadowed relations change in the clone: their
/// access method becomes cowclone's wrapper of it.
pub struct AccessMethodSwitch {
    /// original AM oid -> cowclone AM oid
    pub replacement: HashMap<u32, u32>,
}

impl AccessMethodSwitch {
    /// Rewrites `relam` in place for shadowed relations on a sanitized pg_class page.
    fn apply(&self, page_bytes: &mut [u8]) {
        let relam_at = std::mem::offset_of!(pg_sys::FormData_pg_class, relam);
        for offset in 1..=page::max_offset(page_bytes) {
            let lp = page::line_pointer(page_bytes, offset);
            if lp.flags != LP_NORMAL {
                continue;
            }
            let data = lp.off as usize + page_bytes[lp.off as usize + 22] as usize;
            // SAFETY: the tuple is a pg_class row; its fixed part is a FormData_pg_class.
            let form = unsafe {
                std::ptr::read_unaligned(
                    page_bytes[data..].as_ptr() as *const pg_sys::FormData_pg_class
                )
            };
            if !is_shadowed(
                u32::from(form.oid),
                form.relkind as u8,
                form.relpersistence as u8,
                u32::from(form.relnamespace),
            ) {
                continue;
            }
            if let Some(new_am) = self.replacement.get(&u32::from(form.relam)) {
                page_bytes[data + relam_at..data + relam_at + 4]
                    .copy_from_slice(&new_am.to_le_bytes());
            }
        }
    }
}

/// A relation of the clone whose rows stay in the source: user tables,
/// materialized views, their TOAST tables and their indexes.
pub fn is_shadowed(oid: u32, kind: u8, persistence: u8, namespace: u32) -> bool {
    oid >= source::FIRST_NORMAL_OBJECT_ID
        && namespace != extension_namespace()
        && persistence != b't'
        && matches!(kind, b'r' | b'm' | b't' | b'i')
}

/// The extension's own schema in the source being cloned: its tables (the
/// tombstones) are the clone's own from the start, copied as they are
/// (empty outside clones), never shadowed. Read from the source's catalog,
/// since `cow.clone` may run in another database. One clone at a time per
/// backend, so a process-wide value is enough.
static EXTENSION_NAMESPACE: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

pub fn set_extension_namespace(oid: u32) {
    EXTENSION_NAMESPACE.store(oid, std::sync::atomic::Ordering::Relaxed);
}

fn extension_namespace() -> u32 {
    EXTENSION_NAMESPACE.load(std::sync::atomic::Ordering::Relaxed)
}

fn is_copied_catalog(rel: &SourceRelation) -> bool {
    rel.is_system() && !rel.shared && matches!(rel.kind, b'r' | b't' | b'i')
}

/// Copies the source's catalog as of `snapshot`, consistently.
pub fn copy_catalog(
    source: &SourceDatabase,
    relations: &[SourceRelation],
    snapshot: pg_sys::Snapshot,
    switch: &AccessMethodSwitch,
) -> Vec<CopiedRelation> {
    let catalog: Vec<&SourceRelation> = relations.iter().filter(|r| is_copied_catalog(r)).collect();
    for _ in 0..COPY_ATTEMPTS {
        let indexes: Vec<(RelLocator, &SourceRelation, Vec<source::PageCopy>)> = catalog
            .iter()
            .filter(|r| r.kind == b'i')
            .map(|r| {
                let locator = source.locator(r.relfilenode);
                (locator, *r, copy_relation(locator, r.oid, None))
            })
            .collect();
        let mut copies = Vec::with_capacity(catalog.len());
        for rel in catalog.iter().filter(|r| r.kind != b'i') {
            let pages = copy_relation(source.locator(rel.relfilenode), rel.oid, Some(snapshot));
            let mut sanitized = Vec::with_capacity(pages.len());
            for (block, copy) in pages.into_iter().enumerate() {
                let mut bytes = sanitized_page(copy, block as u32, &rel.name);
                if rel.oid == PG_CLASS {
                    switch.apply(&mut bytes);
                }
                sanitized.push(bytes);
            }
            copies.push(CopiedRelation {
                relfilenode: rel.relfilenode,
                pages: sanitized,
            });
        }
        let stable = indexes
            .iter()
            .all(|(locator, rel, pages)| unchanged(*locator, rel.oid, pages));
        if stable {
            copies.extend(indexes.into_iter().map(|(_, rel, pages)| CopiedRelation {
                relfilenode: rel.relfilenode,
                pages: pages.into_iter().map(|p| p.bytes).collect(),
            }));
            return copies;
        }
    }
    CowError::new(
        PgSqlErrorCode::ERRCODE_T_R_SERIALIZATION_FAILURE,
        "the source's catalog kept changing during the clone",
    )
    .detail(format!(
        "Its catalog indexes changed during each of {COPY_ATTEMPTS} copy attempts."
    ))
    .hint("Retry when less DDL runs in the source database.")
    .raise()
}

/// A copied heap page with exactly the tuples its snapshot saw, frozen.
fn sanitized_page(mut copy: source::PageCopy, block: u32, name: &str) -> Vec<u8> {
    let visible = std::mem::take(&mut copy.visible);
    sanitize::sanitize_heap_page(&mut copy.bytes, block, &|offset| visible[offset - 1])
        .unwrap_or_else(|e| {
            CowError::new(
                PgSqlErrorCode::ERRCODE_DATA_CORRUPTED,
                format!("relation \"{name}\" of the source is corrupted"),
            )
            .detail(format!("Block {block}: {}.", e.0))
            .raise()
        });
    copy.bytes
}

/// Copies one fork of a relation of the source into an empty fork of the
/// clone, a batch of pages at a time (a clone of a clone copies its
/// parent's own relations this way, however large): heap pages sanitized
/// as of `snapshot` when one is given, other pages as they are. Forks that
/// shared buffers cannot hold as permanent (`logged` false, init forks) are
/// written and synced directly.
pub fn copy_fork(
    from: RelLocator,
    fork: pg_sys::ForkNumber::Type,
    oid: u32,
    name: &str,
    snapshot: Option<pg_sys::Snapshot>,
    to: RelLocator,
    logged: bool,
) {
    const BATCH: u32 = 128;
    let blocks = source::block_count(from, fork);
    let mut start = 0;
    while start < blocks {
        let end = (start + BATCH).min(blocks);
        let pages: Vec<Vec<u8>> = (start..end)
            .map(|block| {
                let copy = source::copy_page(from, fork, oid, block, snapshot);
                match snapshot {
                    Some(_) => sanitized_page(copy, block, name),
                    None => copy.bytes,
                }
            })
            .collect();
        if logged && fork == pg_sys::ForkNumber::MAIN_FORKNUM {
            write_pages_at(to, start, &pages);
        } else {
            write_pages_synced_at(to, fork, start, &pages);
        }
        start = end;
    }
}

pub fn copy_relation(
    locator: RelLocator,
    oid: u32,
    snapshot: Option<pg_sys::Snapshot>,
) -> Vec<source::PageCopy> {
    let main = pg_sys::ForkNumber::MAIN_FORKNUM;
    (0..source::block_count(locator, main))
        .map(|block| source::copy_page(locator, main, oid, block, snapshot))
        .collect()
}

/// Whether an index still has exactly the pages that were copied.
pub fn unchanged(locator: RelLocator, oid: u32, pages: &[source::PageCopy]) -> bool {
    let main = pg_sys::ForkNumber::MAIN_FORKNUM;
    source::block_count(locator, main) as usize == pages.len()
        && pages.iter().enumerate().all(|(block, copy)| {
            source::copy_page(locator, main, oid, block as u32, None).lsn == copy.lsn
        })
}

/// Writes the copied catalog into the clone's directory, which `createdb`
/// filled from template0: template0's relations are truncated (when the
/// source uses the same relfilenode) or dropped at commit (otherwise), both
/// WAL-logged, so a standby ends up with exactly the same files.
pub fn write_catalog(clone: pg_sys::Oid, tablespace: pg_sys::Oid, copies: &[CopiedRelation]) {
    let wanted: HashSet<u32> = copies.iter().map(|c| c.relfilenode).collect();
    let existing = existing_relfilenodes(clone, tablespace);
    for node in &existing {
        let locator = compat::rel_locator(tablespace, clone, pg_sys::Oid::from(*node));
        // SAFETY: nobody can use the clone before this transaction commits and
        // its buffers were dropped; a fake relcache entry is what recovery
        // uses for the same storage operations.
        unsafe {
            let fake = pg_sys::CreateFakeRelcacheEntry(locator);
            if wanted.contains(node) {
                pg_sys::RelationTruncate(fake, 0);
            } else {
                pg_sys::RelationDropStorage(fake);
            }
            pg_sys::FreeFakeRelcacheEntry(fake);
        }
    }
    for copy in copies {
        let locator = compat::rel_locator(tablespace, clone, pg_sys::Oid::from(copy.relfilenode));
        if !existing.contains(&copy.relfilenode) {
            // SAFETY: the file does not exist yet; it is removed if we abort.
            unsafe {
                pg_sys::RelationCreateStorage(
                    locator,
                    pg_sys::RELPERSISTENCE_PERMANENT as std::ffi::c_char,
                    true,
                )
            };
        }
        write_pages(locator, &copy.pages);
    }
}

/// Appends pages to an empty main fork of a permanent relation the way
/// PostgreSQL's own WAL_LOG database creation does: through shared buffers,
/// each page WAL-logged as a full image in a critical section. The
/// checkpointer makes them durable like any other dirty buffer, so there is
/// no fsync per relation (once ~220 of them per clone, and most of its time).
pub fn write_pages(locator: RelLocator, pages: &[Vec<u8>]) {
    write_pages_at(locator, 0, pages);
}

/// `write_pages` for a fork that already has `start` blocks.
fn write_pages_at(locator: RelLocator, start: u32, pages: &[Vec<u8>]) {
    let Some(last) = (pages.len() as u32).checked_sub(1) else {
        return;
    };
    let last = start + last;
    let main = pg_sys::ForkNumber::MAIN_FORKNUM;
    // SAFETY: the fork exists and is empty and nobody else can use it before
    // this transaction commits; each buffer is pinned and exclusively locked
    // while its page is filled, and nothing in the critical section can fail
    // short of a PANIC, as in PostgreSQL's own copy.
    unsafe {
        compat::extend_to(locator, main, last, true);
        for (block, bytes) in (start..).zip(pages) {
            let buffer =
                compat::read_buffer(locator, main, block, compat::BlockRead::ZeroedAndLocked);
            let page = pg_sys::BufferGetPage(buffer) as *mut u8;
            pg_sys::CritSectionCount += 1;
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), page, page::BLCKSZ);
            pg_sys::MarkBufferDirty(buffer);
            pg_sys::log_newpage_buffer(buffer, true);
            pg_sys::CritSectionCount -= 1;
            pg_sys::UnlockReleaseBuffer(buffer);
        }
    }
}

/// Appends pages to a fork of `start` blocks the buffers cannot hold as
/// permanent (the main fork of an unlogged relation, init forks): WAL
/// first, then the file, then fsync before commit, the pattern of
/// RelationCopyStorage.
fn write_pages_synced_at(
    locator: RelLocator,
    fork: pg_sys::ForkNumber::Type,
    start: u32,
    pages: &[Vec<u8>],
) {
    // SAFETY: the fork exists with `start` blocks; each page is a full BLCKSZ buffer we own.
    unsafe {
        let smgr = compat::smgr_open(locator);
        for (block, bytes) in (start..).zip(pages) {
            let mut page = bytes.clone();
            compat::log_newpage(locator, fork, block, page.as_mut_ptr());
            pg_sys::PageSetChecksumInplace(page.as_mut_ptr().cast(), block);
            compat::extend_with(smgr, fork, block, &page, false);
        }
        pg_sys::smgrimmedsync(smgr, fork);
    }
}

/// Relfilenodes with a main fork in a database directory.
fn existing_relfilenodes(database: pg_sys::Oid, tablespace: pg_sys::Oid) -> HashSet<u32> {
    let dir = source::database_dir(database, tablespace);
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| {
        CowError::new(
            PgSqlErrorCode::ERRCODE_IO_ERROR,
            format!("could not read directory \"{}\": {e}", dir.display()),
        )
        .raise()
    });
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .collect()
}
