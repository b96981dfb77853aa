//! Building the extension and installing it into a PostgreSQL installation.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use crate::error::Result;
use crate::install::PgInstall;
use crate::process::run_captured;

/// Set by `test` once it has installed the build under test, so the
/// integration tests it runs do not rebuild and reinstall it themselves.
pub const INSTALLED_ENV: &str = "COWCLONE_INSTALLED";

/// The workspace root, where the extension crate lives.
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("pg_test lives inside the workspace")
        .to_path_buf()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Profile {
    /// Quick to build: tests and the demo.
    Debug,
    /// Optimised: benchmarks.
    Release,
}

/// `cargo pgrx install` for this major: the library into its pkglibdir, the
/// control file and SQL script into its extension directory.
pub fn build_and_install(pg: &PgInstall, profile: Profile) -> Result<()> {
    let started = Instant::now();
    println!(
        "building cowclone and installing it into PostgreSQL {} ...",
        pg.major
    );
    let mut cmd = Command::new("cargo");
    cmd.current_dir(workspace_root())
        .args(["pgrx", "install", "--pg-config"])
        .arg(pg.pg_config())
        .args(["--no-default-features", "--features", &pg.feature()]);
    if profile == Profile::Release {
        cmd.arg("--release");
    }
    run_captured(&mut cmd, "cargo pgrx install")?;
    install_older_releases(pg)?;
    println!("installed ({:.1} s)", started.elapsed().as_secs_f64());
    Ok(())
}

/// Copies older releases' install scripts (`sql/cowclone--A.sql`) next to
/// the generated one, so a test can install A and upgrade it in place;
/// `cargo pgrx install` copies only the upgrade scripts.
fn install_older_releases(pg: &PgInstall) -> Result<()> {
    let out = run_captured(Command::new(pg.pg_config()).arg("--sharedir"), "pg_config")?;
    let extension_dir = PathBuf::from(out.trim()).join("extension");
    for entry in std::fs::read_dir(workspace_root().join("sql"))? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let is_release_script = name
            .strip_prefix("cowclone--")
            .and_then(|v| v.strip_suffix(".sql"))
            .is_some_and(|v| !v.contains("--"));
        if is_release_script {
            std::fs::copy(&path, extension_dir.join(name))?;
        }
    }
    Ok(())
}

/// Installs the extension unless the test runner already did.
pub fn ensure_installed_for_tests(pg: &PgInstall) -> Result<()> {
    static ONCE: std::sync::Mutex<bool> = std::sync::Mutex::new(false);
    let mut done = ONCE.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if *done || std::env::var_os(INSTALLED_ENV).is_some() {
        *done = true;
        return Ok(());
    }
    build_and_install(pg, Profile::Debug)?;
    *done = true;
    Ok(())
}
