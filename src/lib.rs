//! cowclone: instant, zero-copy clones of a live database inside the running
//! PostgreSQL cluster.
//!
//! The crate is laid out one folder per stage of a clone's life and one
//! module per concept; `docs/ARCHITECTURE.md` explains how they fit together.

use pgrx::prelude::*;

/// Calls a function pointer PostgreSQL gave us (an access method's callback,
/// a previous hook). An error it raises is a longjmp, which
/// `pg_guard_ffi_boundary` catches and turns into a Rust-safe one.
macro_rules! pg_call {
    ($call:expr) => {{
        #[allow(ffi_unwind_calls, unused_unsafe)]
        // SAFETY: the callers pass valid arguments to a callback of the
        // running server; the boundary makes its longjmp safe for Rust.
        let result = unsafe { ::pgrx::pg_sys::ffi::pg_guard_ffi_boundary(|| $call) };
        result
    }};
}

// The stages of a clone's life, each a folder; a folder uses only those
// listed before it (see docs/ARCHITECTURE.md, "Layout"; pg_test's layout
// test enforces it).
mod create;
mod lifecycle;
mod pg;
mod pin;
mod read;
mod state;
mod write;

mod api;

::pgrx::pg_module_magic!(name, version);

/// Called by PostgreSQL each time a process loads the library.
///
/// Everything cowclone needs process-wide (hooks, background workers, shared
/// memory) can only be set up while the postmaster loads
/// `shared_preload_libraries`; `preload` decides and records which case this is.
#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    if pg::preload::on_library_load() {
        lifecycle::guard::refuse_binary_upgrade_with_clones();
        state::wal::register();
        lifecycle::guard::install();
        read::hooks::install();
        utility_hook::install();
        pg::failpoint::define_setting();
        pin::age::define_settings();
        state::jobs::init();
        lifecycle::materialize::define_settings();
        lifecycle::retention::define_settings();
        lifecycle::workers::register();
    }
}

/// cowclone's one ProcessUtility hook, here because it serves two stages:
/// the source guard (`lifecycle`) and the clone's read path (`read`).
mod utility_hook {
    use pgrx::pg_sys;

    use crate::{lifecycle, pg, read};

    static mut PREVIOUS_PROCESS_UTILITY: pg_sys::ProcessUtility_hook_type = None;

    /// Installed once, while the postmaster preloads the library.
    pub fn install() {
        // SAFETY: runs once in the postmaster before any backend exists; hooks
        // are plain globals chained by saving the previous value.
        unsafe {
            PREVIOUS_PROCESS_UTILITY = pg_sys::ProcessUtility_hook;
            pg_sys::ProcessUtility_hook = Some(process_utility);
        }
    }

    /// cowclone's one utility hook: the source guard's checks, the wrapper
    /// index access methods' translation and ANALYZE's read-ahead in clones
    /// run in guarded functions around a direct pass-on.
    #[allow(clippy::too_many_arguments)]
    unsafe extern "C-unwind" fn process_utility(
        pstmt: *mut pg_sys::PlannedStmt,
        query_string: *const std::ffi::c_char,
        read_only_tree: bool,
        context: pg_sys::ProcessUtilityContext::Type,
        params: pg_sys::ParamListInfo,
        query_env: *mut pg_sys::QueryEnvironment,
        dest: *mut pg_sys::DestReceiver,
        qc: *mut pg_sys::QueryCompletion,
    ) {
        let call = pg::hooks::UtilityCall {
            pstmt,
            query_string,
            read_only_tree,
            context,
            params,
            query_env,
            dest,
            qc,
        };
        // SAFETY: PostgreSQL passes a valid planned utility statement; every
        // value this frame holds is plain (pointers and OIDs).
        unsafe {
            let dropped_database = lifecycle::guard::check_utility(pstmt);
            let call = read::hooks::with_wrapped_index_access_method(call);
            let deferred = read::hooks::before_utility(call.pstmt);
            pg::hooks::pass_on_utility(PREVIOUS_PROCESS_UTILITY, call);
            read::hooks::restore_setting(deferred);
            if dropped_database != pg_sys::InvalidOid {
                lifecycle::guard::forget_dropped_clone(dropped_database);
            }
        }
    }
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    #[pg_test]
    fn version_is_the_crate_version() {
        let sql_version = Spi::get_one::<String>("SELECT cow.version()")
            .expect("cow.version() runs")
            .expect("cow.version() is not null");
        assert_eq!(sql_version, env!("CARGO_PKG_VERSION"));
    }

    /// The pg_test build adds this module's functions in schema `tests`.
    #[pg_test]
    fn every_function_lives_in_schema_cow() {
        let outside = Spi::get_one::<i64>(
            "SELECT count(*) FROM pg_depend d JOIN pg_proc p ON p.oid = d.objid \
             JOIN pg_extension e ON e.oid = d.refobjid \
             WHERE d.classid = 'pg_proc'::regclass AND e.extname = 'cowclone' \
             AND p.pronamespace NOT IN ('cow'::regnamespace, 'tests'::regnamespace)",
        )
        .expect("catalog query runs");
        assert_eq!(outside, Some(0));
    }

    #[pg_test]
    fn test_server_preloads_the_library() {
        let preloaded = Spi::get_one::<bool>("SELECT cow.preloaded()").expect("query runs");
        assert_eq!(preloaded, Some(true));
    }
}

/// Hooks for `cargo pgrx test`: its throwaway server must preload cowclone,
/// exactly as a production server has to.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    #[must_use]
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec!["shared_preload_libraries = 'cowclone'"]
    }
}
