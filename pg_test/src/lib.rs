//! cowclone's developer CLI and real-cluster test harness.
//!
//! Deliberately free of pgrx: it must build and run on a machine where
//! nothing is installed yet, because its first job (`setup`) is installing.

pub mod apt;
pub mod bench;
pub mod cluster;
pub mod demo;
pub mod error;
pub mod extension;
pub mod install;
pub mod process;
pub mod provision;
pub mod setup;
pub mod suite;

pub use cluster::{Cluster, ClusterConfig};
pub use error::{Error, Result};
pub use install::PgInstall;

/// The major the integration tests run against: `COWCLONE_PG`, else the default.
pub fn major_under_test() -> Result<PgInstall> {
    let major = match std::env::var(suite::MAJOR_ENV) {
        Ok(value) => install::parse_major(&value)?,
        Err(_) => install::DEFAULT_MAJOR,
    };
    PgInstall::for_major(major)
}

/// Starts a temporary cluster of the major under test (installing the
/// extension first unless the suite already did), configured by `configure`.
pub fn start_test_cluster(configure: impl FnOnce(&mut ClusterConfig)) -> Result<Cluster> {
    let pg = major_under_test()?;
    extension::ensure_installed_for_tests(&pg)?;
    let mut config = ClusterConfig::for_tests()?;
    configure(&mut config);
    Cluster::temporary(&pg, config)
}
