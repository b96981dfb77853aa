//! Test-only failpoints in clone creation: `cow.debug_failpoint` (superuser
//! only) set to `error:<point>` raises there, `pause:<point>` waits there (up
//! to ten minutes, logging that it did) so a test can kill -9 the server at
//! a chosen moment, and `sleep:<point>` waits three seconds and goes on, so a
//! test can change the source meanwhile. Empty, the default, does nothing.

use std::ffi::CString;
use std::time::{Duration, Instant};

use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use pgrx::{pg_sys, PgSqlErrorCode};

use crate::pg::error::CowError;

static FAILPOINT: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

pub fn define_setting() {
    GucRegistry::define_string_guc(
        c"cow.debug_failpoint",
        c"Test only: make cow.clone or a materialization fail or pause at a named point.",
        c"error:<point>, pause:<point> or sleep:<point>, where point is after_createdb, after_pin, after_catalog_copy, before_commit, materialize_mid_table, materialize_switch, materialize_between_tables or materialize_finish.",
        &FAILPOINT,
        GucContext::Suset,
        GucFlags::default(),
    );
}

pub fn reached(point: &str) {
    let Some(setting) = FAILPOINT.get() else {
        return;
    };
    let setting = setting.to_string_lossy();
    let Some((action, at)) = setting.split_once(':') else {
        return;
    };
    if at != point {
        return;
    }
    match action {
        "error" => CowError::new(
            PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
            format!("cowclone failpoint \"{point}\" reached"),
        )
        .raise(),
        "pause" => wait_at(point, Duration::from_secs(600)),
        "sleep" => wait_at(point, Duration::from_secs(3)),
        _ => {}
    }
}

fn wait_at(point: &str, how_long: Duration) {
    pgrx::log!("cowclone: paused at failpoint \"{point}\"");
    let started = Instant::now();
    while started.elapsed() < how_long {
        // SAFETY: waiting on this backend's own latch; WL_EXIT_ON_PM_DEATH
        // makes the backend exit if the postmaster is killed meanwhile.
        unsafe {
            pg_sys::WaitLatch(
                pg_sys::MyLatch,
                (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
                200,
                pg_sys::PG_WAIT_EXTENSION,
            );
            pg_sys::ResetLatch(pg_sys::MyLatch);
        }
        pgrx::check_for_interrupts!();
    }
}
