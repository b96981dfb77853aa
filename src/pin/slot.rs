//! The durable half of a source's pin: one physical replication slot per
//! source database with live clones, `cowclone_source_<source oid>`, whose
//! `xmin` is the oldest clone point xmin among that source's clones.
//!
//! A slot's xmin holds back the horizon of every database, and PostgreSQL
//! restores it from disk before any backend runs after a restart or a crash.
//! So the slot is the pin whenever no holder (`lifecycle::holder`) is
//! connected to the source. While a holder holds, the slot is *disarmed*: its
//! in-memory `effective_xmin`, which horizons read, is cleared, while
//! `data.xmin`, which is saved and restored, stays. An unacquired cowclone
//! slot is always armed: creation leaves it so, a holder re-arms it before it
//! lets go, and a crash restores it armed from disk.
//!
//! Order matters when a slot is made (see docs/ARCHITECTURE.md, "Pin before
//! taking T"): it first gets a conservative xmin, then T is taken, then the
//! pin moves up to T's xmin.

use std::ffi::CString;

use pgrx::pg_sys;

use crate::pg::compat;

/// Every slot cowclone makes starts with this.
const COWCLONE_PREFIX: &str = "cowclone_";
const SOURCE_PREFIX: &str = "cowclone_source_";
/// A source's history slot (`state::history`): WAL only, never an xmin, so
/// that `max_slot_wal_keep_size` invalidating it never takes a pin away.
const HISTORY_PREFIX: &str = "cowclone_history_";
/// Before 0.2.0 every clone had its own slot, `cowclone_<clone oid>`.
const LEGACY_PREFIX: &str = "cowclone_";

pub fn source_slot_name(source: pg_sys::Oid) -> String {
    format!("{SOURCE_PREFIX}{}", u32::from(source))
}

pub fn legacy_slot_name(clone: pg_sys::Oid) -> String {
    format!("{LEGACY_PREFIX}{}", u32::from(clone))
}

/// A cowclone slot as seen from any process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotState {
    /// The recorded pin (`data.xmin`, what `pg_replication_slots.xmin` shows).
    pub xmin: u32,
    /// Whether horizons honour it now (`effective_xmin` is set).
    pub armed: bool,
    /// The process that has it acquired (a holder, or a clone being made); 0 if none.
    pub active_pid: i32,
    /// Persistent (ephemeral while its first clone is being made).
    pub persistent: bool,
    /// The WAL it keeps (0 if none, or invalidated).
    pub restart_lsn: u64,
}

/// Every slot whose name starts with cowclone's prefix.
fn cowclone_slots() -> Vec<(String, SlotState)> {
    let mut found = Vec::new();
    // SAFETY: the slot array is read under ReplicationSlotControlLock in
    // shared mode, as pg_get_replication_slots does; each slot's fields are
    // read under its spinlock.
    unsafe {
        let lock = compat::replication_slot_control_lock();
        pg_sys::LWLockAcquire(lock, pg_sys::LWLockMode::LW_SHARED);
        let slots = (*pg_sys::ReplicationSlotCtl).replication_slots.as_mut_ptr();
        for i in 0..pg_sys::max_replication_slots.max(0) as usize {
            let slot = slots.add(i);
            if !(*slot).in_use {
                continue;
            }
            pg_sys::SpinLockAcquire(&mut (*slot).mutex);
            let name = pgrx::name_data_to_str(&(*slot).data.name).to_string();
            let state = SlotState {
                xmin: u32::from((*slot).data.xmin),
                armed: (*slot).effective_xmin != pg_sys::InvalidTransactionId,
                active_pid: (*slot).active_pid,
                persistent: (*slot).data.persistency
                    == pg_sys::ReplicationSlotPersistency::RS_PERSISTENT,
                restart_lsn: (*slot).data.restart_lsn,
            };
            pg_sys::SpinLockRelease(&mut (*slot).mutex);
            if name.starts_with(COWCLONE_PREFIX) {
                found.push((name, state));
            }
        }
        pg_sys::LWLockRelease(lock);
    }
    found
}

fn parse_oid(name: &str, prefix: &str) -> Option<pg_sys::Oid> {
    let digits = name.strip_prefix(prefix)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse::<u32>().ok().map(pg_sys::Oid::from)
}

/// Every source's slot, by source database.
pub fn source_slots() -> Vec<(pg_sys::Oid, SlotState)> {
    cowclone_slots()
        .into_iter()
        .filter_map(|(name, state)| Some((parse_oid(&name, SOURCE_PREFIX)?, state)))
        .collect()
}

/// Every per-clone slot an older version left, by clone database.
pub fn legacy_slots() -> Vec<(pg_sys::Oid, SlotState)> {
    cowclone_slots()
        .into_iter()
        .filter_map(|(name, state)| Some((parse_oid(&name, LEGACY_PREFIX)?, state)))
        .collect()
}

pub fn history_slot_name(source: pg_sys::Oid) -> String {
    format!("{HISTORY_PREFIX}{}", u32::from(source))
}

/// Every source's history slot, by source database.
pub fn history_slots() -> Vec<(pg_sys::Oid, SlotState)> {
    cowclone_slots()
        .into_iter()
        .filter_map(|(name, state)| Some((parse_oid(&name, HISTORY_PREFIX)?, state)))
        .collect()
}

pub fn history_slot(source: pg_sys::Oid) -> Option<SlotState> {
    history_slots()
        .into_iter()
        .find_map(|(oid, state)| (oid == source).then_some(state))
}

/// Makes the source's history slot, keeping WAL from the last checkpoint's
/// redo position on. Fails (53400) when every replication slot is taken.
///
/// # Safety
/// No slot acquired by this process; the caller holds the source lock.
pub unsafe fn create_history_slot(source: pg_sys::Oid) {
    // SAFETY: guaranteed by the caller; the slot is persistent from the
    // start, reserves WAL as a physical slot does, and is saved and
    // released before this returns.
    unsafe {
        compat::create_persistent_slot(&history_slot_name(source));
        pg_sys::ReplicationSlotReserveWal();
        pg_sys::ReplicationSlotMarkDirty();
        pg_sys::ReplicationSlotSave();
        pg_sys::ReplicationSlotRelease();
    }
}

/// Lets the source's history slot release WAL before `lsn`.
///
/// # Safety
/// No slot acquired by this process; the caller holds the source lock.
pub unsafe fn advance_history_slot(source: pg_sys::Oid, lsn: u64) {
    // SAFETY: guaranteed by the caller; the slot's fields are written under
    // its spinlock, saved, and the cluster's WAL horizon recomputed.
    unsafe {
        compat::acquire_slot(&history_slot_name(source));
        let slot = pg_sys::MyReplicationSlot;
        pg_sys::SpinLockAcquire(&mut (*slot).mutex);
        let moved = (*slot).data.restart_lsn != 0 && (*slot).data.restart_lsn < lsn;
        if moved {
            (*slot).data.restart_lsn = lsn;
        }
        pg_sys::SpinLockRelease(&mut (*slot).mutex);
        if moved {
            pg_sys::ReplicationSlotMarkDirty();
            pg_sys::ReplicationSlotSave();
            pg_sys::ReplicationSlotsComputeRequiredLSN();
        }
        pg_sys::ReplicationSlotRelease();
    }
}

pub fn source_slot(source: pg_sys::Oid) -> Option<SlotState> {
    source_slots()
        .into_iter()
        .find_map(|(oid, state)| (oid == source).then_some(state))
}

/// Sets the xmin of this process's acquired slot, recorded and in force.
///
/// # Safety
/// This process must have acquired a slot (MyReplicationSlot).
unsafe fn set_acquired(recorded: pg_sys::TransactionId, effective: pg_sys::TransactionId) {
    // SAFETY: guaranteed by the caller; the slot's spinlock guards its
    // fields. ReplicationSlotControlLock, held exclusively, waits out any
    // process that read the slots before this change and has yet to publish
    // what it read (current minor releases publish under the lock, shared),
    // so no horizon computed without this change is published after the
    // `ReplicationSlotsComputeRequiredXmin` below.
    unsafe {
        let control = compat::replication_slot_control_lock();
        pg_sys::LWLockAcquire(control, pg_sys::LWLockMode::LW_EXCLUSIVE);
        let slot = pg_sys::MyReplicationSlot;
        pg_sys::SpinLockAcquire(&mut (*slot).mutex);
        (*slot).effective_xmin = effective;
        (*slot).data.xmin = recorded;
        pg_sys::SpinLockRelease(&mut (*slot).mutex);
        pg_sys::LWLockRelease(control);
        pg_sys::ReplicationSlotsComputeRequiredXmin(false);
    }
}

/// The acquired slot's recorded pin.
///
/// # Safety
/// This process must have acquired a slot.
pub unsafe fn acquired_recorded_xmin() -> pg_sys::TransactionId {
    // SAFETY: guaranteed by the caller.
    unsafe { acquired_xmin() }
}

/// The acquired slot's recorded xmin.
///
/// # Safety
/// This process must have acquired a slot.
unsafe fn acquired_xmin() -> pg_sys::TransactionId {
    // SAFETY: guaranteed by the caller; read under the slot's spinlock.
    unsafe {
        let slot = pg_sys::MyReplicationSlot;
        pg_sys::SpinLockAcquire(&mut (*slot).mutex);
        let xmin = (*slot).data.xmin;
        pg_sys::SpinLockRelease(&mut (*slot).mutex);
        xmin
    }
}

/// Creates `name` as this backend's ephemeral slot, armed at the oldest xmin
/// any snapshot may still need, the way logical slot creation starts.
///
/// # Safety
/// In a transaction; no slot acquired by this process.
pub unsafe fn create_pinned_conservatively(name: &str) {
    // SAFETY: guaranteed by the caller; every call is the public API logical
    // slot creation uses in the same order.
    unsafe {
        pg_sys::CheckSlotRequirements();
        compat::create_ephemeral_slot(name);
        // The conservative pin is published without holding ProcArrayLock
        // across it: `ReplicationSlotsComputeRequiredXmin(true)` expects
        // callers to hold ReplicationSlotControlLock too in current minor
        // releases and takes it itself in older ones, so no one locking
        // order suits every release. Nothing T needs can go in the gap: T is
        // taken afterwards, and rows vacuum may remove meanwhile are dead to
        // every snapshot, T included.
        let lock = compat::proc_array_lock();
        pg_sys::LWLockAcquire(lock, pg_sys::LWLockMode::LW_EXCLUSIVE);
        let conservative = pg_sys::GetOldestSafeDecodingTransactionId(false);
        pg_sys::LWLockRelease(lock);
        set_acquired(conservative, conservative);
    }
}

/// Moves this process's acquired slot to `xmin`, recorded and in force.
///
/// # Safety
/// This process must have acquired a slot, and `xmin` must hold back nothing
/// less than what the slot's current pin protects that anyone still needs.
pub unsafe fn pin_acquired_at(xmin: pg_sys::TransactionId) {
    // SAFETY: guaranteed by the caller.
    unsafe { set_acquired(xmin, xmin) }
}

/// Makes the acquired ephemeral slot survive restarts (it stays acquired).
pub fn persist_acquired() {
    // SAFETY: called while this process holds the ephemeral slot it created.
    unsafe {
        pg_sys::ReplicationSlotMarkDirty();
        pg_sys::ReplicationSlotPersist();
    }
}

/// Lets go of this process's acquired slot, which stays as it is (armed);
/// an ephemeral one is dropped.
pub fn release_acquired() {
    // SAFETY: called while this process holds a slot.
    unsafe { pg_sys::ReplicationSlotRelease() }
}

/// Acquires a persistent slot for the life of this process.
///
/// # Safety
/// No slot acquired by this process; the caller has seen the slot inactive
/// under a lock that keeps every other cowclone process from acquiring it.
pub unsafe fn acquire(name: &str) {
    // SAFETY: guaranteed by the caller.
    unsafe { compat::acquire_slot(name) }
}

/// Records `xmin` as the acquired slot's pin on disk, keeping whether it is
/// armed; the write is flushed before this returns, so a crash restores it.
///
/// # Safety
/// This process must have acquired a slot, and be holding `xmin` (or an
/// older xmin) by some other means while the slot is disarmed.
pub unsafe fn record_acquired(xmin: pg_sys::TransactionId) {
    // SAFETY: guaranteed by the caller.
    unsafe {
        let armed = !acquired_disarmed();
        set_acquired(
            xmin,
            if armed {
                xmin
            } else {
                pg_sys::InvalidTransactionId
            },
        );
        pg_sys::ReplicationSlotMarkDirty();
        pg_sys::ReplicationSlotSave();
    }
}

/// # Safety
/// This process must have acquired a slot.
unsafe fn acquired_disarmed() -> bool {
    // SAFETY: guaranteed by the caller; read under the slot's spinlock.
    unsafe {
        let slot = pg_sys::MyReplicationSlot;
        pg_sys::SpinLockAcquire(&mut (*slot).mutex);
        let effective = (*slot).effective_xmin;
        pg_sys::SpinLockRelease(&mut (*slot).mutex);
        effective == pg_sys::InvalidTransactionId
    }
}

/// Puts the acquired slot's recorded pin in force (every database again).
///
/// # Safety
/// This process must have acquired a slot.
pub unsafe fn arm_acquired() {
    // SAFETY: guaranteed by the caller.
    unsafe {
        let xmin = acquired_xmin();
        set_acquired(xmin, xmin);
    }
}

/// Takes the acquired slot's pin out of force, keeping it recorded.
///
/// # Safety
/// This process must have acquired a slot and be advertising its recorded
/// xmin (or an older one) in the proc array, where the source's horizon sees it.
pub unsafe fn disarm_acquired() {
    // SAFETY: guaranteed by the caller.
    unsafe {
        let xmin = acquired_xmin();
        set_acquired(xmin, pg_sys::InvalidTransactionId);
    }
}

/// Whether this process has a slot acquired.
pub fn has_acquired() -> bool {
    // SAFETY: reads a process-local pointer.
    unsafe { !pg_sys::MyReplicationSlot.is_null() }
}

/// Drops this process's acquired slot. The caller holds the lock that
/// keeps other cowclone processes from acquiring it in between.
pub fn drop_acquired() {
    // SAFETY: called while this process holds a slot; its name is copied
    // before the slot is released (dropping an acquired slot is not part of
    // PostgreSQL's exported API, so it is released and dropped by name).
    let name =
        unsafe { pgrx::name_data_to_str(&(*pg_sys::MyReplicationSlot).data.name).to_string() };
    release_acquired();
    drop_slot(&name);
}

/// Drops an unacquired slot if it exists; false if there was none.
pub fn drop_slot(name: &str) -> bool {
    let name = CString::new(name).expect("slot names have no NUL");
    // SAFETY: looking a slot up by name takes its own locks; dropping needs no
    // slot acquired by this process (callers hold none at this point).
    unsafe {
        if pg_sys::SearchNamedReplicationSlot(name.as_ptr(), true).is_null() {
            return false;
        }
        pg_sys::ReplicationSlotDrop(name.as_ptr(), true);
    }
    true
}

/// Wakes the process holding a source's slot (its holder), so it re-reads
/// which clones it holds for.
pub fn wake_holder(source: pg_sys::Oid) {
    let Some(state) = source_slot(source) else {
        return;
    };
    if state.active_pid == 0 {
        return;
    }
    // SAFETY: BackendPidGetProc takes ProcArrayLock; setting another
    // process's latch is how PostgreSQL wakes one (a stale PGPROC's latch is
    // harmless to set).
    unsafe {
        let proc = pg_sys::BackendPidGetProc(state.active_pid);
        if !proc.is_null() {
            pg_sys::SetLatch(&mut (*proc).procLatch);
        }
    }
}

/// Sets a source's pin from the startup process (`state::wal`): at `xmin`
/// exactly, armed, its slot made if missing; with no clone left (None), the
/// slot is dropped. Runs as a standby or crash recovery replays a clone's
/// witness or drop, when replay starts, and when recovery ends, so the pin
/// is in force on a standby (whose horizons, and so any session that
/// survives a promotion, count it) and on a promoted standby or restored
/// base backup before anything may prune: slots are neither replicated nor
/// in base backups. No cowclone process acquires slots during recovery.
/// `only_lower`: the pin may only move down (or the slot be made), never up.
pub fn set_pin_in_recovery(source: pg_sys::Oid, xmin: Option<u32>, only_lower: bool) {
    // SAFETY: a start-up setting.
    if xmin.is_none() && unsafe { pg_sys::max_replication_slots } <= 0 {
        return;
    }
    refuse_without_slots(source);
    let name = source_slot_name(source);
    let existing = source_slot(source);
    let xmin = match (xmin, existing) {
        (Some(wanted), Some(s))
            if only_lower && s.xmin != 0 && crate::pin::snapshot::xid_precedes(s.xmin, wanted) =>
        {
            Some(s.xmin)
        }
        _ => xmin,
    };
    let Some(xmin) = xmin else {
        if existing.is_some_and(|s| s.active_pid == 0) {
            drop_slot(&name);
            pgrx::log!(
                "cowclone: released the pin of database {} in recovery: no clones left",
                u32::from(source)
            );
        }
        return;
    };
    if existing.is_some_and(|s| s.armed && s.xmin == xmin) {
        return;
    }
    let pin = pg_sys::TransactionId::from(xmin);
    // SAFETY: nothing else acquires cowclone slots during recovery; the slot
    // is made ephemeral (which PostgreSQL discards at a restart), armed,
    // then persisted, so it is never a persistent slot without its pin; an
    // existing one is saved before it is released.
    unsafe {
        match existing {
            Some(_) => compat::acquire_slot(&name),
            None => compat::create_ephemeral_slot(&name),
        }
        set_acquired(pin, pin);
        if existing.is_some() {
            pg_sys::ReplicationSlotMarkDirty();
            pg_sys::ReplicationSlotSave();
        } else {
            persist_acquired();
        }
        release_outside_proc_array();
    }
    pgrx::log!(
        "cowclone: pin of database {} in force at xmin {xmin} in recovery",
        u32::from(source)
    );
}

/// A server that must pin a source but cannot hold a slot stops, saying
/// why, rather than go on with the source unpinned (and before PostgreSQL's
/// slot array, absent with `max_replication_slots = 0`, is looked at). A
/// slot made below `wal_level = replica` would stop the next start anyway.
fn refuse_without_slots(source: pg_sys::Oid) {
    // SAFETY: start-up settings.
    let (slots, wal_level) = unsafe { (pg_sys::max_replication_slots, pg_sys::wal_level) };
    let replica = pg_sys::WalLevel::WAL_LEVEL_REPLICA as i32;
    if slots > 0 && wal_level >= replica {
        return;
    }
    crate::pg::error::CowError::new(
        pgrx::PgSqlErrorCode::ERRCODE_CONFIGURATION_LIMIT_EXCEEDED,
        format!(
            "cowclone cannot pin database {}, which has clones: max_replication_slots is {slots} and wal_level is {}",
            u32::from(source),
            if wal_level >= replica { "replica or higher" } else { "minimal" }
        ),
    )
    .hint("Set max_replication_slots to at least the number of databases with clones and wal_level to replica or logical, and start the server again.")
    .raise();
}

/// Releases the acquired slot from the startup process, which is not in the
/// proc array. `ReplicationSlotRelease` copies the releasing process's
/// status flags into the proc array's dense flags array at
/// `MyProc->pgxactoff`; for a process outside the array that index means
/// nothing, and its value 0 is a live backend's entry. The flags array has
/// an entry per PGPROC (`allProcCount` for backends and auxiliary
/// processes, plus one per prepared transaction), while the proc array's
/// dense part never grows past backends plus prepared transactions: the
/// flags array's last entry is never read, and the write goes there.
///
/// Crash recovery in single-user mode runs in the standalone backend,
/// which is in the proc array: it releases the plain way.
///
/// # Safety
/// This process must have acquired a slot.
unsafe fn release_outside_proc_array() {
    // SAFETY: guaranteed by the caller; MyProc and ProcGlobal are set up at
    // process start, and the field is restored before anything reads it.
    unsafe {
        let backend_type = pg_sys::MyBackendType;
        if backend_type != pg_sys::BackendType::B_STARTUP {
            pg_sys::ReplicationSlotRelease();
            return;
        }
        let me = pg_sys::MyProc;
        let saved = (*me).pgxactoff;
        let prepared = std::ffi::CStr::from_ptr(pg_sys::GetConfigOption(
            c"max_prepared_transactions".as_ptr(),
            false,
            false,
        ))
        .to_str()
        .ok()
        .and_then(|v| v.parse::<i32>().ok())
        .expect("max_prepared_transactions is an integer setting");
        let entries = (*pg_sys::ProcGlobal).allProcCount as i32 + prepared;
        (*me).pgxactoff = entries - 1;
        pg_sys::ReplicationSlotRelease();
        (*me).pgxactoff = saved;
    }
}

/// The xmin of the slot this process has acquired (its pin).
pub fn acquired_pin() -> u32 {
    // SAFETY: called while this process holds a slot.
    u32::from(unsafe { acquired_xmin() })
}
