//! The clone point T and the pin that keeps it readable.
//!
//! A backend's snapshot holds back vacuum only in its own database, and the
//! cloning backend may be connected anywhere. So every clone owns a physical
//! replication slot whose `xmin` is T's xmin: slots hold back every
//! database's horizon, survive restarts and show in `pg_replication_slots`.
//!
//! Order matters (see docs/ARCHITECTURE.md, "Pin before taking T"): the slot
//! first gets a conservative xmin under ProcArrayLock, the way logical slot
//! creation does, then T is taken, then the pin moves up to T's xmin.

use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use pgrx::{pg_sys, PgSqlErrorCode};
use serde::{Deserialize, Serialize};

use crate::pg::compat;
use crate::pg::error::CowError;

/// T as stored: never depends on pg_subtrans later, because running
/// subtransactions are listed explicitly in `running`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClonePoint {
    pub xmin: u32,
    pub xmax: u32,
    /// Every transaction (top-level or sub) running at T.
    pub running: Vec<u32>,
    pub lsn: u64,
    /// TimestampTz (microseconds since 2000-01-01).
    pub taken_at: i64,
}

pub fn slot_name(clone: pg_sys::Oid) -> String {
    format!("cowclone_{}", u32::from(clone))
}

/// A registered snapshot, unregistered when dropped.
pub struct HeldSnapshot(pub pg_sys::Snapshot);

impl HeldSnapshot {
    /// A fresh MVCC snapshot of the whole cluster, registered until dropped.
    pub fn latest() -> Self {
        // SAFETY: inside a transaction; RegisterSnapshot copies the static
        // snapshot GetLatestSnapshot returns.
        Self(unsafe { pg_sys::RegisterSnapshot(pg_sys::GetLatestSnapshot()) })
    }
}

impl Drop for HeldSnapshot {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            // SAFETY: the snapshot was registered by `pin_and_take`; unregistering cannot raise.
            unsafe { pg_sys::UnregisterSnapshot(self.0) };
        }
    }
}

/// Sets the acquired slot's xmin.
///
/// # Safety
/// This backend must have acquired a slot (MyReplicationSlot).
unsafe fn set_slot_xmin(xmin: pg_sys::TransactionId) {
    // SAFETY: guaranteed by the caller; the slot's spinlock guards its
    // fields. ReplicationSlotControlLock, held exclusively, waits out any
    // backend that read the slots before this change and has yet to publish
    // what it read (current minor releases publish under the lock, shared),
    // so no horizon without this pin is published after the caller's
    // `ReplicationSlotsComputeRequiredXmin`.
    unsafe {
        let control = compat::replication_slot_control_lock();
        pg_sys::LWLockAcquire(control, pg_sys::LWLockMode::LW_EXCLUSIVE);
        let slot = pg_sys::MyReplicationSlot;
        pg_sys::SpinLockAcquire(&mut (*slot).mutex);
        (*slot).effective_xmin = xmin;
        (*slot).data.xmin = xmin;
        pg_sys::SpinLockRelease(&mut (*slot).mutex);
        pg_sys::LWLockRelease(control);
    }
}

/// Creates the clone's ephemeral slot, pins conservatively, takes T, and pins T.
pub fn pin_and_take(clone: pg_sys::Oid) -> (HeldSnapshot, ClonePoint) {
    // SAFETY: runs in a backend inside a transaction, with no slot acquired
    // (cow.clone refuses to run otherwise); every call below is the public
    // API logical slot creation uses in the same order.
    unsafe {
        pg_sys::CheckSlotRequirements();
        if !pg_sys::MyReplicationSlot.is_null() {
            CowError::new(
                PgSqlErrorCode::ERRCODE_OBJECT_IN_USE,
                "this session already holds a replication slot",
            )
            .raise();
        }
        compat::create_ephemeral_slot(&slot_name(clone));

        // The conservative pin is published without holding ProcArrayLock
        // across it: `ReplicationSlotsComputeRequiredXmin(true)` expects
        // callers to hold ReplicationSlotControlLock too in current minor
        // releases and takes it itself in older ones, so no one locking
        // order suits every release. Nothing T needs can go in the gap: T is
        // taken afterwards, and rows vacuum may remove meanwhile are dead to
        // every snapshot, T included. (set_slot_xmin keeps a concurrent,
        // older computation from being published after ours.)
        let lock = compat::proc_array_lock();
        pg_sys::LWLockAcquire(lock, pg_sys::LWLockMode::LW_EXCLUSIVE);
        let conservative = pg_sys::GetOldestSafeDecodingTransactionId(false);
        pg_sys::LWLockRelease(lock);
        set_slot_xmin(conservative);
        pg_sys::ReplicationSlotsComputeRequiredXmin(false);

        let held = HeldSnapshot::latest();
        let snapshot = held.0;
        set_slot_xmin((*snapshot).xmin);
        pg_sys::ReplicationSlotsComputeRequiredXmin(false);

        let point = ClonePoint {
            xmin: u32::from((*snapshot).xmin),
            xmax: u32::from((*snapshot).xmax),
            running: running_transactions(snapshot),
            lsn: pg_sys::GetXLogInsertRecPtr(),
            taken_at: pg_sys::GetCurrentTimestamp(),
        };
        (held, point)
    }
}

/// T's running transactions with subtransactions resolved now, while this
/// backend's snapshot still keeps pg_subtrans for them.
///
/// # Safety
/// `snapshot` must be a registered MVCC snapshot.
unsafe fn running_transactions(snapshot: pg_sys::Snapshot) -> Vec<u32> {
    // SAFETY: guaranteed by the caller; xip/subxip hold xcnt/subxcnt entries.
    unsafe {
        let snap = &*snapshot;
        let top: Vec<u32> = (0..snap.xcnt as usize)
            .map(|i| u32::from(*snap.xip.add(i)))
            .collect();
        let mut running = top.clone();
        if !snap.suboverflowed {
            running
                .extend((0..snap.subxcnt.max(0) as usize).map(|i| u32::from(*snap.subxip.add(i))));
        } else {
            let first_normal = u32::from(pg_sys::FirstNormalTransactionId);
            let mut xid = u32::from(snap.xmin);
            while xid != u32::from(snap.xmax) {
                if !top.contains(&xid) && xid >= first_normal {
                    let parent = u32::from(pg_sys::SubTransGetTopmostTransaction(xid.into()));
                    if parent != xid && top.contains(&parent) {
                        running.push(xid);
                    }
                }
                xid = xid.wrapping_add(1);
            }
        }
        running.sort_unstable();
        running
    }
}

/// Makes the clone's slot survive restarts and lets go of it.
pub fn persist_pin() {
    // SAFETY: called once at the end of cow.clone, while this backend holds
    // the ephemeral slot created by pin_and_take.
    unsafe {
        pg_sys::ReplicationSlotMarkDirty();
        pg_sys::ReplicationSlotPersist();
        pg_sys::ReplicationSlotRelease();
    }
}

/// Drops a clone's slot if it exists.
pub fn drop_pin(clone: pg_sys::Oid) -> bool {
    let name = std::ffi::CString::new(slot_name(clone)).expect("no NUL");
    // SAFETY: looking a slot up by name takes its own locks; dropping needs no
    // slot acquired by this backend, which holds none outside cow.clone.
    unsafe {
        if pg_sys::SearchNamedReplicationSlot(name.as_ptr(), true).is_null() {
            return false;
        }
        pg_sys::ReplicationSlotDrop(name.as_ptr(), true);
    }
    true
}

/// `cow.pin_warn_age`: a pin older than this many transactions is reported.
static PIN_WARN_AGE: GucSetting<i32> = GucSetting::<i32>::new(10_000_000);

pub fn define_settings() {
    GucRegistry::define_int_guc(
        c"cow.pin_warn_age",
        c"Age in transactions past which a clone's pin is reported with a WARNING (0: never).",
        c"A pin holds back VACUUM in every database of the cluster to its clone point; cow.clones shows its state.",
        &PIN_WARN_AGE,
        0,
        i32::MAX,
        GucContext::Suset,
        GucFlags::default(),
    );
}

/// How a clone's pin stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PinState {
    Ok,
    /// Older than `cow.pin_warn_age`.
    Old,
    /// The clone's slot does not exist.
    Missing,
}

impl PinState {
    pub fn label(self) -> &'static str {
        match self {
            PinState::Ok => "ok",
            PinState::Old => "warning",
            PinState::Missing => "missing",
        }
    }
}

/// The age of a clone's pin in transactions (None if it has no slot), and its state.
pub fn pin_age(clone: pg_sys::Oid) -> (Option<i64>, PinState) {
    let name = std::ffi::CString::new(slot_name(clone)).expect("no NUL");
    // SAFETY: looking a slot up takes ReplicationSlotControlLock; its xmin
    // is read under the slot's spinlock, as slot.c does.
    let xmin = unsafe {
        let slot = pg_sys::SearchNamedReplicationSlot(name.as_ptr(), true);
        if slot.is_null() {
            return (None, PinState::Missing);
        }
        pg_sys::SpinLockAcquire(&mut (*slot).mutex);
        let xmin = (*slot).data.xmin;
        pg_sys::SpinLockRelease(&mut (*slot).mutex);
        u32::from(xmin)
    };
    // SAFETY: reading the next transaction id takes XidGenLock briefly.
    let next = unsafe { pg_sys::ReadNextFullTransactionId().value } as u32;
    let age = next.wrapping_sub(xmin) as i64;
    let limit = PIN_WARN_AGE.get();
    let state = if limit > 0 && age > limit as i64 {
        PinState::Old
    } else {
        PinState::Ok
    };
    (Some(age), state)
}

/// Reports an old pin with a WARNING (client and server log).
pub fn warn_if_old(clone: pg_sys::Oid, clone_name: &str, age: i64) {
    CowError::new(
        PgSqlErrorCode::ERRCODE_WARNING,
        format!(
            "the pin of clone \"{clone_name}\" is {age} transactions old (cow.pin_warn_age is {})",
            PIN_WARN_AGE.get()
        ),
    )
    .detail(format!(
        "Replication slot \"{}\" holds back VACUUM in every database of the cluster to the clone point, so dead rows accumulate everywhere.",
        slot_name(clone)
    ))
    .hint(format!("Drop the clone (DROP DATABASE {clone_name}) when it is no longer needed."))
    .warn();
}

/// Clones named by persistent, inactive cowclone slots: candidates for a
/// pin whose clone is gone. Slots still being set up are ephemeral or
/// acquired, and are left alone.
pub fn persistent_pins() -> Vec<pg_sys::Oid> {
    let mut clones = Vec::new();
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
            let settled = (*slot).data.persistency
                == pg_sys::ReplicationSlotPersistency::RS_PERSISTENT
                && (*slot).active_pid == 0;
            pg_sys::SpinLockRelease(&mut (*slot).mutex);
            if let (true, Some(oid)) = (settled, name.strip_prefix("cowclone_")) {
                if let Ok(oid) = oid.parse::<u32>() {
                    clones.push(pg_sys::Oid::from(oid));
                }
            }
        }
        pg_sys::LWLockRelease(lock);
    }
    clones
}
