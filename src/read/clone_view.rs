//! What a backend connected to a clone sees of its source: the clone point T
//! as an MVCC snapshot, where the source keeps each shadowed relation's
//! storage (the TID spaces it reads through are `state::tid`'s).
//!
//! A backend's database never changes, so the source and T are loaded once,
//! from the clone's record, the first time a shadowed relation is touched,
//! and kept for the life of the process. Which relations are still shadowed
//! changes as a materialization makes them the clone's own, one committed
//! switch at a time: that part is read again after any relation cache
//! invalidation. A switch invalidates its relation, and every backend that
//! opens it afterwards has locked it after the switch committed, so has
//! processed that invalidation first.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;

use pgrx::{pg_guard, pg_sys, PgSqlErrorCode};

use crate::pg::compat::{self, RelLocator};
use crate::pg::error::CowError;
use crate::state::{record, witness};

pub struct CloneView {
    pub source: pg_sys::Oid,
    /// T: judges every source tuple, whatever snapshot the query runs with.
    snapshot: pg_sys::Snapshot,
}

/// What the record says now of the relations (see the module comment).
#[derive(Default)]
struct Relations {
    stale: bool,
    /// Source relfilenodes this clone reads.
    shadowed: HashSet<u32>,
    /// Relations materialized, by the transaction that copied their rows.
    materialized: HashMap<u32, u32>,
}

thread_local! {
    static RELATIONS: RefCell<Option<Relations>> = const { RefCell::new(None) };
}

/// Relation cache invalidations make the relations be read again.
#[pg_guard]
unsafe extern "C-unwind" fn relations_may_have_changed(_arg: pg_sys::Datum, _relid: pg_sys::Oid) {
    RELATIONS.with(|r| {
        if let Some(relations) = r.borrow_mut().as_mut() {
            relations.stale = true;
        }
    });
}

fn with_relations<R>(f: impl FnOnce(&Relations) -> R) -> R {
    let fresh = RELATIONS.with(|r| r.borrow().as_ref().is_some_and(|r| !r.stale));
    if !fresh {
        // SAFETY: MyDatabaseId is set once the backend has connected.
        let database = unsafe { pg_sys::MyDatabaseId };
        let record = record::read_record(database);
        let relations = Relations {
            stale: false,
            shadowed: record
                .iter()
                .flat_map(|r| r.shadowed.iter().map(|s| s.relfilenode))
                .collect(),
            materialized: record
                .iter()
                .flat_map(|r| r.materialized.iter().map(|m| (m.relfilenode, m.xid)))
                .collect(),
        };
        RELATIONS.with(|r| *r.borrow_mut() = Some(relations));
    }
    RELATIONS.with(|r| f(r.borrow().as_ref().expect("just loaded")))
}

// SAFETY: the view is built once per backend (PostgreSQL backends are
// single-threaded) and never modified afterwards; the snapshot it points to
// is leaked and immutable.
unsafe impl Sync for CloneView {}
// SAFETY: as above.
unsafe impl Send for CloneView {}

static VIEW: OnceLock<Option<CloneView>> = OnceLock::new();

/// This backend's view of its source, or None outside a clone.
pub fn current() -> Option<&'static CloneView> {
    VIEW.get_or_init(|| {
        // SAFETY: MyDatabaseId is set once the backend has connected, before
        // any relation can be opened.
        let database = unsafe { pg_sys::MyDatabaseId };
        record::read_record(database).map(|record| {
            refuse_if_inconsistent(database, &record);
            // SAFETY: registered once per process, from a backend in a
            // transaction; the callback only marks the relations stale.
            unsafe {
                pg_sys::CacheRegisterRelcacheCallback(
                    Some(relations_may_have_changed),
                    pg_sys::Datum::from(0),
                )
            };
            CloneView {
                source: pg_sys::Oid::from(record.source),
                snapshot: leak_snapshot(&record.point),
            }
        })
    })
    .as_ref()
}

/// This backend's view if this database is a clone. A database without a
/// record is not a clone (a `cow` relation there, restored from a clone's
/// dump say, is a plain heap) unless its directory holds a clone's witness,
/// or a per-clone pin of 0.1.0 is still named after it: then it is a clone
/// whose record is gone, and its rows cannot be found.
pub fn for_relation(relation: &str) -> Option<&'static CloneView> {
    static LOST: OnceLock<bool> = OnceLock::new();
    if let Some(view) = current() {
        return Some(view);
    }
    // SAFETY: MyDatabaseId is set once the backend has connected.
    let lost = *LOST.get_or_init(|| {
        let database = unsafe { pg_sys::MyDatabaseId };
        witness::exists(database)
            || crate::pin::slot::legacy_slots()
                .iter()
                .any(|(clone, _)| *clone == database)
    });
    if lost {
        required(relation);
    }
    None
}

/// `for_relation` for a relation of one of cowclone's access methods (table
/// or index): every callback of theirs asks here, so a clone whose record
/// is lost refuses whatever touches its shadowed relations first.
///
/// # Safety
/// `rel` must be a valid, open relation.
pub unsafe fn for_cow_relation(rel: pg_sys::Relation) -> Option<&'static CloneView> {
    if let Some(view) = current() {
        return Some(view);
    }
    // SAFETY: guaranteed by the caller; relname is a NUL-padded NameData.
    let name = unsafe { pgrx::name_data_to_str(&(*(*rel).rd_rel).relname) }.to_string();
    for_relation(&name)
}

/// A record for another database, or one its witness contradicts, cannot
/// say where this clone's rows are.
fn refuse_if_inconsistent(database: pg_sys::Oid, record: &record::CloneRecord) {
    let witnessed_source = witness::read(u32::from(database)).map(|w| w.source);
    let consistent = record.clone == u32::from(database)
        && witnessed_source.is_none_or(|source| source == record.source);
    if !consistent {
        CowError::new(
            PgSqlErrorCode::ERRCODE_DATA_CORRUPTED,
            format!(
                "the cowclone record of database {} is inconsistent",
                u32::from(database)
            ),
        )
        .detail(format!(
            "The record names clone {} of database {}; the witness in the database's directory names source {}.",
            record.clone,
            record.source,
            witnessed_source.map_or("none".to_string(), |s| s.to_string())
        ))
        .hint("Drop this database and clone it again.")
        .raise();
    }
}

/// The view, raising an error naming `relation` if this database has no
/// clone record (its state file is gone): its rows cannot be found.
pub fn required(relation: &str) -> &'static CloneView {
    current().unwrap_or_else(|| {
        CowError::new(
            PgSqlErrorCode::ERRCODE_DATA_CORRUPTED,
            format!("relation \"{relation}\" is shadowed but this database has no clone record"),
        )
        .detail("Its directory holds a clone's witness (cowclone_clone), but its record (a security label of provider cowclone in pg_shseclabel) is missing, so its source and clone point are unknown.")
        .hint("Drop this database and clone it again.")
        .raise()
    })
}

impl CloneView {
    /// T as a snapshot. Never registered: it is static for the process and
    /// only ever passed to visibility checks.
    pub fn snapshot(&self) -> pg_sys::Snapshot {
        self.snapshot
    }

    /// Where the source keeps the storage a relation of the clone shadows, if
    /// it shadows any. Same OIDs everywhere: the clone's relfilenode is the
    /// source's.
    pub fn source_locator(&self, relfilenode: pg_sys::Oid) -> Option<RelLocator> {
        with_relations(|r| r.shadowed.contains(&u32::from(relfilenode)))
            .then(|| compat::rel_locator(pg_sys::DEFAULTTABLESPACE_OID, self.source, relfilenode))
    }

    /// The transaction that materialized a relation, if one did.
    pub fn materialized_by(&self, relfilenode: pg_sys::Oid) -> Option<u32> {
        with_relations(|r| r.materialized.get(&u32::from(relfilenode)).copied())
    }
}

/// Refuses a snapshot that does not see the materialization of `rel`: the
/// rows copied into the clone's own storage are that transaction's, so the
/// snapshot would find the table without its source rows.
///
/// # Safety
/// `rel` a valid relation, `snapshot` null or valid, in a transaction.
pub unsafe fn refuse_snapshot_before_materialization(
    rel: pg_sys::Relation,
    snapshot: pg_sys::Snapshot,
) {
    // SAFETY: guaranteed by the caller.
    unsafe {
        if snapshot.is_null() || (*snapshot).snapshot_type != pg_sys::SnapshotType::SNAPSHOT_MVCC {
            return;
        }
        let Some(view) = current() else {
            return;
        };
        let Some(xid) = view.materialized_by(compat::relfilenode_of(rel)) else {
            return;
        };
        let xid = pg_sys::TransactionId::from(xid);
        if pg_sys::TransactionIdIsCurrentTransactionId(xid)
            || !pg_sys::XidInMVCCSnapshot(xid, snapshot)
        {
            return;
        }
        let name = crate::pg::relation::relation_name(rel);
        CowError::new(
            PgSqlErrorCode::ERRCODE_T_R_SERIALIZATION_FAILURE,
            format!("could not read table \"{name}\": it was materialized after this transaction's snapshot was taken"),
        )
        .detail(format!(
            "Its rows were copied from the source into the clone's own storage by transaction {}, which this snapshot does not see.",
            u32::from(xid)
        ))
        .hint("Retry the transaction.")
        .raise()
    }
}

thread_local! {
    /// Owner fields for the source's storage handles, one per relfilenode,
    /// boxed so their addresses never move.
    static OWNED_SMGR: std::cell::RefCell<std::collections::HashMap<u32, Box<pg_sys::SMgrRelation>>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}

/// The owner field that keeps a source relation's files open in this
/// backend, as the relcache does for its own relations: without it the
/// handle would be closed, and its files reopened, at every transaction end.
pub fn smgr_home(locator: RelLocator) -> *mut pg_sys::SMgrRelation {
    let relfilenode = u32::from(compat::locator_relfilenode(&locator));
    OWNED_SMGR.with(|owned| {
        let mut owned = owned.borrow_mut();
        let home = owned
            .entry(relfilenode)
            .or_insert_with(|| Box::new(std::ptr::null_mut()));
        &mut **home as *mut pg_sys::SMgrRelation
    })
}

/// Number of blocks of a shadowed relation's source main fork, which always
/// exists (the source guard keeps it), through the backend's owned handle.
pub fn source_block_count(locator: RelLocator) -> u32 {
    // SAFETY: the home field lives for the process; smgrnblocks opens the
    // file if needed and raises if it is missing.
    unsafe {
        let smgr = compat::own_smgr(smgr_home(locator), locator);
        pg_sys::smgrnblocks(smgr, pg_sys::ForkNumber::MAIN_FORKNUM)
    }
}

/// Builds T as a process-lifetime MVCC snapshot. Every transaction running at
/// T (subtransactions included) is in `xip`, so `suboverflowed` is false and
/// pg_subtrans is never consulted.
fn leak_snapshot(point: &crate::pin::snapshot::ClonePoint) -> pg_sys::Snapshot {
    let running: &'static mut [pg_sys::TransactionId] = Box::leak(
        point
            .running
            .iter()
            .map(|&xid| pg_sys::TransactionId::from(xid))
            .collect::<Vec<_>>()
            .into_boxed_slice(),
    );
    // SAFETY: SnapshotData is a plain C struct for which all-zero is a valid
    // (empty) value; the fields an MVCC check reads are set below.
    let mut snapshot: pg_sys::SnapshotData = unsafe { std::mem::zeroed() };
    snapshot.snapshot_type = pg_sys::SnapshotType::SNAPSHOT_MVCC;
    snapshot.xmin = pg_sys::TransactionId::from(point.xmin);
    snapshot.xmax = pg_sys::TransactionId::from(point.xmax);
    snapshot.xip = running.as_mut_ptr();
    snapshot.xcnt = running.len() as u32;
    snapshot.suboverflowed = false;
    snapshot.takenDuringRecovery = false;
    snapshot.copied = true;
    compat::set_snapshot_lsn(&mut snapshot, point.lsn);
    Box::leak(Box::new(snapshot))
}
