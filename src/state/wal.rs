//! cowclone's WAL resource manager: what a clone needs outside the catalog
//! reaches standbys, crash recovery and restored base backups through WAL.
//!
//! The clone's record lives in a shared catalog (`state::record`), which
//! PostgreSQL WAL-logs itself. Two things cannot wait for a catalog:
//! - the witness file (`state::witness`), which redo writes again;
//! - the pins, which slots carry and which are neither replicated nor in
//!   base backups. During recovery the startup process keeps each source's
//!   slot at the oldest pin among the witnesses it has replayed
//!   (`pin::slot::set_pin_in_recovery`):
//!   - at every witness record and every drop record of a clone;
//!   - when replay starts (`rm_startup`), for witnesses a base backup
//!     brought without their records;
//!   - when recovery ends (`rm_cleanup`), before the server leaves recovery
//!     and so before any backend may prune or vacuum.
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
use crate::state::witness::{self, Witness};

pub const RMGR_ID: u8 = 150;
const RMGR_NAME: &CStr = c"cowclone";
/// Info bits of the record types: a clone's witness (written, or moved to
/// its clone point), and a clone of a source dropped.
const XLOG_COWCLONE_WITNESS: u8 = 0x10;
const XLOG_COWCLONE_FORGET: u8 = 0x20;

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

/// WAL-logs a clone's witness. Not flushed: the cloning transaction's commit
/// record comes later and flushes it.
pub fn log_witness(witness: &Witness) {
    let bytes = witness.encode();
    // SAFETY: the standard three-step insertion, with the data borrowed
    // until XLogInsert returns.
    unsafe {
        pg_sys::XLogBeginInsert();
        compat::xlog_register_data(&bytes);
        pg_sys::XLogInsert(RMGR_ID, XLOG_COWCLONE_WITNESS);
    }
}

/// WAL-logs that a clone of `source` was dropped (its witness went with its
/// directory), so a standby moves that source's pin up.
pub fn log_forget(source: pg_sys::Oid) {
    let bytes = u32::from(source).to_le_bytes();
    // SAFETY: as in `log_witness`.
    unsafe {
        pg_sys::XLogBeginInsert();
        compat::xlog_register_data(&bytes);
        pg_sys::XLogInsert(RMGR_ID, XLOG_COWCLONE_FORGET);
    }
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
    let source = match info {
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
            witness.source
        }
        XLOG_COWCLONE_FORGET => match <[u8; 4]>::try_from(data) {
            Ok(bytes) => u32::from_le_bytes(bytes),
            Err(_) => pgrx::error!("cowclone redo: malformed drop record"),
        },
        _ => pgrx::error!("cowclone redo: unknown record type {info:#x}"),
    };
    repin(source);
}

/// The oldest pin among the witnesses of each source; None for a source
/// with a witness of unknown pin (0.2.0 wrote none), which is left alone.
/// And whether some witness could not be read at all: then no pin may move
/// up or go, since that witness may be any source's.
fn pins_by_source() -> (Vec<(u32, Option<u32>)>, bool) {
    let mut pins: Vec<(u32, Option<u32>)> = Vec::new();
    let mut unreadable = false;
    for (database, found) in witness::all() {
        let Some(w) = found else {
            pgrx::warning!(
                "cowclone: the witness of database {database} is not readable; no pin moves up until it is"
            );
            unreadable = true;
            continue;
        };
        let known = (w.pin_xmin != 0).then_some(w.pin_xmin);
        match pins.iter_mut().find(|(source, _)| *source == w.source) {
            Some((_, pin)) => {
                *pin = match (*pin, known) {
                    // SAFETY: a pure comparison of two transaction ids.
                    (Some(a), Some(b)) => Some(
                        if unsafe { pg_sys::TransactionIdPrecedes(b.into(), a.into()) } {
                            b
                        } else {
                            a
                        },
                    ),
                    _ => None,
                }
            }
            None => pins.push((w.source, known)),
        }
    }
    (pins, unreadable)
}

/// Sets one source's pin from the witnesses replayed so far.
fn repin(source: u32) {
    let (pins, unreadable) = pins_by_source();
    let oid = pg_sys::Oid::from(source);
    match pins.into_iter().find(|(s, _)| *s == source) {
        Some((_, None)) => {}
        Some((_, Some(xmin))) => crate::pin::slot::set_pin_in_recovery(oid, Some(xmin), unreadable),
        None if !unreadable => crate::pin::slot::set_pin_in_recovery(oid, None, false),
        None => {}
    }
}

/// Every witnessed source pinned (none released: on a primary the launcher
/// lets go of slots no clone needs, once it can read the catalog).
fn pin_every_witnessed_source() {
    let (pins, unreadable) = pins_by_source();
    for (source, pin) in pins {
        if let Some(xmin) = pin {
            crate::pin::slot::set_pin_in_recovery(
                pg_sys::Oid::from(source),
                Some(xmin),
                unreadable,
            );
        }
    }
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn describe(
    buf: pg_sys::StringInfo,
    record: *mut pg_sys::XLogReaderState,
) {
    // SAFETY: PostgreSQL passes the record being described.
    let (_, data) = unsafe { record_data(record) };
    let text = match <[u8; 4]>::try_from(data) {
        Ok(source) => format!("a clone of database {} dropped", u32::from_le_bytes(source)),
        Err(_) => match Witness::decode(data) {
            Some(w) => format!(
                "clone {} of database {}, pin xmin {}",
                w.clone, w.source, w.pin_xmin
            ),
            None => "malformed".to_string(),
        },
    };
    let text = std::ffi::CString::new(text).expect("no NUL in a description");
    // SAFETY: `buf` is the StringInfo PostgreSQL passes; the text is copied.
    unsafe { pg_sys::appendStringInfoString(buf, text.as_ptr()) };
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn identify(info: u8) -> *const std::ffi::c_char {
    match info & !(pg_sys::XLR_INFO_MASK as u8) {
        XLOG_COWCLONE_WITNESS => c"WITNESS".as_ptr(),
        XLOG_COWCLONE_FORGET => c"FORGET".as_ptr(),
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
