//! Reading this server's WAL from a backend, the way `pg_walinspect` does,
//! and the transaction-end records in it: what a point in time is made of.

use std::ffi::CStr;

use pgrx::pg_sys;

// The reader's callbacks, as the C functions themselves: pgrx's bindings
// wrap each in a Rust function, which is no C callback.
extern "C-unwind" {
    fn read_local_xlog_page(
        state: *mut pg_sys::XLogReaderState,
        target_page: pg_sys::XLogRecPtr,
        wanted: std::ffi::c_int,
        target_record: pg_sys::XLogRecPtr,
        page: *mut std::ffi::c_char,
    ) -> std::ffi::c_int;
    fn wal_segment_open(
        state: *mut pg_sys::XLogReaderState,
        segment: pg_sys::XLogSegNo,
        timeline: *mut pg_sys::TimeLineID,
    );
    fn wal_segment_close(state: *mut pg_sys::XLogReaderState);
}

/// How a transaction ended, as its WAL record says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum XactEnd {
    Commit,
    Abort,
}

/// A commit or abort record (plain or of a prepared transaction).
#[derive(Clone, Debug)]
pub struct XactRecord {
    pub start: u64,
    pub end: u64,
    pub end_kind: XactEnd,
    /// The top-level transaction, then its subtransactions.
    pub xids: Vec<u32>,
    /// The commit or abort timestamp the record carries.
    pub time: i64,
    /// Storage dropped by the commit: (database, relfilenode).
    pub dropped: Vec<(u32, u32)>,
}

/// A WAL reader over this server's `pg_wal`, freed when dropped.
pub struct WalReader {
    state: *mut pg_sys::XLogReaderState,
}

impl WalReader {
    /// Positions a reader at the first record starting at or after `from`.
    /// Raises if that WAL is gone.
    pub fn open(from: u64) -> Self {
        let mut routine = pg_sys::XLogReaderRoutine {
            page_read: Some(read_local_xlog_page),
            segment_open: Some(wal_segment_open),
            segment_close: Some(wal_segment_close),
        };
        // SAFETY: the routine is copied into the reader; the segment size is
        // the server's; a null private pointer is what read_local_xlog_page
        // expects (it waits for WAL to be flushed).
        let state = unsafe {
            pg_sys::XLogReaderAllocate(
                pg_sys::wal_segment_size,
                std::ptr::null(),
                &mut routine,
                std::ptr::null_mut(),
            )
        };
        if state.is_null() {
            pgrx::error!("cowclone: out of memory allocating a WAL reader");
        }
        let reader = Self { state };
        // SAFETY: a fresh reader; XLogFindNextRecord reads pages from `from`.
        let first = unsafe { pg_sys::XLogFindNextRecord(state, from) };
        if first == 0 {
            pgrx::error!(
                "cowclone: could not find a valid WAL record at or after {:X}/{:X}",
                from >> 32,
                from as u32
            );
        }
        // SAFETY: the reader is allocated; `first` is a record's start.
        unsafe { pg_sys::XLogBeginRead(state, first) };
        reader
    }

    /// Where the next record starts (or the end of the last one read).
    pub fn next_position(&self) -> u64 {
        // SAFETY: the reader is allocated.
        unsafe { (*self.state).EndRecPtr }
    }

    /// Reads the next record; returns its resource manager, info byte and
    /// start/end. Raises on a read error.
    pub fn read(&mut self) -> (u8, u8, u64, u64) {
        let mut error: *mut std::ffi::c_char = std::ptr::null_mut();
        // SAFETY: the reader is allocated and positioned.
        let record = unsafe { pg_sys::XLogReadRecord(self.state, &mut error) };
        if record.is_null() {
            let message = if error.is_null() {
                "unknown error".to_string()
            } else {
                // SAFETY: a NUL-terminated message the reader keeps.
                unsafe { CStr::from_ptr(error) }
                    .to_string_lossy()
                    .into_owned()
            };
            pgrx::error!("cowclone: could not read WAL: {message}");
        }
        // SAFETY: a record was just decoded into `state->record`.
        unsafe {
            let decoded = &*(*self.state).record;
            (
                decoded.header.xl_rmid,
                decoded.header.xl_info,
                (*self.state).ReadRecPtr,
                (*self.state).EndRecPtr,
            )
        }
    }

    /// The last record read, if it ended a transaction.
    pub fn xact_record(&self) -> Option<XactRecord> {
        // SAFETY: the last read record is decoded in `state->record`; its
        // main data is an xl_xact_commit/abort for these info values, which
        // ParseCommitRecord/ParseAbortRecord read.
        unsafe {
            let decoded = &*(*self.state).record;
            if u32::from(decoded.header.xl_rmid) != pg_sys::RmgrIds::RM_XACT_ID {
                return None;
            }
            let info = decoded.header.xl_info;
            let op = u32::from(info) & pg_sys::XLOG_XACT_OPMASK;
            let start = (*self.state).ReadRecPtr;
            let end = (*self.state).EndRecPtr;
            let data = decoded.main_data;
            match op {
                pg_sys::XLOG_XACT_COMMIT | pg_sys::XLOG_XACT_COMMIT_PREPARED => {
                    let mut parsed = pg_sys::xl_xact_parsed_commit::default();
                    pg_sys::ParseCommitRecord(info, data.cast(), &mut parsed);
                    let top = if op == pg_sys::XLOG_XACT_COMMIT_PREPARED {
                        parsed.twophase_xid
                    } else {
                        decoded.header.xl_xid
                    };
                    Some(XactRecord {
                        start,
                        end,
                        end_kind: XactEnd::Commit,
                        xids: with_subxacts(top, parsed.subxacts, parsed.nsubxacts),
                        time: parsed.xact_time,
                        dropped: dropped_storage(&parsed),
                    })
                }
                pg_sys::XLOG_XACT_ABORT | pg_sys::XLOG_XACT_ABORT_PREPARED => {
                    let mut parsed = pg_sys::xl_xact_parsed_abort::default();
                    pg_sys::ParseAbortRecord(info, data.cast(), &mut parsed);
                    let top = if op == pg_sys::XLOG_XACT_ABORT_PREPARED {
                        parsed.twophase_xid
                    } else {
                        decoded.header.xl_xid
                    };
                    Some(XactRecord {
                        start,
                        end,
                        end_kind: XactEnd::Abort,
                        xids: with_subxacts(top, parsed.subxacts, parsed.nsubxacts),
                        time: parsed.xact_time,
                        dropped: Vec::new(),
                    })
                }
                _ => None,
            }
        }
    }
}

/// # Safety
/// `subxacts` points at `count` transaction ids (or count is 0).
unsafe fn with_subxacts(
    top: pg_sys::TransactionId,
    subxacts: *mut pg_sys::TransactionId,
    count: i32,
) -> Vec<u32> {
    let mut xids = vec![u32::from(top)];
    for i in 0..count.max(0) as usize {
        // SAFETY: guaranteed by the caller.
        xids.push(u32::from(unsafe { *subxacts.add(i) }));
    }
    xids
}

/// Storage a commit dropped (16 renamed RelFileNode to RelFileLocator).
///
/// # Safety
/// `parsed` was filled by ParseCommitRecord.
unsafe fn dropped_storage(parsed: &pg_sys::xl_xact_parsed_commit) -> Vec<(u32, u32)> {
    let mut dropped = Vec::new();
    for i in 0..parsed.nrels.max(0) as usize {
        // SAFETY: guaranteed by the caller: `nrels` entries.
        unsafe {
            #[cfg(before_pg16)]
            {
                let node = &*parsed.xnodes.add(i);
                dropped.push((u32::from(node.dbNode), u32::from(node.relNode)));
            }
            #[cfg(not(before_pg16))]
            {
                let node = &*parsed.xlocators.add(i);
                dropped.push((u32::from(node.dbOid), u32::from(node.relNumber)));
            }
        }
    }
    dropped
}

impl Drop for WalReader {
    fn drop(&mut self) {
        // SAFETY: allocated by XLogReaderAllocate, freed once.
        unsafe { pg_sys::XLogReaderFree(self.state) };
    }
}

/// Waits until every transaction that was inside its commit critical
/// section (commit record inserted, commit log not yet updated) has left
/// it, as a checkpoint does before trusting the commit log: afterwards every
/// commit record written before this call has its commit log entry.
pub fn wait_for_commits_in_flight() {
    // SAFETY: the proc array is read under its lock by these functions; the
    // returned array is palloc'd and freed here.
    unsafe {
        let mut count: i32 = 0;
        let vxids =
            pg_sys::GetVirtualXIDsDelayingChkpt(&mut count, pg_sys::DELAY_CHKPT_START as i32);
        if count > 0 {
            while pg_sys::HaveVirtualXIDsDelayingChkpt(
                vxids,
                count,
                pg_sys::DELAY_CHKPT_START as i32,
            ) {
                pg_sys::pg_usleep(100);
                pgrx::check_for_interrupts!();
            }
        }
        pg_sys::pfree(vxids.cast());
    }
}

/// A WAL position just past a page header, where a record would start,
/// as the end of the page before: nothing lies in between, and WAL is
/// generated (and flushed) only up to there until the next record.
pub fn without_page_header(position: u64) -> u64 {
    const SHORT_HEADER: u64 = 24;
    const LONG_HEADER: u64 = 40;
    let page = pg_sys::XLOG_BLCKSZ as u64;
    // SAFETY: a start-up setting.
    let segment = unsafe { pg_sys::wal_segment_size } as u64;
    let in_page = position % page;
    if (in_page == SHORT_HEADER && position % segment != SHORT_HEADER)
        || (in_page == LONG_HEADER && position % segment == LONG_HEADER)
    {
        position - in_page
    } else {
        position
    }
}

/// Flushes WAL up to `position` (which must have been inserted).
pub fn flush_to(position: u64) {
    // SAFETY: flushing up to an inserted position.
    unsafe { pg_sys::XLogFlush(without_page_header(position)) }
}

/// The position the next WAL record would be inserted at, flushed, as the
/// end of what is there (see `without_page_header`).
pub fn flushed_insert_position() -> u64 {
    // SAFETY: a plain read of the insert position.
    let position = without_page_header(unsafe { pg_sys::GetXLogInsertRecPtr() });
    flush_to(position);
    position
}
