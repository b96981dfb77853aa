//! A source's history retention: the window its owner asked for (a
//! security label of provider `cowclone_retention` on the source database,
//! so it is transactional and reaches standbys and backups), and the marks
//! its holder records as time passes (`pg_cowclone/history_<source>`).
//!
//! A mark is an exact point: a snapshot that sees exactly the transactions
//! whose commit record ends at or before its LSN (`pin::exact`). A point in
//! the window is the newest mark at or before it plus the commit and abort
//! records between the two. The marks' file is derived state: only the
//! launcher writes it, under the source lock, and anything that contradicts
//! it (its WAL gone, the file lost) ends the window, never bends it.

use std::ffi::CStr;
use std::fs;
use std::io::Read;
use std::path::PathBuf;

use pgrx::pg_sys;
use serde::{Deserialize, Serialize};

use crate::pin::snapshot::ClonePoint;
use crate::state::record::{any_label_of, labels_of, state_dir, write_file, write_label};

const PROVIDER: &CStr = c"cowclone_retention";
const LABEL_PREFIX: &str = "cowclone retention 1 keep ";

/// One recorded point of a source's history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mark {
    pub point: ClonePoint,
    /// The source's relation map (mapped catalogs: oid, relfilenode) when
    /// the mark was taken: a clone as of a later point reads today's map,
    /// which is right only if the map has not changed since.
    pub relmap: Vec<(u32, u32)>,
}

/// The marks of one source, oldest first.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    pub source: u32,
    /// The pin the source needs, as last computed under the source lock by
    /// whoever slid the window (the oldest of its clones' clone points and
    /// of the marks kept): the holder moves its advertised xmin up to it
    /// without a transaction of its own. Before the marks, so that the
    /// holder, which looks every second, reads only the file's first bytes
    /// (`pin_target`).
    pub pin_target: Option<u32>,
    pub marks: Vec<Mark>,
}

/// The first fields of `History`, as postcard lays them out at the start of
/// the file.
#[derive(Deserialize)]
struct Head {
    source: u32,
    pin_target: Option<u32>,
}

impl History {
    /// The newest mark at or before `lsn`.
    pub fn mark_at_or_before_lsn(&self, lsn: u64) -> Option<&Mark> {
        self.marks.iter().rev().find(|m| m.point.lsn <= lsn)
    }

    /// The newest mark taken at or before `time`.
    pub fn mark_at_or_before_time(&self, time: i64) -> Option<&Mark> {
        self.marks.iter().rev().find(|m| m.point.taken_at <= time)
    }

    /// The window's start: its oldest mark.
    pub fn start(&self) -> Option<&Mark> {
        self.marks.first()
    }

    /// The oldest xmin a point of the window can need.
    pub fn oldest_xmin(&self) -> Option<u32> {
        self.marks.first().map(|m| m.point.xmin)
    }

    /// Drops the marks no point newer than `oldest_kept` needs: every mark
    /// before the newest one taken at or before it.
    pub fn slide(&mut self, oldest_kept: i64) {
        let keep_from = self
            .marks
            .iter()
            .rposition(|m| m.point.taken_at <= oldest_kept)
            .unwrap_or(0);
        self.marks.drain(..keep_from);
    }
}

fn path(source: pg_sys::Oid) -> PathBuf {
    state_dir().join(format!("history_{}", u32::from(source)))
}

/// The source's marks; empty when there are none (or the file is unreadable:
/// the window then starts again rather than trusting it).
pub fn load(source: pg_sys::Oid) -> History {
    fs::read(path(source))
        .ok()
        .and_then(|bytes| postcard::from_bytes::<History>(&bytes).ok())
        .filter(|h| h.source == u32::from(source))
        .unwrap_or(History {
            source: u32::from(source),
            pin_target: None,
            marks: Vec::new(),
        })
}

/// The source's `History::pin_target`, read from the head of its file
/// alone (at most 11 bytes: two varints and an option tag).
pub fn pin_target(source: pg_sys::Oid) -> Option<u32> {
    let mut head = [0u8; 16];
    let mut file = fs::File::open(path(source)).ok()?;
    let mut read = 0;
    while read < head.len() {
        match file.read(&mut head[read..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => read += n,
        }
    }
    let (head, _) = postcard::take_from_bytes::<Head>(&head[..read]).ok()?;
    (head.source == u32::from(source)).then_some(head.pin_target)?
}

/// Writes the marks durably (the launcher, under the source lock).
pub fn save(history: &History) {
    let bytes = postcard::to_allocvec(history).expect("a history serializes");
    write_file(&path(pg_sys::Oid::from(history.source)), &bytes);
}

/// Whether the source has a marks file (its retention was not switched off).
pub fn exists(source: pg_sys::Oid) -> bool {
    path(source).exists()
}

/// Forgets every mark of the source.
pub fn remove(source: pg_sys::Oid) {
    let _ = fs::remove_file(path(source));
}

/// The retention window asked for the source, in microseconds. In a
/// transaction.
pub fn retention_of(source: pg_sys::Oid) -> Option<i64> {
    any_label_of(source, PROVIDER).and_then(|l| parse(&l))
}

fn parse(label: &str) -> Option<i64> {
    label.strip_prefix(LABEL_PREFIX)?.parse().ok()
}

/// Sets (or with None, ends) the source's retention, in this transaction.
pub fn set_retention(source: pg_sys::Oid, keep_micros: Option<i64>) {
    let label = keep_micros.map(|k| format!("{LABEL_PREFIX}{k}"));
    write_label(source, PROVIDER, label.as_deref());
}

/// Every database with retention on, readable without a database
/// connection (the label is short, so inline). In a transaction.
pub fn retained() -> Vec<(u32, i64)> {
    labels_of("cowclone_retention", false)
        .into_iter()
        .filter_map(|(database, label)| Some((database, parse(&label?)?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_head_of_a_history_is_its_source_and_pin_target() {
        let mark = Mark {
            point: ClonePoint {
                xmin: 4_000_000_000,
                xmax: 4_000_000_100,
                running: (4_000_000_000..4_000_000_050).collect(),
                lsn: u64::MAX,
                taken_at: i64::MAX,
            },
            relmap: vec![(1259, 16_000_000); 20],
        };
        for pin_target in [None, Some(3), Some(u32::MAX)] {
            let history = History {
                source: u32::MAX,
                pin_target,
                marks: vec![mark.clone(); 3],
            };
            let bytes = postcard::to_allocvec(&history).unwrap();
            let (head, _) = postcard::take_from_bytes::<Head>(&bytes[..16]).unwrap();
            assert_eq!((head.source, head.pin_target), (u32::MAX, pin_target));
        }
    }
}
