//! Which point a clone is made as of: now, or a position or instant of the
//! source's history window (`state::history`), and the refusals a past
//! point needs. A clone of a past point reads the source's files of today,
//! judged with the point's snapshot, so every file the point's catalog
//! names must be the one it named then.

use pgrx::{pg_sys, PgSqlErrorCode};

use crate::create::source::{SourceDatabase, SourceRelation};
use crate::pg::compat::{self, XactEnd};
use crate::pg::error::CowError;
use crate::pin::exact::{self, Until};
use crate::pin::slot;
use crate::pin::snapshot::{xid_precedes, ClonePoint, HeldSnapshot};
use crate::state::history::{self, Mark};
use crate::state::record::format_lsn;

/// The point asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PointRequest {
    Now,
    Lsn(u64),
    /// A TimestampTz.
    Time(i64),
}

/// A past point resolved from the history, with the mark it came from.
pub struct PastPoint {
    pub point: ClonePoint,
    pub mark: Mark,
}

fn format_time(time: i64) -> String {
    // SAFETY: timestamptz_to_str formats into a static buffer, copied here.
    unsafe {
        std::ffi::CStr::from_ptr(pg_sys::timestamptz_to_str(time))
            .to_string_lossy()
            .into_owned()
    }
}

fn describe(point: &ClonePoint) -> String {
    format!(
        "{} ({})",
        format_lsn(point.lsn),
        format_time(point.taken_at)
    )
}

/// Resolves a past point of `source`'s history. The caller holds the source
/// lock, under which the holder slides the window and moves the pin, so the
/// mark used stays pinned until the clone's own record counts.
pub fn resolve(source: pg_sys::Oid, source_name: &str, request: PointRequest) -> PastPoint {
    let retention_hint = format!(
        "Switch history retention on with cow.set_retention('{source_name}', interval '1 hour'); points from then on can be cloned."
    );
    if history::retention_of(source).is_none() {
        CowError::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("database \"{source_name}\" keeps no history"),
        )
        .detail("Only a database with history retention can be cloned as of a past point.")
        .hint(retention_hint)
        .raise();
    }
    let history = history::load(source);
    let Some(start) = history.start().cloned() else {
        CowError::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("the history of database \"{source_name}\" has no point yet"),
        )
        .detail("Its first point is recorded by its pin holder within cow.retention_mark_interval of switching retention on, or of a restart that lost the history.")
        .hint("Retry in a moment; cow.retention shows the window's start.")
        .raise();
    };
    // SAFETY: plain reads of the WAL insert position and the clock.
    let (now_lsn, now_time) =
        unsafe { (pg_sys::GetXLogInsertRecPtr(), pg_sys::GetCurrentTimestamp()) };
    let before_window = |asked: String| -> ! {
        CowError::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("{asked} is before the history of database \"{source_name}\""),
        )
        .detail(format!(
            "The history window starts at {}.",
            describe(&start.point)
        ))
        .hint(format!(
            "The earliest point that can be cloned is {}; a longer window needs a longer cow.set_retention.",
            describe(&start.point)
        ))
        .raise()
    };
    let in_future = |asked: String, now: String| -> ! {
        CowError::new(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("{asked} is in the future"),
        )
        .detail(format!("The server is at {now}."))
        .raise()
    };
    let (mark, point) = match request {
        PointRequest::Now => unreachable!("a clone as of now needs no history"),
        PointRequest::Lsn(lsn) => {
            if lsn > now_lsn {
                in_future(
                    format!("WAL position {}", format_lsn(lsn)),
                    format_lsn(now_lsn),
                );
            }
            let Some(mark) = history.mark_at_or_before_lsn(lsn) else {
                before_window(format!("WAL position {}", format_lsn(lsn)));
            };
            (mark.clone(), exact::advance(&mark.point, Until::Lsn(lsn)))
        }
        PointRequest::Time(time) => {
            if time > now_time {
                in_future(format_time(time), format_time(now_time));
            }
            let Some(mark) = history.mark_at_or_before_time(time) else {
                before_window(format_time(time));
            };
            compat::wait_for_commits_in_flight();
            let limit = compat::flushed_insert_position();
            (
                mark.clone(),
                exact::advance(&mark.point, Until::Time { time, limit }),
            )
        }
    };
    let pinned = slot::source_slot(source)
        .is_some_and(|s| s.persistent && !xid_precedes(point.xmin, s.xmin));
    if !pinned {
        CowError::new(
            PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
            format!("the history of database \"{source_name}\" is not pinned at its window's start"),
        )
        .detail("Its slot is missing or newer than the point's oldest transaction; the point's rows may already be vacuumed away.")
        .raise();
    }
    PastPoint { point, mark }
}

/// Refuses a past point whose catalog names storage the source no longer
/// has: TRUNCATE, VACUUM FULL, CLUSTER, REINDEX, a rewriting ALTER TABLE,
/// DROP (or a mapped catalog's rewrite) after the point.
pub fn refuse_rewritten(
    source: &SourceDatabase,
    source_name: &str,
    at_point: &[SourceRelation],
    past: &PastPoint,
) {
    let map_now: Vec<(u32, u32)> = sorted_map(source);
    if past.mark.relmap != map_now {
        let since = history::load(source.oid)
            .marks
            .into_iter()
            .find(|m| m.point.lsn > past.point.lsn && m.relmap == map_now);
        CowError::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!(
                "cannot clone database \"{source_name}\" as of {}: a system catalog's storage was rewritten since",
                describe(&past.point)
            ),
        )
        .detail("VACUUM FULL, CLUSTER or REINDEX of a mapped catalog (pg_class, pg_attribute, pg_proc, pg_type or their indexes) dropped the files the point's catalog names; a past point is read from the source's current files.")
        .hint(match since {
            Some(m) => format!("Points from {} on can be cloned.", describe(&m.point)),
            None => "Points from now on can be cloned.".to_string(),
        })
        .raise();
    }
    let now = HeldSnapshot::latest();
    let current = source.relations(now.0);
    let gone: Vec<&SourceRelation> = at_point
        .iter()
        // Other sessions' temporary relations get no storage in a clone.
        .filter(|r| {
            !r.shared
                && r.has_storage()
                && r.persistence != b't'
                && source.relation_map.filenode(r.oid).is_none()
        })
        .filter(|old| {
            !current
                .iter()
                .any(|r| r.oid == old.oid && r.relfilenode == old.relfilenode)
        })
        .collect();
    if gone.is_empty() {
        return;
    }
    let drops = storage_drops_after(source.oid, past.point.lsn);
    let mut names = Vec::new();
    let mut earliest = None::<(u64, i64)>;
    for relation in &gone {
        match drops.iter().find(|d| d.0 == relation.relfilenode) {
            Some(&(_, end, time)) => {
                names.push(format!(
                    "\"{}\" (storage dropped by the transaction committed at {} ({}))",
                    relation.name,
                    format_lsn(end),
                    format_time(time)
                ));
                if earliest.is_none_or(|(e, _)| end > e) {
                    earliest = Some((end, time));
                }
            }
            None => names.push(format!("\"{}\"", relation.name)),
        }
    }
    CowError::new(
        PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
        format!(
            "cannot clone database \"{source_name}\" as of {}: the storage of {} relation(s) was dropped or rewritten since",
            describe(&past.point),
            gone.len()
        ),
    )
    .detail(format!(
        "{}. TRUNCATE, VACUUM FULL, CLUSTER, REINDEX, a rewriting ALTER TABLE and DROP replace or remove a relation's files; a past point is read from the source's current files, so it cannot show these relations as they were.",
        names.join(", ")
    ))
    .hint(match earliest {
        Some((end, time)) => format!(
            "Points from {} ({}) on do not need this storage.",
            format_lsn(end),
            format_time(time)
        ),
        None => "Clone a later point.".to_string(),
    })
    .raise();
}

/// The source's relation map now, as a mark records it.
pub fn sorted_map(source: &SourceDatabase) -> Vec<(u32, u32)> {
    let mut map: Vec<(u32, u32)> = source
        .relation_map
        .mappings
        .iter()
        .map(|(&oid, &node)| (oid, node))
        .collect();
    map.sort_unstable();
    map
}

/// Storage of `source` that commits after `from` dropped: (relfilenode,
/// the commit's end, its time). Read from WAL, so only on the error path.
fn storage_drops_after(source: pg_sys::Oid, from: u64) -> Vec<(u32, u64, i64)> {
    let mut drops = Vec::new();
    exact::xact_records(from, compat::flushed_insert_position(), |record| {
        if record.end_kind == XactEnd::Commit {
            for &(db, node) in &record.dropped {
                if db == u32::from(source) {
                    drops.push((node, record.end, record.time));
                }
            }
        }
        true
    });
    drops
}
