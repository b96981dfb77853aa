//! Where a clone comes from: the chain of a clone of a clone (each level
//! as its descendants remember it, kept in its record), what a materialized
//! clone keeps, and the queue of materializations. The last two are
//! security labels of the clone's database beside its record (`record`):
//! the lineage replaces the record when the database stops
//! being a clone (it was a clone of the source at T), and a queued job is a
//! label of its own provider, always stored inline, so the launcher, which
//! cannot read labels stored out of line, finds every job to resume.

use std::ffi::CStr;

use pgrx::pg_sys;
use serde::{Deserialize, Serialize};

use crate::pin::snapshot::ClonePoint;
use crate::state::record::{
    any_label_of, hex, labels_of, unhex, write_label, CloneRecord, PROVIDER,
};

/// One clone in a chain of clones, as its descendants remember it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Level {
    pub oid: u32,
    /// Its name when the descendant was made, shown if it is dropped since.
    pub name: String,
    /// The LSN and time of the point it was cut from its parent at.
    pub point_lsn: u64,
    pub point_time: i64,
    pub created_at: i64,
}

/// The database a chain's last level was made from: the level before it,
/// or the source when the chain has at most that level.
fn parent_in(chain: &[Level], source: u32, source_name: &str) -> (u32, String) {
    match chain.len() {
        0 | 1 => (source, source_name.to_string()),
        n => (chain[n - 2].oid, chain[n - 2].name.clone()),
    }
}

/// The levels from the source down to a clone named `name`: its chain, or
/// for a clone of an ordinary database the clone alone.
fn levels_of(
    chain: &[Level],
    clone: u32,
    name: &str,
    point: &ClonePoint,
    created_at: i64,
) -> Vec<Level> {
    if !chain.is_empty() {
        return chain.to_vec();
    }
    vec![Level {
        oid: clone,
        name: name.to_string(),
        point_lsn: point.lsn,
        point_time: point.taken_at,
        created_at,
    }]
}

impl CloneRecord {
    /// The database this clone was made from: its source for a clone of an
    /// ordinary database, the clone before it in the chain otherwise.
    pub fn parent(&self) -> (u32, String) {
        parent_in(&self.chain, self.source, &self.source_name)
    }

    /// The point (LSN, time) this clone was cut from its parent at.
    pub fn branch_point(&self) -> (u64, i64) {
        self.chain
            .last()
            .map_or((self.point.lsn, self.point.taken_at), |l| {
                (l.point_lsn, l.point_time)
            })
    }

    /// The levels from the root down to this clone, itself named `name`.
    pub fn levels(&self, name: &str) -> Vec<Level> {
        levels_of(&self.chain, self.clone, name, &self.point, self.created_at)
    }

    /// The levels a child of this clone remembers: this clone's, then the child.
    pub fn chain_for_child(&self, name: &str, child: Level) -> Vec<Level> {
        let mut chain = self.levels(name);
        chain.push(child);
        chain
    }
}

impl Lineage {
    /// The database this materialized clone was made from (as `CloneRecord::parent`).
    pub fn parent(&self) -> (u32, String) {
        parent_in(&self.chain, self.source, &self.source_name)
    }

    /// The levels from the root down to this database, itself named `name`.
    pub fn levels(&self, name: &str) -> Vec<Level> {
        levels_of(&self.chain, self.clone, name, &self.point, self.created_at)
    }
}

/// The lineage's label: `cowclone lineage 1 source <oid> <hex>`.
const LINEAGE_PREFIX: &str = "cowclone lineage 1 ";
const JOB_PROVIDER: &CStr = c"cowclone_job";

/// What a materialized database remembers: it was a clone of `source` at
/// `point`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lineage {
    pub clone: u32,
    pub source: u32,
    pub source_name: String,
    pub depth: u32,
    pub point: ClonePoint,
    pub created_at: i64,
    pub materialized_at: i64,
    /// The chain of a clone of a clone (`CloneRecord::chain`), encoded
    /// after the rest, which 0.5.0's library reads alone.
    #[serde(skip)]
    pub chain: Vec<Level>,
}

/// Replaces a materialized clone's record by its lineage, in this
/// transaction: the database is no longer a clone.
pub fn replace_record(record: &CloneRecord) {
    let lineage = Lineage {
        clone: record.clone,
        source: record.source,
        source_name: record.source_name.clone(),
        depth: record.depth,
        point: record.point.clone(),
        created_at: record.created_at,
        // SAFETY: reads the clock.
        materialized_at: unsafe { pg_sys::GetCurrentTimestamp() },
        chain: record.chain.clone(),
    };
    let mut body = postcard::to_allocvec(&lineage).expect("a lineage serializes");
    if !lineage.chain.is_empty() {
        body.extend(postcard::to_allocvec(&lineage.chain).expect("a chain serializes"));
    }
    let label = format!("{LINEAGE_PREFIX}source {} {}", lineage.source, hex(&body));
    write_label(pg_sys::Oid::from(record.clone), PROVIDER, Some(&label));
}

fn lineage_from_label(label: &str) -> Result<Lineage, String> {
    let hex = label
        .strip_prefix(LINEAGE_PREFIX)
        .and_then(|rest| rest.rsplit(' ').next())
        .ok_or("not a cowclone lineage")?;
    let body = unhex(hex)?;
    let (mut lineage, rest): (Lineage, &[u8]) =
        postcard::take_from_bytes(&body).map_err(|e| e.to_string())?;
    if !rest.is_empty() {
        lineage.chain = postcard::from_bytes(rest).map_err(|e| e.to_string())?;
    }
    Ok(lineage)
}

/// Every materialized database's lineage (whose database still exists: the
/// label goes with it). In a transaction.
pub fn all() -> Vec<Lineage> {
    labels_of("cowclone", true)
        .into_iter()
        .filter_map(|(_, label)| label)
        .filter(|l| l.starts_with(LINEAGE_PREFIX))
        .filter_map(|l| lineage_from_label(&l).ok())
        .collect()
}

/// Databases that were clones and are materialized, as a process without a
/// database connection reads them (a lineage label is always inline).
pub fn materialized_without_database() -> Vec<u32> {
    labels_of("cowclone", false)
        .into_iter()
        .filter(|(_, label)| {
            label
                .as_deref()
                .is_some_and(|l| l.starts_with(LINEAGE_PREFIX))
        })
        .map(|(database, _)| database)
        .collect()
}

/// Queues (or, with None, ends) the materialization of a clone, in this
/// transaction: a label of its own provider, always inline.
pub fn set_job(clone: pg_sys::Oid, job: Option<&str>) {
    write_label(clone, JOB_PROVIDER, job);
}

/// Whether a clone's materialization is queued. In a transaction.
pub fn job(clone: pg_sys::Oid) -> Option<String> {
    any_label_of(clone, JOB_PROVIDER)
}

/// Every clone whose materialization is queued; readable without a
/// database connection. In a transaction.
pub fn jobs() -> Vec<u32> {
    labels_of("cowclone_job", false)
        .into_iter()
        .map(|(database, _)| database)
        .collect()
}
