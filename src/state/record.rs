//! What cowclone remembers about each clone, and forgetting it when the
//! clone is dropped.
//!
//! One state file per clone in `$PGDATA/pg_cowclone/<clone oid>.state`
//! (magic, then a postcard-encoded `CloneRecord`), written durably before the
//! cloning transaction commits, plus the clone's pin (slot
//! `cowclone_<clone oid>`). Records whose database does not exist are
//! ignored by the views; `DROP DATABASE` of a clone removes both.
//!
//! Beside the records: the marker of a clone being built (`<oid>.building`,
//! read by `lifecycle::reconcile` after a crash) and the lock that orders
//! a source's clone creation with the source guard's commit check.

use std::ffi::CStr;
use std::fs;
use std::io::Write;
use std::path::PathBuf;

use pgrx::{pg_sys, PgSqlErrorCode};
use serde::{Deserialize, Serialize};

use crate::pg::error::CowError;
use crate::pin::slot;
use crate::pin::snapshot::ClonePoint;

const MAGIC: &[u8; 8] = b"COWCLON2";
const STATE_DIR: &str = "pg_cowclone";

/// A relation of the source whose storage a clone reads.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShadowedStorage {
    pub relfilenode: u32,
    /// The relation's name at the clone point, for error messages.
    pub name: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloneRecord {
    pub clone: u32,
    pub source: u32,
    /// The source's name when the clone was made, shown if it is dropped since.
    pub source_name: String,
    pub depth: u32,
    pub point: ClonePoint,
    pub created_at: i64,
    /// Storage in the source this clone reads (pg_default tablespace).
    pub shadowed: Vec<ShadowedStorage>,
}

impl CloneRecord {
    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = MAGIC.to_vec();
        bytes.extend(postcard::to_allocvec(self).expect("a record always serializes"));
        bytes
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        let body = bytes
            .strip_prefix(MAGIC.as_slice())
            .ok_or("not a cowclone state file")?;
        postcard::from_bytes(body).map_err(|e| e.to_string())
    }
}

fn data_dir() -> PathBuf {
    // SAFETY: DataDir is set once at startup and never freed.
    let data_dir = unsafe { CStr::from_ptr(pg_sys::DataDir) }
        .to_string_lossy()
        .into_owned();
    PathBuf::from(data_dir)
}

fn state_dir() -> PathBuf {
    data_dir().join(STATE_DIR)
}

pub fn state_path(clone: pg_sys::Oid) -> PathBuf {
    state_dir().join(format!("{}.state", u32::from(clone)))
}

fn io_error(what: &str, path: &std::path::Path, e: std::io::Error) -> ! {
    CowError::new(
        PgSqlErrorCode::ERRCODE_IO_ERROR,
        format!("could not {what} \"{}\": {e}", path.display()),
    )
    .raise()
}

/// Writes a file durably: temporary file, fsync, rename, fsync directory.
pub fn write_file(path: &std::path::Path, contents: &[u8]) {
    let dir = state_dir();
    fs::create_dir_all(&dir).unwrap_or_else(|e| io_error("create directory", &dir, e));
    let temporary = path.with_extension("tmp");
    let mut file =
        fs::File::create(&temporary).unwrap_or_else(|e| io_error("create file", &temporary, e));
    file.write_all(contents)
        .unwrap_or_else(|e| io_error("write file", &temporary, e));
    file.sync_all()
        .unwrap_or_else(|e| io_error("fsync file", &temporary, e));
    fs::rename(&temporary, path).unwrap_or_else(|e| io_error("rename file", &temporary, e));
    fs::File::open(&dir)
        .and_then(|d| d.sync_all())
        .unwrap_or_else(|e| io_error("fsync directory", &dir, e));
}

pub fn write_record(record: &CloneRecord) {
    write_file(
        &state_path(pg_sys::Oid::from(record.clone)),
        &record.encode(),
    );
}

/// Where `cow.clone` marks a clone as being built (see `lifecycle::reconcile`).
pub fn marker_path(clone: pg_sys::Oid) -> PathBuf {
    state_dir().join(format!("{}.building", u32::from(clone)))
}

/// Writes this transaction's marker for the clone being built.
pub fn mark_building(clone: pg_sys::Oid) {
    // SAFETY: the transaction already has an xid (createdb inserted a row).
    let xid = u32::from(unsafe { pg_sys::GetTopTransactionId() });
    write_file(&marker_path(clone), xid.to_string().as_bytes());
}

pub fn unmark_building(clone: pg_sys::Oid) {
    let _ = fs::remove_file(marker_path(clone));
}

/// A file in the clone's own database directory saying it is a clone, so
/// that a clone whose state file is lost is told apart from a database
/// restored from a clone's dump (both have `cow` relations and no record).
/// It goes with the directory when the database is dropped.
fn clone_mark_path(database: pg_sys::Oid) -> PathBuf {
    data_dir()
        .join("base")
        .join(u32::from(database).to_string())
        .join("cowclone_clone")
}

pub fn mark_as_clone(clone: pg_sys::Oid, source: pg_sys::Oid) {
    write_file(
        &clone_mark_path(clone),
        u32::from(source).to_string().as_bytes(),
    );
}

pub fn marked_as_clone(database: pg_sys::Oid) -> bool {
    clone_mark_path(database).exists()
}

/// Where a backend asks a source's pin holder to stay away
/// (`lifecycle::holder::step_aside`); the file holds that backend's pid.
fn aside_path(source: pg_sys::Oid) -> PathBuf {
    state_dir().join(format!("{}.aside", u32::from(source)))
}

pub fn ask_aside(source: pg_sys::Oid) {
    // SAFETY: this backend's pid, set at start.
    let pid = unsafe { pg_sys::MyProcPid };
    write_file(&aside_path(source), pid.to_string().as_bytes());
}

/// Whether a live backend asked the source's holder to stay away.
pub fn aside_asked(source: pg_sys::Oid) -> bool {
    let Some(pid) = fs::read_to_string(aside_path(source))
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
    else {
        return false;
    };
    // SAFETY: BackendPidGetProc takes ProcArrayLock; null once that backend is gone.
    !unsafe { pg_sys::BackendPidGetProc(pid) }.is_null()
}

pub fn end_aside(source: pg_sys::Oid) {
    let _ = fs::remove_file(aside_path(source));
}

/// (clone, building transaction) for every marker on disk.
pub fn building_markers() -> Vec<(pg_sys::Oid, u32)> {
    let Ok(entries) = fs::read_dir(state_dir()) else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            (path.extension()? == "building").then_some(())?;
            let clone = path.file_stem()?.to_str()?.parse::<u32>().ok()?;
            let xid = fs::read_to_string(&path).ok()?.trim().parse::<u32>().ok()?;
            Some((pg_sys::Oid::from(clone), xid))
        })
        .collect()
}

pub fn read_record(clone: pg_sys::Oid) -> Option<CloneRecord> {
    let bytes = fs::read(state_path(clone)).ok()?;
    CloneRecord::decode(&bytes).ok()
}

/// Every record on disk, whether or not its clone still exists.
pub fn all_records() -> Vec<CloneRecord> {
    let Ok(entries) = fs::read_dir(state_dir()) else {
        return Vec::new();
    };
    let mut records: Vec<CloneRecord> = entries
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            (path.extension()? == "state").then_some(())?;
            CloneRecord::decode(&fs::read(path).ok()?).ok()
        })
        .collect();
    records.sort_by_key(|r| r.clone);
    records
}

pub fn remove_record(clone: pg_sys::Oid) {
    let path = state_path(clone);
    if let Err(e) = fs::remove_file(&path) {
        if e.kind() != std::io::ErrorKind::NotFound {
            pgrx::warning!("cowclone: could not remove \"{}\": {e}", path.display());
        }
    }
}

/// Forgets a clone: its record (and a per-clone slot an older version
/// made). Called after its database is gone. The source's holder is woken
/// to move its pin up to the oldest remaining clone, or to let go of it.
pub fn forget_clone(clone: pg_sys::Oid) {
    let Some(record) = read_record(clone) else {
        return;
    };
    slot::drop_slot(&slot::legacy_slot_name(clone));
    remove_record(clone);
    let source = pg_sys::Oid::from(record.source);
    slot::wake_holder(source);
    pgrx::log!(
        "cowclone: clone {} of database {} dropped",
        u32::from(clone),
        u32::from(source)
    );
}

/// The records of one source's clones.
pub fn clones_of(source: pg_sys::Oid) -> Vec<CloneRecord> {
    all_records()
        .into_iter()
        .filter(|r| r.source == u32::from(source))
        .collect()
}

/// The clone whose clone point is oldest (circular xid order): the one that
/// holds its source's horizon.
pub fn oldest_clone_point<'a>(
    clones: impl IntoIterator<Item = &'a CloneRecord>,
) -> Option<&'a CloneRecord> {
    clones.into_iter().reduce(|a, b| {
        let (xa, xb) = (a.point.xmin, b.point.xmin);
        // SAFETY: a pure comparison of two transaction ids.
        if unsafe { pg_sys::TransactionIdPrecedes(xb.into(), xa.into()) } {
            b
        } else {
            a
        }
    })
}

/// The lock that orders clone creation against storage drops in a source.
pub fn lock_source(source: pg_sys::Oid) {
    // SAFETY: a lock on a shared object, released at transaction end. Among
    // the modes DDL takes on a database object (RowExclusiveLock to create
    // storage) it conflicts only with itself, so DDL never waits for a clone.
    unsafe {
        pg_sys::LockSharedObject(
            pg_sys::DatabaseRelationId,
            source,
            0,
            pg_sys::ShareUpdateExclusiveLock as i32,
        )
    };
}

pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_reject_foreign_files() {
        let record = CloneRecord {
            clone: 16500,
            source: 16384,
            source_name: "prod".into(),
            depth: 1,
            point: ClonePoint {
                xmin: 740,
                xmax: 745,
                running: vec![741, 743],
                lsn: 0x1_6B37_4D48,
                taken_at: 1_000_000,
            },
            created_at: 1_000_100,
            shadowed: vec![ShadowedStorage {
                relfilenode: 16390,
                name: "accounts".into(),
            }],
        };
        assert_eq!(CloneRecord::decode(&record.encode()).unwrap(), record);
        assert!(CloneRecord::decode(b"something else").is_err());
        assert!(CloneRecord::decode(&record.encode()[..12]).is_err());
    }

    #[test]
    fn lsns_print_like_postgres() {
        assert_eq!(format_lsn(0x1_6B37_4D48), "1/6B374D48");
        assert_eq!(format_lsn(0), "0/0");
    }
}
