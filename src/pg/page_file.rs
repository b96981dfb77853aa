//! Small files cowclone keeps inside a database directory, laid out as
//! PostgreSQL pages.
//!
//! Tools walk `base/<database>/` as if every file there were a relation:
//! `pg_checksums` fails on a file that is not a whole number of pages and
//! checks each page's checksum, and base backups verify checksums too. So
//! such a file is one page: a standard header, then the payload, with the
//! checksum set when the cluster has them. Written durably (new file, fsync,
//! rename, fsync of the directory) so a crash leaves the old or the new.

use std::fs;
use std::io::Write;
use std::path::Path;

use pgrx::pg_sys;

use crate::pg::page::{BLCKSZ, PAGE_HEADER_SIZE, PD_LOWER};

/// The most a one-page file can carry.
pub const MAX_PAYLOAD: usize = BLCKSZ - PAGE_HEADER_SIZE - 2;

/// The page holding `payload`: a length (u16, little-endian), then the bytes.
fn page_with(payload: &[u8]) -> Vec<u8> {
    assert!(
        payload.len() <= MAX_PAYLOAD,
        "a page file's payload fits a page"
    );
    let mut page = vec![0u8; BLCKSZ];
    // SAFETY: `page` is a BLCKSZ-byte buffer, which PageInit formats in
    // place; the checksum is computed over the same buffer.
    unsafe { pg_sys::PageInit(page.as_mut_ptr().cast(), BLCKSZ, 0) };
    let start = PAGE_HEADER_SIZE;
    page[start..start + 2].copy_from_slice(&(payload.len() as u16).to_le_bytes());
    page[start + 2..start + 2 + payload.len()].copy_from_slice(payload);
    let lower = (start + 2 + payload.len()) as u16;
    page[PD_LOWER..PD_LOWER + 2].copy_from_slice(&lower.to_le_bytes());
    // SAFETY: as above; a no-op when the cluster has no checksums.
    unsafe { pg_sys::PageSetChecksumInplace(page.as_mut_ptr().cast(), 0) };
    page
}

/// Writes `payload` to `path` as one page, durably. The temporary name has
/// no dot, so even a crash leftover looks like a relation file to tools.
pub fn write(path: &Path, payload: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().expect("a page file lives in a directory");
    let mut temporary = path.as_os_str().to_owned();
    temporary.push("_new");
    let temporary = Path::new(&temporary);
    let mut file = fs::File::create(temporary)?;
    file.write_all(&page_with(payload))?;
    file.sync_all()?;
    fs::rename(temporary, path)?;
    fs::File::open(dir)?.sync_all()
}

/// The payload of the page file at `path`, None if there is no such file.
/// A file that is not one of ours reads as an empty payload.
pub fn read(path: &Path) -> Option<Vec<u8>> {
    let bytes = fs::read(path).ok()?;
    if bytes.len() != BLCKSZ {
        return Some(Vec::new());
    }
    let start = PAGE_HEADER_SIZE;
    let length = u16::from_le_bytes([bytes[start], bytes[start + 1]]) as usize;
    Some(
        bytes
            .get(start + 2..start + 2 + length)
            .map(<[u8]>::to_vec)
            .unwrap_or_default(),
    )
}
