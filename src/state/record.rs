//! What cowclone remembers about each clone, and forgetting it when the
//! clone is dropped.
//!
//! A clone's record (source, clone point, the storage it shadows) is a
//! security label of its database in the shared catalog `pg_shseclabel`,
//! under provider `cowclone`: written in the cloning transaction, it
//! commits or aborts with the clone's `pg_database` row, PostgreSQL
//! WAL-logs it (standbys, crash recovery and point-in-time restores see it
//! exactly as of their point in WAL), base backups contain it, and
//! `DROP DATABASE` deletes it. No process needs more than a catalog read to
//! know every clone. No provider is registered for it, so `SECURITY LABEL
//! FOR cowclone` by hand fails. What must be known where no catalog can be
//! read lives in the clone's witness file (`state::witness`).
//!
//! Before 0.3.0 records were files, `$PGDATA/pg_cowclone/<clone oid>.state`
//! (same encoding); they are still read, and the source's pin holder moves
//! them into the catalog (`lifecycle::holder`).
//!
//! The label names the source in clear (`cowclone state 1 source <oid>
//! <hex>`): one source's records are found without decoding the others, so
//! one damaged record stops only what concerns its own source, and its
//! clone can still be dropped.
//!
//! Beside the records, in `pg_cowclone/` (never replicated: they concern
//! only the server that wrote them): the marker of a clone being built
//! (`<oid>.building`, read by `lifecycle::reconcile` after a crash), a
//! holder's step-aside request, and the lock that orders a source's clone
//! creation with the source guard's commit check.

use std::ffi::{CStr, CString};
use std::fs;
use std::io::Write;
use std::path::PathBuf;

use pgrx::{pg_sys, FromDatum, PgSqlErrorCode};
use serde::{Deserialize, Serialize};

use crate::pg::error::CowError;
use crate::pin::slot;
use crate::pin::snapshot::{xid_precedes, ClonePoint};
use crate::state::lineage::Level;
use crate::state::witness::{self, Witness};

const MAGIC: &[u8; 8] = b"COWCLON2";
const STATE_DIR: &str = "pg_cowclone";
/// The label provider the records are stored under.
pub(super) const PROVIDER: &CStr = c"cowclone";
/// A record's label: this prefix, `source <oid> `, then the encoded record
/// in hex. The source in clear lets one source's records be found without
/// decoding every other.
const LABEL_PREFIX: &str = "cowclone state 1 ";
/// pg_shseclabel (not in pgrx's bindings) and its columns, 1-based.
const SHARED_SECURITY_LABEL_RELATION_ID: pg_sys::Oid = pg_sys::Oid::from_u32(3592);
const ANUM_OBJOID: usize = 1;
const ANUM_CLASSOID: usize = 2;
const ANUM_PROVIDER: usize = 3;
const ANUM_LABEL: usize = 4;

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
    /// Relations already made the clone's own, and by which transaction
    /// (encoded after the record, in `Trailer`, so 0.3.0's library, which
    /// ignores trailing bytes, still reads the rest).
    #[serde(skip)]
    pub materialized: Vec<MaterializedStorage>,
    /// The source relation that owned each shadowed relfilenode at the
    /// clone point: (relfilenode, relation OID). Empty for clones made
    /// before 0.4.0. Lets the source guard see a relation's storage swapped
    /// for another's (pg_repack) although no file is dropped.
    #[serde(skip)]
    pub owners: Vec<(u32, u32)>,
    /// A clone of a clone: the clones between its root source and itself,
    /// oldest first, ending with itself (each with the point it was cut
    /// from its parent). Empty for a clone of an ordinary database, whose
    /// parent is `source` and whose point is `point`. Encoded after the
    /// 0.4.0 trailer (0.6.0), as a materialized clone's lineage encodes it.
    #[serde(skip)]
    pub chain: Vec<Level>,
}

/// What 0.4.0 encodes after the record.
#[derive(Default, Serialize, Deserialize)]
struct Trailer {
    materialized: Vec<MaterializedStorage>,
    owners: Vec<(u32, u32)>,
}

/// A relation of the clone that no longer reads its source: its rows were
/// copied into its own storage by transaction `xid`, which snapshots taken
/// before it committed do not see (they are refused, never answered wrongly).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaterializedStorage {
    pub relfilenode: u32,
    pub xid: u32,
}

impl CloneRecord {
    /// The encoding of 0.2.0's record files (read by `decode`).
    #[cfg(test)]
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

pub(super) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(super) fn unhex(hex: &str) -> Result<Vec<u8>, String> {
    if !hex.len().is_multiple_of(2) {
        return Err("odd number of hex digits".into());
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16))
        .collect::<Result<Vec<u8>, _>>()
        .map_err(|e| e.to_string())
}

/// The label of a record: prefix, source, hex of the encoded record (and,
/// once some relation is materialized, of that list after it).
fn to_label(record: &CloneRecord) -> String {
    let mut body = postcard::to_allocvec(record).expect("a record always serializes");
    if !record.materialized.is_empty() || !record.owners.is_empty() || !record.chain.is_empty() {
        let trailer = Trailer {
            materialized: record.materialized.clone(),
            owners: record.owners.clone(),
        };
        body.extend(postcard::to_allocvec(&trailer).expect("a trailer serializes"));
    }
    if !record.chain.is_empty() {
        body.extend(postcard::to_allocvec(&record.chain).expect("a chain serializes"));
    }
    format!("{LABEL_PREFIX}source {} {}", record.source, hex(&body))
}

fn is_record_label(label: &str) -> bool {
    label.starts_with(LABEL_PREFIX)
}

/// The source a label names, without decoding the record.
fn label_source(label: &str) -> Option<u32> {
    let rest = label.strip_prefix(LABEL_PREFIX)?.strip_prefix("source ")?;
    rest.split(' ').next()?.parse().ok()
}

fn from_label(label: &str) -> Result<CloneRecord, String> {
    let source = label_source(label).ok_or("not a cowclone record")?;
    let hex = label.rsplit(' ').next().ok_or("not a cowclone record")?;
    let body = unhex(hex)?;
    let (mut record, rest): (CloneRecord, &[u8]) =
        postcard::take_from_bytes(&body).map_err(|e| e.to_string())?;
    if !rest.is_empty() {
        let (trailer, rest): (Trailer, &[u8]) =
            postcard::take_from_bytes(rest).map_err(|e| e.to_string())?;
        record.materialized = trailer.materialized;
        record.owners = trailer.owners;
        if !rest.is_empty() {
            record.chain = postcard::from_bytes(rest).map_err(|e| e.to_string())?;
        }
    }
    if record.source != source {
        return Err("the label's source and its record disagree".into());
    }
    Ok(record)
}

/// A record that exists but cannot be decoded is never ignored: the clone's
/// rows would be read from the wrong place.
fn undecodable(clone: u32, why: &str) -> ! {
    CowError::new(
        PgSqlErrorCode::ERRCODE_DATA_CORRUPTED,
        format!("the cowclone record of database {clone} cannot be read: {why}"),
    )
    .hint("It was written by a newer cowclone, or damaged. Install the cowclone release that wrote it.")
    .raise()
}

pub fn data_dir() -> PathBuf {
    // SAFETY: DataDir is set once at startup and never freed.
    let data_dir = unsafe { CStr::from_ptr(pg_sys::DataDir) }
        .to_string_lossy()
        .into_owned();
    PathBuf::from(data_dir)
}

pub(super) fn state_dir() -> PathBuf {
    data_dir().join(STATE_DIR)
}

/// Where 0.2.0 and earlier kept a clone's record.
pub fn legacy_state_path(clone: pg_sys::Oid) -> PathBuf {
    state_dir().join(format!("{}.state", u32::from(clone)))
}

fn io_error(what: &str, path: &std::path::Path, e: std::io::Error) -> ! {
    CowError::new(
        PgSqlErrorCode::ERRCODE_IO_ERROR,
        format!("could not {what} \"{}\": {e}", path.display()),
    )
    .raise()
}

/// Writes a file in `pg_cowclone/` durably: temporary file, fsync, rename,
/// fsync directory.
pub(super) fn write_file(path: &std::path::Path, contents: &[u8]) {
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

fn database_address(database: pg_sys::Oid) -> pg_sys::ObjectAddress {
    pg_sys::ObjectAddress {
        classId: pg_sys::DatabaseRelationId,
        objectId: database,
        objectSubId: 0,
    }
}

/// Writes the witness of a clone being made, at the pin in force before
/// its clone point is taken (see `state::wal`); `save` moves it to T's xmin.
pub fn announce(clone: pg_sys::Oid, source: pg_sys::Oid, pin_xmin: u32) {
    // SAFETY: the cloning transaction has an xid (createdb inserted a row).
    let creating_xid = u32::from(unsafe { pg_sys::GetTopTransactionId() });
    write_witness(&Witness {
        clone: u32::from(clone),
        source: u32::from(source),
        pin_xmin,
        creating_xid,
    });
}

fn write_witness(witness: &Witness) {
    if !witness::record(witness) {
        CowError::new(
            PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
            format!("the directory of database {} is missing", witness.clone),
        )
        .raise();
    }
}

fn set_label(record: &CloneRecord) {
    write_label(
        pg_sys::Oid::from(record.clone),
        PROVIDER,
        Some(&to_label(record)),
    );
}

/// Sets `database`'s label of `provider` (None deletes it), in this
/// transaction, and makes it visible to the rest of the transaction.
pub(super) fn write_label(database: pg_sys::Oid, provider: &CStr, label: Option<&str>) {
    let address = database_address(database);
    let text = label.map(|l| CString::new(l).expect("labels have no NUL"));
    // SAFETY: a catalog write in this transaction; the address names a
    // database row that exists (this transaction made it, or it committed);
    // a null label deletes it.
    unsafe {
        pg_sys::SetSecurityLabel(
            &address,
            provider.as_ptr(),
            text.as_ref().map_or(std::ptr::null(), |t| t.as_ptr()),
        );
        pg_sys::CommandCounterIncrement();
    }
}

/// Records the clone this transaction makes: its label, then its witness
/// at T's xmin.
pub fn save(record: &CloneRecord) {
    set_label(record);
    announce(
        pg_sys::Oid::from(record.clone),
        pg_sys::Oid::from(record.source),
        record.point.xmin,
    );
}

/// Records an existing clone (a record file of 0.2.0 moved into the
/// catalog), with a witness whose creating transaction is known committed.
pub fn save_existing(record: &CloneRecord) {
    set_label(record);
    write_existing_witness(record);
}

/// Writes the witness of an existing clone again (one that was lost, or of
/// an older format). False if the database's directory is gone.
pub fn write_existing_witness(record: &CloneRecord) -> bool {
    witness::record(&Witness {
        clone: record.clone,
        source: record.source,
        pin_xmin: record.point.xmin,
        creating_xid: 0,
    })
}

/// Writes again the witness of each clone in `records` whose witness is
/// gone (removed by hand, say) or of an older format: without it the next
/// recovery would not pin its source from it. WAL-logged, with a WARNING
/// when it was missing. In a transaction.
pub fn restore_lost_witnesses(records: &[CloneRecord]) {
    for r in records {
        if witness::read(r.clone).is_some_and(|w| w.pin_xmin != 0) {
            continue;
        }
        let clone = pg_sys::Oid::from(r.clone);
        // SAFETY: a lock on a shared object, released at transaction end:
        // it waits out a DROP DATABASE of the clone (AccessExclusiveLock),
        // after which the syscache lookup sees the row gone.
        unsafe {
            pg_sys::LockSharedObject(
                pg_sys::DatabaseRelationId,
                clone,
                0,
                pg_sys::AccessShareLock as i32,
            );
        }
        // SAFETY: a syscache lookup of pg_database, in a transaction.
        if unsafe { pg_sys::get_database_name(clone) }.is_null() {
            continue;
        }
        let was_missing = !witness::exists(clone);
        if write_existing_witness(r) && was_missing {
            pgrx::warning!(
                "cowclone: the witness file of clone {} was missing; it was written again",
                r.clone
            );
        }
    }
}

/// Whether a database has a record in the catalog (not a 0.2.0 file).
pub fn has_label(database: pg_sys::Oid) -> bool {
    label_of(database).is_some()
}

/// A database's cowclone label of any kind (record or lineage). In a transaction.
pub(super) fn any_label_of(database: pg_sys::Oid, provider: &CStr) -> Option<String> {
    let address = database_address(database);
    // SAFETY: a catalog read in a transaction; a palloc'd string or null.
    let label = unsafe { pg_sys::GetSecurityLabel(&address, provider.as_ptr()) };
    // SAFETY: when not null, a NUL-terminated string from the catalog.
    (!label.is_null()).then(|| {
        unsafe { CStr::from_ptr(label) }
            .to_string_lossy()
            .into_owned()
    })
}

/// A database's cowclone label, if it has one. In a transaction.
fn label_of(database: pg_sys::Oid) -> Option<String> {
    any_label_of(database, PROVIDER).filter(|l| is_record_label(l))
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

/// T's xmin in a record file of 0.2.0, if one is there and reads; files
/// only, for the startup process.
pub fn legacy_pin_xmin(clone: u32) -> Option<u32> {
    let bytes = fs::read(legacy_state_path(pg_sys::Oid::from(clone))).ok()?;
    CloneRecord::decode(&bytes).ok().map(|r| r.point.xmin)
}

fn read_legacy(clone: pg_sys::Oid) -> Option<CloneRecord> {
    let bytes = fs::read(legacy_state_path(clone)).ok()?;
    Some(CloneRecord::decode(&bytes).unwrap_or_else(|e| undecodable(clone.into(), &e)))
}

/// The record of a database, or None if it is not a clone (or its record
/// is lost: `state::witness` tells). In a transaction.
pub fn read_record(clone: pg_sys::Oid) -> Option<CloneRecord> {
    let Some(label) = label_of(clone) else {
        return read_legacy(clone);
    };
    Some(from_label(&label).unwrap_or_else(|e| undecodable(clone.into(), &e)))
}

/// Every clone record in the catalog: (database, label, or None when the
/// label is stored out of line and `detoast` is false). Detoasting opens
/// the TOAST relation, which needs a database connection: the launcher,
/// connected to none, reads only labels stored inline.
fn labels(detoast: bool) -> Vec<(u32, Option<String>)> {
    // A lineage label is short, so always inline: one stored out of line
    // is a record.
    labels_of("cowclone", detoast)
        .into_iter()
        .filter(|(_, label)| label.as_deref().is_none_or(is_record_label))
        .collect()
}

/// Every label of `provider` on a database, as `labels` reads them.
pub(super) fn labels_of(provider: &str, detoast: bool) -> Vec<(u32, Option<String>)> {
    let mut found = Vec::new();
    // SAFETY: a heap scan of a shared catalog with a catalog snapshot, in a
    // transaction; each tuple is deformed with the catalog's own descriptor
    // and its text columns copied out before the next one is fetched.
    unsafe {
        let rel = pg_sys::table_open(
            SHARED_SECURITY_LABEL_RELATION_ID,
            pg_sys::AccessShareLock as i32,
        );
        let scan = pg_sys::systable_beginscan(
            rel,
            pg_sys::InvalidOid,
            false,
            std::ptr::null_mut(),
            0,
            std::ptr::null_mut(),
        );
        let natts = (*(*rel).rd_att).natts as usize;
        let mut values = vec![pg_sys::Datum::from(0); natts];
        let mut nulls = vec![false; natts];
        loop {
            let tuple = pg_sys::systable_getnext(scan);
            if tuple.is_null() {
                break;
            }
            pg_sys::heap_deform_tuple(
                tuple,
                (*rel).rd_att,
                values.as_mut_ptr(),
                nulls.as_mut_ptr(),
            );
            let text = |i: usize| {
                CStr::from_ptr(pg_sys::text_to_cstring(values[i - 1].cast_mut_ptr()))
                    .to_string_lossy()
                    .into_owned()
            };
            if nulls[ANUM_PROVIDER - 1] || nulls[ANUM_LABEL - 1] {
                continue;
            }
            let class = pg_sys::Oid::from_datum(values[ANUM_CLASSOID - 1], false);
            if class != Some(pg_sys::DatabaseRelationId) || text(ANUM_PROVIDER) != provider {
                continue;
            }
            let database = pg_sys::Oid::from_datum(values[ANUM_OBJOID - 1], false)
                .map(u32::from)
                .unwrap_or(0);
            let external = crate::pg::datum::is_stored_out_of_line(values[ANUM_LABEL - 1]);
            found.push((database, (detoast || !external).then(|| text(ANUM_LABEL))));
        }
        pg_sys::systable_endscan(scan);
        pg_sys::table_close(rel, pg_sys::AccessShareLock as i32);
    }
    found
}

/// Records 0.2.0 left in files and not yet moved into the catalog.
pub fn legacy_records() -> Vec<CloneRecord> {
    let Ok(entries) = fs::read_dir(state_dir()) else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            (path.extension()? == "state").then_some(())?;
            let clone = path.file_stem()?.to_str()?.parse::<u32>().ok()?;
            read_legacy(pg_sys::Oid::from(clone))
        })
        .collect()
}

/// Every clone's record (a record's database always exists: the catalog
/// deletes it with the database). In a transaction of a process connected
/// to a database.
pub fn all_records() -> Vec<CloneRecord> {
    let mut records: Vec<CloneRecord> = labels(true)
        .into_iter()
        .filter_map(|(database, label)| Some((database, label?)))
        .map(|(database, label)| from_label(&label).unwrap_or_else(|e| undecodable(database, &e)))
        .collect();
    add_legacy(&mut records);
    records
}

fn add_legacy(records: &mut Vec<CloneRecord>) {
    for legacy in legacy_records() {
        if !records.iter().any(|r| r.clone == legacy.clone) {
            records.push(legacy);
        }
    }
    records.sort_by_key(|r| r.clone);
}

/// What a process without a database connection (the launcher) can know of
/// the clones: each clone's database, and its record when the label is
/// stored inline and decodes (None otherwise). In a transaction.
pub fn clones_without_database() -> Vec<(u32, Option<CloneRecord>)> {
    let mut found: Vec<(u32, Option<CloneRecord>)> = labels(false)
        .into_iter()
        .map(|(database, label)| (database, label.and_then(|l| from_label(&l).ok())))
        .collect();
    for legacy in legacy_records() {
        if !found.iter().any(|(database, _)| *database == legacy.clone) {
            found.push((legacy.clone, Some(legacy)));
        }
    }
    found.sort_by_key(|(database, _)| *database);
    found
}

/// Removes a record file 0.2.0 left (once its clone is gone or migrated).
pub fn remove_legacy_file(clone: pg_sys::Oid) {
    let path = legacy_state_path(clone);
    if let Err(e) = fs::remove_file(&path) {
        if e.kind() != std::io::ErrorKind::NotFound {
            pgrx::warning!("cowclone: could not remove \"{}\": {e}", path.display());
        }
    }
}

/// Forgets a dropped clone of `source`: its label went with its database;
/// what an older version left (a per-clone slot, a record file) goes now.
/// The source's holder is woken to move its pin up to the oldest remaining
/// clone, or to let go of it.
pub fn forget_clone(clone: pg_sys::Oid, source: pg_sys::Oid) {
    slot::drop_slot(&slot::legacy_slot_name(clone));
    remove_legacy_file(clone);
    slot::wake_holder(source);
    pgrx::log!(
        "cowclone: clone {} of database {} dropped",
        u32::from(clone),
        u32::from(source)
    );
}

/// The records of one source's clones: a record of another source that
/// cannot be decoded does not stand in the way. In a transaction of a
/// process connected to a database.
pub fn clones_of(source: pg_sys::Oid) -> Vec<CloneRecord> {
    let mut records: Vec<CloneRecord> = labels(true)
        .into_iter()
        .filter_map(|(database, label)| Some((database, label?)))
        .filter(|(_, label)| label_source(label).is_none_or(|s| s == u32::from(source)))
        .map(|(database, label)| from_label(&label).unwrap_or_else(|e| undecodable(database, &e)))
        .collect();
    add_legacy(&mut records);
    records.retain(|r| r.source == u32::from(source));
    records
}

/// The source a database's record names, without decoding it (None if it
/// has no record or names none): enough to drop a clone whose record cannot
/// be decoded.
pub fn source_of(database: pg_sys::Oid) -> Option<pg_sys::Oid> {
    let Some(label) = label_of(database) else {
        return read_legacy(database).map(|r| pg_sys::Oid::from(r.source));
    };
    label_source(&label).map(pg_sys::Oid::from)
}

/// The clone whose clone point is oldest (circular xid order): the one that
/// holds its source's horizon.
pub fn oldest_clone_point<'a>(
    clones: impl IntoIterator<Item = &'a CloneRecord>,
) -> Option<&'a CloneRecord> {
    clones.into_iter().reduce(|a, b| {
        if xid_precedes(b.point.xmin, a.point.xmin) {
            b
        } else {
            a
        }
    })
}

/// Saves a clone's record again (its shadowed and materialized relations
/// changed), in this transaction.
pub fn update(record: &CloneRecord) {
    set_label(record);
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

/// Reads a WAL position written as pg_lsn writes it (`16/B374D848`).
pub fn parse_lsn(text: &str) -> Option<u64> {
    let (high, low) = text.trim().split_once('/')?;
    let high = u32::from_str_radix(high, 16).ok()?;
    let low = u32::from_str_radix(low, 16).ok()?;
    Some((u64::from(high) << 32) | u64::from(low))
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
            materialized: vec![MaterializedStorage {
                relfilenode: 16391,
                xid: 800,
            }],
            owners: vec![(16390, 16388)],
            chain: Vec::new(),
        };
        let legacy = CloneRecord {
            materialized: Vec::new(),
            owners: Vec::new(),
            ..record.clone()
        };
        let nested = CloneRecord {
            depth: 2,
            chain: record.chain_for_child(
                "staging",
                Level {
                    oid: 16600,
                    name: "dev1".into(),
                    point_lsn: 0x1_7000_0000,
                    point_time: 2_000_000,
                    created_at: 2_000_100,
                },
            ),
            ..record.clone()
        };
        assert_eq!(from_label(&to_label(&nested)).unwrap(), nested);
        assert_eq!(nested.parent(), (16500, "staging".to_string()));
        assert_eq!(nested.branch_point(), (0x1_7000_0000, 2_000_000));
        assert_eq!(record.parent(), (16384, "prod".to_string()));
        assert_eq!(record.branch_point(), (0x1_6B37_4D48, 1_000_000));
        assert_eq!(CloneRecord::decode(&legacy.encode()).unwrap(), legacy);
        assert_eq!(from_label(&to_label(&legacy)).unwrap(), legacy);
        assert_eq!(from_label(&to_label(&record)).unwrap(), record);
        assert_eq!(label_source(&to_label(&record)), Some(16384));
        assert!(from_label("cowclone state 1 source 16384 0g").is_err());
        assert!(from_label("cowclone state 2 source 16384 00").is_err());
        let other_source = to_label(&record).replace("source 16384", "source 99");
        assert!(from_label(&other_source).is_err());
        assert!(CloneRecord::decode(b"something else").is_err());
        assert!(CloneRecord::decode(&legacy.encode()[..12]).is_err());
    }

    #[test]
    fn lsns_print_like_postgres() {
        assert_eq!(format_lsn(0x1_6B37_4D48), "1/6B374D48");
        assert_eq!(format_lsn(0), "0/0");
    }
}
