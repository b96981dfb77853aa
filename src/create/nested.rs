//! Cloning a clone. The child reads the same root source, as of the same
//! point, as its parent does, and starts with a copy of everything its
//! parent made its own (rows it wrote or moved, tombstones, tables and
//! indexes it created, sequences) as of the child's point. So a clone eight
//! levels down reads exactly as a clone of the root does, and after its
//! creation nothing of the child depends on the parent: the parent can be
//! written, vacuumed, materialized or dropped (docs/ARCHITECTURE.md, "Clones
//! of clones", says why this, and not a chain of parents read at each level).
//!
//! What makes the copy consistent, with the parent written all along:
//! - the parent is pinned (an ephemeral slot, for the length of the copy),
//!   so nothing its point sees is pruned or vacuumed away before it is
//!   copied, and its catalog is copied as any source's is (`catalog_copy`);
//! - its tables are held with `ShareUpdateExclusiveLock`, which DML does not
//!   wait for but VACUUM, ANALYZE and DDL do: no line pointer an index entry
//!   names is freed, reused or cut off during the copy;
//! - every index is copied before any heap, so each entry it holds points
//!   at a line pointer of the heap copy (sanitizing turns the rows the point
//!   does not see into dead line pointers), and every row the point sees
//!   has its entries (they were made before the point);
//! - an index is copied page for page and then checked unchanged (page
//!   LSNs), as the catalog's are; one that keeps changing is copied under a
//!   `ShareLock` of its own, taken alone (so it cannot deadlock with DML,
//!   which waits for it a moment) and released right after.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use pgrx::{pg_sys, PgSqlErrorCode};

use crate::create::catalog_copy::{self, AccessMethodSwitch};
use crate::create::clone::{
    check_catalog_not_rewritten, create_database_shell, inherit_frozen_horizons, inherit_settings,
    refuse_other_tablespace, set_pending, CloneOutcome, Pending, SourceInfo,
};
use crate::create::point::PointRequest;
use crate::create::source::{SourceDatabase, SourceRelation};
use crate::pg::compat;
use crate::pg::error::CowError;
use crate::pg::failpoint;
use crate::pg::relation::{lock_relation_in, unlock_relation_in};
use crate::pin::exact;
use crate::pin::slot;
use crate::pin::snapshot::{self, ClonePoint, HeldSnapshot, PinTaken, PointSnapshot};
use crate::state::lineage::{self, Level};
use crate::state::record::{self, CloneRecord};

/// The deepest clone that can be cloned again is one level above this.
pub const MAX_DEPTH: u32 = 8;
const LOCK_ATTEMPTS: usize = 5;

/// Refuses a clone of `parent` (a clone) that cannot be made, before
/// anything is created or locked.
pub fn refuse(parent: &CloneRecord, parent_name: &str, request: PointRequest) {
    if parent.depth >= MAX_DEPTH {
        CowError::new(
            PgSqlErrorCode::ERRCODE_PROGRAM_LIMIT_EXCEEDED,
            format!(
                "clone depth exceeded: database \"{parent_name}\" is a clone {} levels deep",
                parent.depth
            ),
        )
        .detail(format!(
            "Clones can be nested at most {MAX_DEPTH} levels below an ordinary database."
        ))
        .hint(format!(
            "Materialize \"{parent_name}\" first (SELECT cow.materialize('{parent_name}')): \
             a materialized clone is an ordinary database again."
        ))
        .raise();
    }
    if request != PointRequest::Now {
        CowError::new(
            PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            format!("database \"{parent_name}\" is a clone, which keeps no history"),
        )
        .detail("A clone of a clone can only be made as of now.")
        .hint(format!(
            "Clone \"{parent_name}\" as of now, or clone its source \"{}\" as of a past point.",
            parent.source_name
        ))
        .raise();
    }
    if lineage::job(pg_sys::Oid::from(parent.clone)).is_some() {
        CowError::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("database \"{parent_name}\" is being materialized"),
        )
        .detail("Its tables move from its source into its own storage one by one.")
        .hint(format!(
            "Clone it once cow.materialize_progress shows the job ended, or cancel it with \
             cow.cancel_materialize('{parent_name}')."
        ))
        .raise();
    }
}

/// The parent's relations whose storage the copy reads outside its catalog.
fn has_own_storage(rel: &SourceRelation) -> bool {
    !rel.is_system() && rel.has_storage() && !rel.shared && rel.persistence != b't'
}

/// The relations VACUUM could change under the copy: tables, materialized
/// views, TOAST tables (an index is vacuumed with its table).
fn needs_lock(rel: &SourceRelation) -> bool {
    has_own_storage(rel) && matches!(rel.kind, b'r' | b'm' | b't')
}

/// The parent, held for the copy: its point, its relations as of it, and
/// whether this backend holds a pin slot for it, to release before commit.
pub struct HeldParent {
    pub point: ClonePoint,
    pub relations: Vec<SourceRelation>,
    slot_acquired: bool,
}

impl HeldParent {
    /// Lets go of the parent's pin (an ephemeral slot is dropped): once
    /// the copy is made, nothing of the child reads the parent.
    pub fn release(self) {
        if self.slot_acquired {
            slot::release_acquired();
        }
    }
}

/// Locks every table of the parent against VACUUM and DDL, pins the parent,
/// then takes the child's point (exact at its WAL position) and the
/// parent's relations as of it. A table created between the listing and the
/// point is locked and the point taken again.
pub fn hold_parent(parent: &SourceDatabase) -> HeldParent {
    let mut locked: HashSet<u32> = HashSet::new();
    let mut slot_acquired = false;
    for _ in 0..LOCK_ATTEMPTS {
        let listing = HeldSnapshot::latest();
        let mut unlocked: Vec<u32> = parent
            .relations(listing.0)
            .iter()
            .filter(|r| needs_lock(r) && !locked.contains(&r.oid))
            .map(|r| r.oid)
            .collect();
        drop(listing);
        unlocked.sort_unstable();
        for oid in unlocked {
            lock_relation_in(
                parent.oid,
                pg_sys::Oid::from(oid),
                pg_sys::ShareUpdateExclusiveLock,
            );
            locked.insert(oid);
        }
        let taken = if slot_acquired {
            snapshot::point_of(&HeldSnapshot::latest())
        } else {
            let (held, taken, pin) = snapshot::pin_and_take(parent.oid, |_, _| {});
            drop(held);
            slot_acquired = pin == PinTaken::Created;
            taken
        };
        let point = exact::refine(&taken);
        let relations = parent.relations(PointSnapshot::new(&point).as_ptr());
        if relations
            .iter()
            .all(|r| !needs_lock(r) || locked.contains(&r.oid))
        {
            return HeldParent {
                point,
                relations,
                slot_acquired,
            };
        }
    }
    CowError::new(
        PgSqlErrorCode::ERRCODE_T_R_SERIALIZATION_FAILURE,
        "the parent clone kept creating relations during the clone",
    )
    .detail(format!(
        "New relations appeared during each of {LOCK_ATTEMPTS} attempts to lock them all."
    ))
    .hint("Retry when less DDL runs in the parent.")
    .raise()
}

/// Refuses a parent with relations the copy cannot judge: tables on a table
/// access method other than heap or cowclone's, storage outside pg_default.
/// Indexes of any access method are copied page for page.
pub fn check_supported(
    parent: &SourceDatabase,
    relations: &[SourceRelation],
    at: pg_sys::Snapshot,
) {
    let heap_like: Vec<u32> = parent
        .access_methods(relations, at)
        .into_iter()
        .filter(|(_, name)| name == "heap" || name == "cow")
        .map(|(oid, _)| oid)
        .collect();
    for rel in relations.iter().filter(|r| has_own_storage(r)) {
        refuse_other_tablespace(rel);
        if matches!(rel.kind, b'r' | b'm' | b't') && !heap_like.contains(&rel.am) {
            CowError::new(
                PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
                format!(
                    "relation \"{}\" uses a table access method cowclone cannot copy",
                    rel.name
                ),
            )
            .detail("A clone of a clone copies its parent's own tables; they must use heap.")
            .raise();
        }
    }
}

/// Gives the child a copy of every relation file of the parent outside its
/// catalog: indexes first (see the module's comment), then sequences page
/// for page, then heaps sanitized as of the point (`at`), and the init
/// forks of unlogged relations. Returns how many of them the child shadows
/// (reads from the root source as well).
pub fn copy_own_storage(
    clone: pg_sys::Oid,
    parent: &SourceDatabase,
    relations: &[SourceRelation],
    at: pg_sys::Snapshot,
    shadowed_by_parent: &HashSet<u32>,
) -> i64 {
    let own: Vec<&SourceRelation> = relations.iter().filter(|r| has_own_storage(r)).collect();
    let target = |rel: &SourceRelation| {
        compat::rel_locator(
            pg_sys::DEFAULTTABLESPACE_OID,
            clone,
            pg_sys::Oid::from(rel.relfilenode),
        )
    };
    for rel in &own {
        // SAFETY: the clone's directory has no file at a user relfilenode
        // (template0's files are all below 16384); files are removed on abort.
        unsafe {
            pg_sys::RelationCreateStorage(target(rel), rel.persistence as std::ffi::c_char, true)
        };
    }
    let main = pg_sys::ForkNumber::MAIN_FORKNUM;
    let (indexes, rest): (Vec<&SourceRelation>, Vec<&SourceRelation>) =
        own.iter().partition(|r| r.kind == b'i');
    for rel in &indexes {
        copy_index(parent, rel, target(rel));
    }
    for rel in &rest {
        let judged = (rel.kind != b'S').then_some(at);
        let logged = rel.persistence != b'u';
        let from = parent.locator(rel.relfilenode);
        catalog_copy::copy_fork(from, main, rel.oid, &rel.name, judged, target(rel), logged);
    }
    for rel in own.iter().filter(|r| r.persistence == b'u') {
        let to = target(rel);
        // SAFETY: the main fork exists now.
        unsafe { compat::create_init_fork(to) };
        let init = pg_sys::ForkNumber::INIT_FORKNUM;
        let from = parent.locator(rel.relfilenode);
        catalog_copy::copy_fork(from, init, rel.oid, &rel.name, None, to, false);
    }
    own.iter()
        .filter(|r| shadowed_by_parent.contains(&r.relfilenode))
        .count() as i64
}

/// Copies an index of the parent as it is: first without any lock, checked
/// unchanged afterwards; if it changed each time (or is too large to hold
/// while checking, or unlogged, whose pages carry no LSN), under a
/// `ShareLock` on the index alone, which writers of its table wait for.
fn copy_index(parent: &SourceDatabase, rel: &SourceRelation, to: compat::RelLocator) {
    const OPTIMISTIC_ATTEMPTS: usize = 3;
    const LARGEST_HELD: u32 = 16384;
    let main = pg_sys::ForkNumber::MAIN_FORKNUM;
    let from = parent.locator(rel.relfilenode);
    let logged = rel.persistence != b'u';
    if logged && crate::create::source::block_count(from, main) <= LARGEST_HELD {
        for _ in 0..OPTIMISTIC_ATTEMPTS {
            let pages = catalog_copy::copy_relation(from, rel.oid, None);
            if catalog_copy::unchanged(from, rel.oid, &pages) {
                let pages: Vec<Vec<u8>> = pages.into_iter().map(|p| p.bytes).collect();
                catalog_copy::write_pages(to, &pages);
                return;
            }
        }
    }
    let index = pg_sys::Oid::from(rel.oid);
    lock_relation_in(parent.oid, index, pg_sys::ShareLock);
    catalog_copy::copy_fork(from, main, rel.oid, &rel.name, None, to, logged);
    unlock_relation_in(parent.oid, index, pg_sys::ShareLock);
}

/// The child's record: the parent's root, point and shadowed storage (that
/// still exists at the child's point), one level deeper, and the chain.
pub fn child_record(
    parent: &CloneRecord,
    parent_name: &str,
    child: Level,
    relations: &[SourceRelation],
) -> CloneRecord {
    let present: HashSet<u32> = relations.iter().map(|r| r.relfilenode).collect();
    CloneRecord {
        clone: child.oid,
        source: parent.source,
        source_name: parent.source_name.clone(),
        depth: parent.depth + 1,
        point: parent.point.clone(),
        created_at: child.created_at,
        shadowed: parent
            .shadowed
            .iter()
            .filter(|s| present.contains(&s.relfilenode))
            .cloned()
            .collect(),
        materialized: Vec::new(),
        owners: parent
            .owners
            .iter()
            .filter(|(node, _)| present.contains(node))
            .copied()
            .collect(),
        chain: parent.chain_for_child(parent_name, child),
    }
}

/// Makes a clone of the clone `parent` (see `nested`): the same shell,
/// catalog copy and record as any clone, with the parent's root source and
/// point, the parent's own storage copied as of the child's point, and no
/// pin to take (the parent's holds the root until this clone is counted).
pub(super) fn clone_of_clone(
    started: Instant,
    parent_db: &SourceDatabase,
    parent_name: &str,
    target: &str,
    info: &SourceInfo,
    parent: CloneRecord,
) -> CloneOutcome {
    let root = pg_sys::Oid::from(parent.source);
    // The root's holder recounts its clones under this lock, so it cannot
    // move the pin up past the parent's point before this clone is counted,
    // even if the parent is materialized or dropped right after.
    record::lock_source(root);
    let held = hold_parent(parent_db);
    // Read again now that no table of the parent can be switched by a
    // materialization: one that switched a table before the locks were
    // granted changed the record read before them, and the point sees it.
    let parent = record::read_record(parent_db.oid).unwrap_or_else(|| {
        CowError::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("database \"{parent_name}\" stopped being a clone during the clone"),
        )
        .hint(
            "Its materialization ended meanwhile: retry, and it is cloned as an ordinary database.",
        )
        .raise()
    });
    refuse(&parent, parent_name, PointRequest::Now);
    let (point, relations) = (held.point.clone(), held.relations.clone());
    let mut at = PointSnapshot::new(&point);
    catalog_copy::set_extension_namespace(parent_db.namespace_oid(&relations, at.as_ptr(), "cow"));
    check_supported(parent_db, &relations, at.as_ptr());
    let Some(root_pin) = slot::source_slot(root) else {
        CowError::new(
            PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
            format!(
                "the pin of \"{}\", the source of \"{parent_name}\", is missing",
                parent.source_name
            ),
        )
        .detail(format!(
            "Its slot {} does not exist.",
            slot::source_slot_name(root)
        ))
        .raise()
    };

    let clone = create_database_shell(target, &info.locale);
    set_pending(Some(Pending {
        clone,
        source: root,
        made_source_slot: false,
        persisted_source_slot: false,
    }));
    record::mark_building(clone);
    record::announce(clone, root, root_pin.xmin);
    inherit_frozen_horizons(clone, info);
    inherit_settings(parent_db.oid, clone);
    failpoint::reached("after_createdb");
    failpoint::reached("after_pin");
    let keep_access_methods = AccessMethodSwitch {
        replacement: HashMap::new(),
    };
    let copies =
        catalog_copy::copy_catalog(parent_db, &relations, at.as_ptr(), &keep_access_methods);
    // SAFETY: as in `clone_database`.
    unsafe { pg_sys::DropDatabaseBuffers(clone) };
    catalog_copy::write_catalog(clone, pg_sys::DEFAULTTABLESPACE_OID, &copies);
    // SAFETY: both databases live in pg_default; the clone is not in use.
    unsafe { compat::copy_relation_map(parent_db.oid, clone, pg_sys::DEFAULTTABLESPACE_OID) };
    check_catalog_not_rewritten(parent_db, &relations);
    let shadowed_by_parent = parent.shadowed.iter().map(|s| s.relfilenode).collect();
    let shadowed = copy_own_storage(
        clone,
        parent_db,
        &relations,
        at.as_ptr(),
        &shadowed_by_parent,
    );
    drop(at);
    held.release();
    failpoint::reached("after_catalog_copy");

    let child = Level {
        oid: u32::from(clone),
        name: target.to_string(),
        point_lsn: point.lsn,
        point_time: point.taken_at,
        // SAFETY: reads the clock.
        created_at: unsafe { pg_sys::GetCurrentTimestamp() },
    };
    record::save(&child_record(&parent, parent_name, child, &relations));
    failpoint::reached("before_commit");
    CloneOutcome {
        clone_oid: u32::from(clone),
        source_oid: root,
        source_name: parent.source_name.clone(),
        clone_point_lsn: record::format_lsn(point.lsn),
        clone_point_time: point.taken_at,
        catalog_relations: copies.len() as i64,
        shadowed_relations: shadowed,
        elapsed_ms: started.elapsed().as_secs_f64() * 1000.0,
    }
}
