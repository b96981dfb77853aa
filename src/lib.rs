//! cowclone: instant, zero-copy clones of a live database inside the running
//! PostgreSQL cluster.
//!
//! The crate is laid out one module per concept; `docs/ARCHITECTURE.md`
//! explains how they fit together and which ones exist yet.

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

mod api;
mod catalog_copy;
mod clone;
mod clone_view;
mod compat;
mod error;
mod failpoint;
mod guard;
mod heap_page;
mod hooks;
mod indexam;
mod lineage;
mod page;
mod preload;
mod read_hooks;
mod reconcile;
mod relcopy;
mod relmap;
mod snapshot;
mod source;
mod tableam;
mod tombstone;
mod workers;
mod writes;

::pgrx::pg_module_magic!(name, version);

/// Called by PostgreSQL each time a process loads the library.
///
/// Everything cowclone needs process-wide (hooks, background workers, shared
/// memory) can only be set up while the postmaster loads
/// `shared_preload_libraries`; `preload` decides and records which case this is.
#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    preload::on_library_load();
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
