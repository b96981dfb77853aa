//! cowclone's WAL resource manager: what a clone needs outside the catalog
//! reaches standbys, crash recovery and restored base backups through WAL.
//!
//! The clone's record lives in a shared catalog (`state::record`), which
//! PostgreSQL WAL-logs itself. Two things cannot wait for a catalog:
//! - the witness file (`state::witness`), which redo writes again;
//! - the pins, which slots carry and which are neither replicated nor in
//!   base backups. So the primary WAL-logs every change of a source's pin
//!   (`PIN`: its holder recording a new xmin, the slot dropped), and the
//!   startup process applies them to the same slot during recovery
//!   (`pin::slot::set_pin_in_recovery`). Besides, only ever moving a pin
//!   down or making one, it pins each source at its witnesses' oldest pin:
//!   - at every witness record;
//!   - when replay starts (`rm_startup`), for witnesses a base backup
//!     brought without their records;
//!   - when recovery ends (`rm_cleanup`), before the server leaves recovery
//!     and so before any backend may prune or vacuum.
//!
//! Witnesses never move a pin up: a clone without a witness (one lost, or
//! of 0.1.0) is known only to the catalog, which the primary's holder reads
//! before it logs a higher pin.
//!
//! Slot xmins count in a standby's horizons. That is what keeps a
//! hot-standby session that survives a promotion from pruning with a
//! horizon it computed before, and why a clone's first witness record is
//! written before its clone point is taken, at the pin already in force: a
//! horizon computed on a standby before that record is replayed is no newer
//! than the clone point (snapshot xmins never go backwards), one computed
//! after counts the slot. The cost: with `hot_standby_feedback = on`, the
//! standby reports that xmin to its primary, which then holds back vacuum
//! to the oldest clone point in every database, as for any standby slot.
//!
//! ID 150 in the custom range (128–255; 128 is for experiments; IDs up to
//! 140 and 241 are taken on PostgreSQL's wiki page of custom WAL resource
//! managers). A server replaying this WAL without cowclone preloaded stops
//! with "resource manager with ID 150 not registered" rather than lose a
//! clone's state.

use std::ffi::CStr;

use pgrx::pg_sys;

use crate::pg::compat;
use crate::pg::failpoint;
use crate::pin::slot;
use crate::pin::snapshot::older_xid;
use crate::state::record;
use crate::state::witness::{self, Witness};

pub const RMGR_ID: u8 = 150;
const RMGR_NAME: &CStr = c"cowclone";
/// Info bits of the record types: a clone's witness (written, or moved to
/// its clone point), and a source's pin set by the primary.
const XLOG_COWCLONE_WITNESS: u8 = 0x10;
const XLOG_COWCLONE_PIN: u8 = 0x20;
/// A materialized clone's witness removed: the database is no longer a clone.
const XLOG_COWCLONE_UNWITNESS: u8 = 0x30;

static mut RMGR: pg_sys::RmgrData = pg_sys::RmgrData {
    rm_name: RMGR_NAME.as_ptr(),
    rm_redo: Some(redo),
    rm_desc: Some(describe),
    rm_identify: Some(identify),
    rm_startup: Some(start_of_redo),
    rm_cleanup: Some(end_of_recovery),
    rm_mask: None,
    rm_decode: None,
};

/// Registers the resource manager; only while the postmaster preloads the
/// library, as PostgreSQL requires.
pub fn register() {
    // SAFETY: called once from _PG_init during shared_preload_libraries;
    // PostgreSQL keeps the pointer, and the static lives for the process.
    unsafe { pg_sys::RegisterCustomRmgr(RMGR_ID, &raw mut RMGR) };
}

/// WAL-logs a clone's witness, flushed: the file is written next, and no
/// crash may keep the file without its record.
pub fn log_witness(witness: &Witness) {
    insert(XLOG_COWCLONE_WITNESS, &witness.encode());
}

/// WAL-logs a source's pin as the primary now records it (None: the slot
/// is dropped), so standbys and crash recovery set the same.
pub fn log_pin(source: pg_sys::Oid, xmin: Option<u32>) {
    let mut bytes = u32::from(source).to_le_bytes().to_vec();
    bytes.extend(xmin.unwrap_or(0).to_le_bytes());
    insert(XLOG_COWCLONE_PIN, &bytes);
}

/// WAL-logs the removal of a materialized clone's witness, flushed before
/// the file goes.
pub fn log_unwitness(clone: u32) {
    insert(XLOG_COWCLONE_UNWITNESS, &clone.to_le_bytes());
}

fn insert(info: u8, bytes: &[u8]) {
    // SAFETY: the standard three-step insertion, with the data borrowed
    // until XLogInsert returns; then the WAL up to the record is flushed.
    unsafe {
        pg_sys::XLogBeginInsert();
        compat::xlog_register_data(bytes);
        let lsn = pg_sys::XLogInsert(RMGR_ID, info);
        pg_sys::XLogFlush(lsn);
    }
}

fn decode_pin(data: &[u8]) -> Option<(u32, Option<u32>)> {
    let source = u32::from_le_bytes(data.get(0..4)?.try_into().ok()?);
    let xmin = u32::from_le_bytes(data.get(4..8)?.try_into().ok()?);
    (data.len() == 8).then_some((source, (xmin != 0).then_some(xmin)))
}

/// The main data of the record being replayed and its info bits.
///
/// # Safety
/// `record` is the reader state PostgreSQL passes to a redo or desc callback.
unsafe fn record_data<'a>(record: *mut pg_sys::XLogReaderState) -> (u8, &'a [u8]) {
    // SAFETY: guaranteed by the caller; the decoded record outlives the callback.
    unsafe {
        let decoded = (*record).record;
        let info = (*decoded).header.xl_info & !(pg_sys::XLR_INFO_MASK as u8);
        let data = std::slice::from_raw_parts(
            (*decoded).main_data as *const u8,
            (*decoded).main_data_len as usize,
        );
        (info, data)
    }
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn redo(record: *mut pg_sys::XLogReaderState) {
    // SAFETY: PostgreSQL passes the record being replayed.
    let (info, data) = unsafe { record_data(record) };
    match info {
        XLOG_COWCLONE_WITNESS => {
            let Some(witness) = Witness::decode(data) else {
                pgrx::error!("cowclone redo: malformed witness record");
            };
            failpoint::reached("redo_witness");
            match witness::write_file(&witness) {
                Ok(true) => {}
                // Replaying the creation of a clone whose database a later
                // record drops: nothing to write.
                Ok(false) => pgrx::debug1!(
                    "cowclone redo: database {} is gone, witness not written",
                    witness.clone
                ),
                Err(e) => pgrx::error!(
                    "cowclone redo: could not write \"{}\": {e}",
                    witness::path(witness.clone).display()
                ),
            }
            if witness.pin_xmin != 0 {
                slot::set_pin_in_recovery(
                    pg_sys::Oid::from(witness.source),
                    Some(witness.pin_xmin),
                    true,
                );
            }
        }
        XLOG_COWCLONE_PIN => {
            let Some((source, xmin)) = decode_pin(data) else {
                pgrx::error!("cowclone redo: malformed pin record");
            };
            slot::set_pin_in_recovery(pg_sys::Oid::from(source), xmin, false);
        }
        XLOG_COWCLONE_UNWITNESS => {
            let Some(clone) = data.try_into().ok().map(u32::from_le_bytes) else {
                pgrx::error!("cowclone redo: malformed unwitness record");
            };
            if let Err(e) = witness::remove_file(clone) {
                pgrx::error!(
                    "cowclone redo: could not remove \"{}\": {e}",
                    witness::path(clone).display()
                );
            }
        }
        _ => pgrx::error!("cowclone redo: unknown record type {info:#x}"),
    }
}

/// The oldest pin the witnesses ask of each source. A witness of 0.2.0 has
/// no pin xmin: its clone's record file (0.2.0 kept it in `pg_cowclone`,
/// and base backups contain it) gives T's, else the cluster's oldest
/// unfrozen xid, which no clone point can precede.
fn pins_by_source() -> Vec<(u32, u32)> {
    let witnesses = witness::all().unwrap_or_else(|e| {
        pgrx::error!(
            "cowclone: could not list the database directories to pin clones' sources: {e}"
        )
    });
    let mut pins: Vec<(u32, u32)> = Vec::new();
    for (database, found) in witnesses {
        // Its source, which may be any database, could not be pinned: stop
        // rather than go on with it unpinned.
        let Some(w) = found else {
            crate::pg::error::CowError::new(
                pgrx::PgSqlErrorCode::ERRCODE_DATA_CORRUPTED,
                format!(
                    "the cowclone witness of database {database} cannot be read: {}",
                    witness::path(database).display()
                ),
            )
            .detail("Its source database cannot be pinned, so recovery cannot go on safely.")
            .hint("Make the file readable (it may come from a newer cowclone: install that release). If the database is no clone, remove the file.")
            .raise()
        };
        let xmin = match w.pin_xmin {
            0 => record::legacy_pin_xmin(database)
                .unwrap_or_else(|| u32::from(compat::oldest_unfrozen_xid())),
            known => known,
        };
        match pins.iter_mut().find(|(source, _)| *source == w.source) {
            Some((_, pin)) => *pin = older_xid(*pin, xmin),
            None => pins.push((w.source, xmin)),
        }
    }
    pins
}

/// Every witnessed source pinned at least as far back as its witnesses ask
/// (never moved up, never dropped: on a primary the holders and the
/// launcher do that, once they can read the catalog).
fn pin_every_witnessed_source() {
    for (source, xmin) in pins_by_source() {
        slot::set_pin_in_recovery(pg_sys::Oid::from(source), Some(xmin), true);
    }
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn describe(
    buf: pg_sys::StringInfo,
    record: *mut pg_sys::XLogReaderState,
) {
    // SAFETY: PostgreSQL passes the record being described.
    let (info, data) = unsafe { record_data(record) };
    let text = match (decode_pin(data), Witness::decode(data)) {
        _ if info == XLOG_COWCLONE_UNWITNESS && data.len() == 4 => format!(
            "clone {} materialized, witness removed",
            u32::from_le_bytes(data.try_into().expect("4 bytes"))
        ),
        (_, Some(w)) => format!(
            "clone {} of database {}, pin xmin {}, made by {}",
            w.clone, w.source, w.pin_xmin, w.creating_xid
        ),
        (Some((source, Some(xmin))), None) => format!("database {source} pinned at xmin {xmin}"),
        (Some((source, None)), None) => format!("database {source} unpinned"),
        (None, None) => "malformed".to_string(),
    };
    let text = std::ffi::CString::new(text).expect("no NUL in a description");
    // SAFETY: `buf` is the StringInfo PostgreSQL passes; the text is copied.
    unsafe { pg_sys::appendStringInfoString(buf, text.as_ptr()) };
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn identify(info: u8) -> *const std::ffi::c_char {
    match info & !(pg_sys::XLR_INFO_MASK as u8) {
        XLOG_COWCLONE_WITNESS => c"WITNESS".as_ptr(),
        XLOG_COWCLONE_PIN => c"PIN".as_ptr(),
        XLOG_COWCLONE_UNWITNESS => c"UNWITNESS".as_ptr(),
        _ => std::ptr::null(),
    }
}

/// Runs in the startup process when replay starts, before a standby
/// accepts connections.
#[pgrx::pg_guard]
unsafe extern "C-unwind" fn start_of_redo() {
    pin_every_witnessed_source();
}

/// Runs in the startup process after the last record was replayed and
/// before the server accepts writes (a crash or a FATAL after it replays
/// again, so it only ever sets what the witnesses say).
#[pgrx::pg_guard]
unsafe extern "C-unwind" fn end_of_recovery() {
    pin_every_witnessed_source();
}
