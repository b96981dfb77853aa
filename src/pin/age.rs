//! How old a clone's pin is, and how it stands: held in the source alone by
//! its holder, held in every database by the slot, or missing.

use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use pgrx::{pg_sys, PgSqlErrorCode};

use crate::pg::error::CowError;
use crate::pin::slot::{self, SlotState};

/// `cow.pin_warn_age`: a pin older than this many transactions is reported.
static PIN_WARN_AGE: GucSetting<i32> = GucSetting::<i32>::new(10_000_000);

pub fn define_settings() {
    GucRegistry::define_int_guc(
        c"cow.pin_warn_age",
        c"Age in transactions past which a clone's pin is reported with a WARNING (0: never).",
        c"A pin holds back VACUUM in its source database to the clone point (in every database while no holder runs); cow.clones shows its state.",
        &PIN_WARN_AGE,
        0,
        i32::MAX,
        GucContext::Suset,
        GucFlags::default(),
    );
}

/// Where a source's pin is in force.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// A holder connected to the source advertises it: only the source
    /// (and the shared catalogs) is held back.
    Source,
    /// The slot is armed: every database is held back (no holder runs).
    Cluster,
    /// Neither: the source's slot does not exist.
    Missing,
    /// This server is a standby: nothing prunes here, and the primary's pin
    /// kept what it replays. Promotion puts the pin in force here
    /// (`state::wal`).
    Standby,
}

impl Scope {
    /// How a source's pin stands on this server now.
    pub fn current(source: pg_sys::Oid) -> Self {
        // SAFETY: reads shared recovery state.
        if unsafe { pg_sys::RecoveryInProgress() } {
            return Scope::Standby;
        }
        Scope::of(slot::source_slot(source))
    }

    pub fn of(state: Option<SlotState>) -> Self {
        match state {
            Some(s) if s.armed => Scope::Cluster,
            Some(s) if s.active_pid != 0 => Scope::Source,
            // Disarmed with nobody holding cannot outlive a holder (it re-arms
            // before it lets go); count it as missing rather than held.
            _ => Scope::Missing,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Scope::Source => "source-only",
            Scope::Cluster => "cluster-wide",
            Scope::Missing => "missing",
            Scope::Standby => "standby",
        }
    }
}

/// How a clone's pin stands: its scope, or `warning` when it is older than
/// `cow.pin_warn_age`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PinState {
    Held(Scope),
    Old,
}

impl PinState {
    pub fn label(self) -> &'static str {
        match self {
            PinState::Held(scope) => scope.label(),
            PinState::Old => "warning",
        }
    }
}

/// Transactions since `xmin`.
pub fn age_of(xmin: u32) -> i64 {
    // SAFETY: reading the next transaction id takes XidGenLock briefly.
    let next = unsafe { pg_sys::ReadNextFullTransactionId().value } as u32;
    next.wrapping_sub(xmin) as i64
}

/// The age in transactions of a clone's pin (its clone point's xmin) and its state.
pub fn pin_age(source: pg_sys::Oid, clone_point_xmin: u32) -> (Option<i64>, PinState) {
    let scope = Scope::current(source);
    if scope == Scope::Missing {
        return (None, PinState::Held(scope));
    }
    let age = age_of(clone_point_xmin);
    let limit = PIN_WARN_AGE.get();
    if limit > 0 && age > limit as i64 {
        (Some(age), PinState::Old)
    } else {
        (Some(age), PinState::Held(scope))
    }
}

/// Reports an old pin with a WARNING (client and server log).
pub fn warn_if_old(source_name: &str, clone_name: &str, age: i64) {
    CowError::new(
        PgSqlErrorCode::ERRCODE_WARNING,
        format!(
            "the pin of clone \"{clone_name}\" is {age} transactions old (cow.pin_warn_age is {})",
            PIN_WARN_AGE.get()
        ),
    )
    .detail(format!(
        "It holds back VACUUM in database \"{source_name}\" to the clone point, so dead rows accumulate there."
    ))
    .hint(format!("Drop the clone (DROP DATABASE {clone_name}) when it is no longer needed."))
    .warn();
}
