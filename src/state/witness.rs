//! The witness: a one-page file in the clone's own database directory,
//! `base/<clone>/cowclone_clone`, saying "this database is a clone of that
//! source, made by that transaction, and its pin is at that xmin".
//!
//! The record (`state::record`) is the truth about a clone; the witness is
//! the part that must be known where no catalog can be read, and that must
//! survive the record's loss:
//! - The startup process keeps the pins in force during and at the end of
//!   recovery (`state::wal`) from the witnesses.
//! - A database with a witness and no record is a clone whose record is
//!   lost: reading its shadowed relations fails (XX001) instead of
//!   answering from their local part.
//! - A witnessed directory without a database, whose creating transaction
//!   is over, is what a crash, a failover or a restore left of a clone in
//!   the making (`lifecycle::reconcile` removes it).
//!
//! It lives and dies with the database directory, which PostgreSQL creates
//! and removes through WAL itself: an aborted or dropped clone takes its
//! witness with it, on the primary and on every standby. cowclone WAL-logs
//! its creation (`state::wal`), so standbys and crash recovery rebuild it.
//!
//! Reading fails closed: a file or directory that cannot be examined (an
//! I/O error other than "not found") counts as present.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use pgrx::{pg_sys, PgSqlErrorCode};

use crate::pg::error::CowError;
use crate::pg::page_file;
use crate::state::record::data_dir;

const FILE_NAME: &str = "cowclone_clone";
const MAGIC: &[u8; 8] = b"COWWIT01";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Witness {
    pub clone: u32,
    pub source: u32,
    /// The clone point's xmin (before T is taken, the pin then in force):
    /// what the source's pin must not pass. 0 when unknown: before the
    /// clone's source is pinned, or written by 0.2.0.
    pub pin_xmin: u32,
    /// The transaction that made the clone; 0 once it is known committed
    /// (a witness written again for an existing clone).
    pub creating_xid: u32,
}

impl Witness {
    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = MAGIC.to_vec();
        for value in [self.clone, self.source, self.pin_xmin, self.creating_xid] {
            bytes.extend(value.to_le_bytes());
        }
        bytes
    }

    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let body = bytes.strip_prefix(MAGIC.as_slice())?;
        let word = |i: usize| -> Option<u32> {
            Some(u32::from_le_bytes(
                body.get(i * 4..i * 4 + 4)?.try_into().ok()?,
            ))
        };
        Some(Self {
            clone: word(0)?,
            source: word(1)?,
            pin_xmin: word(2)?,
            creating_xid: word(3)?,
        })
    }
}

fn database_dir(database: u32) -> PathBuf {
    data_dir().join("base").join(database.to_string())
}

/// Whether `path` exists; an error other than "not found" counts as yes.
fn present(path: &Path) -> bool {
    match std::fs::metadata(path) {
        Ok(_) => true,
        Err(e) => e.kind() != ErrorKind::NotFound,
    }
}

/// Whether a database's directory exists (in `base/`, where clones live).
fn database_dir_exists(database: u32) -> bool {
    present(&database_dir(database))
}

pub fn path(database: u32) -> PathBuf {
    database_dir(database).join(FILE_NAME)
}

/// Writes the witness file; false if the database's directory is gone
/// (replay of a clone dropped later on).
pub fn write_file(witness: &Witness) -> std::io::Result<bool> {
    match std::fs::metadata(database_dir(witness.clone)) {
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    }
    page_file::write(&path(witness.clone), &witness.encode())?;
    Ok(true)
}

/// Records a clone's witness on the primary: WAL first (flushed, so no
/// crash keeps the file without its record), then the file. False, and
/// nothing written, if the database's directory is gone.
pub fn record(witness: &Witness) -> bool {
    if !database_dir_exists(witness.clone) {
        return false;
    }
    crate::state::wal::log_witness(witness);
    write_file(witness).unwrap_or_else(|e| {
        CowError::new(
            PgSqlErrorCode::ERRCODE_IO_ERROR,
            format!("could not write \"{}\": {e}", path(witness.clone).display()),
        )
        .raise()
    })
}

/// Removes a witness file (replay, or a materialized clone); absent is fine.
pub fn remove_file(database: u32) -> std::io::Result<()> {
    match std::fs::remove_file(path(database)) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    }
    std::fs::File::open(database_dir(database))?.sync_all()
}

/// Removes a materialized clone's witness on the primary: WAL first, then
/// the file. Before its transaction commits: if it aborts, the record that
/// stays gets its witness written again by the launcher.
pub fn remove(database: u32) {
    crate::state::wal::log_unwitness(database);
    remove_file(database).unwrap_or_else(|e| {
        CowError::new(
            PgSqlErrorCode::ERRCODE_IO_ERROR,
            format!("could not remove \"{}\": {e}", path(database).display()),
        )
        .raise()
    })
}

/// Whether a database's directory holds a witness (of any format: 0.2.0
/// wrote the source's OID as text).
pub fn exists(database: pg_sys::Oid) -> bool {
    present(&path(u32::from(database)))
}

/// The witness of a database, if it has one this version can read. 0.2.0
/// wrote only the source's OID, as text: its pin xmin reads as 0 (unknown).
pub fn read(database: u32) -> Option<Witness> {
    if let Some(witness) = page_file::read(&path(database)).and_then(|b| Witness::decode(&b)) {
        return Some(witness);
    }
    let source = std::fs::read_to_string(path(database))
        .ok()?
        .trim()
        .parse::<u32>()
        .ok()?;
    Some(Witness {
        clone: database,
        source,
        pin_xmin: 0,
        creating_xid: 0,
    })
}

/// Every database directory with a witness: (database, its witness if
/// readable). Reads only files, so the startup process can call it. An
/// error listing `base/` is returned: nothing can be concluded then.
pub fn all() -> std::io::Result<Vec<(u32, Option<Witness>)>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(data_dir().join("base"))? {
        let Some(database) = entry?
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if present(&path(database)) {
            found.push((database, read(database)));
        }
    }
    found.sort_by_key(|(database, _)| *database);
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn witnesses_round_trip_and_reject_other_bytes() {
        let witness = Witness {
            clone: 16500,
            source: 16384,
            pin_xmin: 740,
            creating_xid: 745,
        };
        assert_eq!(Witness::decode(&witness.encode()), Some(witness));
        assert_eq!(Witness::decode(b"16384"), None);
        assert_eq!(Witness::decode(&witness.encode()[..19]), None);
    }
}
