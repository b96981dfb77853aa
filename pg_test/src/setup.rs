//! `setup`: installs what is missing on a fresh Debian 12 machine, and
//! nothing else. Every step first checks whether its work is already done, so
//! a second run takes seconds.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use crate::apt::ensure_debian_packages;
use crate::bail;
use crate::error::Result;
use crate::install::{Origin, PgInstall};
use crate::process::{on_path, run_captured, run_visible};
use crate::provision;

pub const PGRX_VERSION: &str = "0.18.0";

/// Debian packages every major needs: libclang for pgrx's bindgen, sudo for
/// `cargo pgrx test --runas`, runuser (util-linux) for the harness.
const COMMON_PACKAGES: &[&str] = &["libclang-dev", "clang", "sudo", "util-linux", "pkg-config"];

pub fn setup(pg: &PgInstall) -> Result<()> {
    let started = Instant::now();
    let mut packages: Vec<String> = COMMON_PACKAGES.iter().map(|p| p.to_string()).collect();
    packages.extend(debian_packages_for(pg));
    ensure_debian_packages(&packages)?;
    ensure_cargo_pgrx()?;
    provision::ensure_provisioned(pg)?;
    ensure_pgrx_init(pg)?;
    println!(
        "setup: ready for PostgreSQL {} ({:.1} s)",
        pg.major,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// What each origin needs from Debian 12: the whole major for Debian's own,
/// unpacking tools for wheels, a build toolchain for source packages.
fn debian_packages_for(pg: &PgInstall) -> Vec<String> {
    let names: Vec<String> = match &pg.origin {
        Origin::DebianPackages => vec![
            format!("postgresql-{}", pg.major),
            format!("postgresql-server-dev-{}", pg.major),
            format!("postgresql-client-{}", pg.major),
            // The storage-swap test runs the real pg_repack where Debian has it.
            format!("postgresql-{}-repack", pg.major),
        ],
        Origin::Wheel { .. } => ["unzip", "npm", "postgresql-common"]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        Origin::DebianSource { .. } => [
            "dpkg-dev",
            "bzip2",
            "build-essential",
            "bison",
            "flex",
            "libreadline-dev",
            "zlib1g-dev",
            "libicu-dev",
            "postgresql-common",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
    };
    // A machine with Node.js from elsewhere has npm without the Debian package.
    names
        .into_iter()
        .filter(|p| !(p == "npm" && on_path("npm")))
        .collect()
}

fn ensure_cargo_pgrx() -> Result<()> {
    let current = Command::new("cargo")
        .args(["pgrx", "--version"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    if current
        .as_deref()
        .is_some_and(|v| v.ends_with(PGRX_VERSION))
    {
        return Ok(());
    }
    println!("setup: installing cargo-pgrx {PGRX_VERSION} (takes about 5 minutes on 2 cores)");
    run_visible(
        Command::new("cargo").args([
            "install",
            "cargo-pgrx",
            "--version",
            PGRX_VERSION,
            "--locked",
            "--force",
        ]),
        "cargo install cargo-pgrx",
    )
}

fn pgrx_home() -> Result<PathBuf> {
    if let Some(home) = std::env::var_os("PGRX_HOME") {
        return Ok(PathBuf::from(home));
    }
    match std::env::var_os("HOME") {
        Some(home) => Ok(PathBuf::from(home).join(".pgrx")),
        None => bail!("neither PGRX_HOME nor HOME is set"),
    }
}

/// `cargo pgrx init` rewrites its whole config, so it is run with every
/// major already registered plus the requested one.
fn ensure_pgrx_init(pg: &PgInstall) -> Result<()> {
    let config_path = pgrx_home()?.join("config.toml");
    let config = std::fs::read_to_string(&config_path).unwrap_or_default();
    let mut registered = parse_registered_majors(&config);
    let wanted = pg.pg_config().display().to_string();
    if registered
        .iter()
        .any(|(m, path)| *m == pg.major && *path == wanted)
    {
        return Ok(());
    }
    if !on_path("cargo") {
        bail!("cargo is not on PATH");
    }
    // A registration whose pg_config is gone would fail the whole init.
    registered.retain(|(m, path)| *m != pg.major && std::path::Path::new(path).is_file());
    registered.push((pg.major, wanted));
    let mut cmd = Command::new("cargo");
    cmd.args(["pgrx", "init"]);
    for (major, path) in &registered {
        cmd.arg(format!("--pg{major}={path}"));
    }
    println!(
        "setup: registering PostgreSQL {} with cargo pgrx init",
        pg.major
    );
    run_captured(&mut cmd, "cargo pgrx init").map(|_| ())
}

/// Reads `pgNN = "path"` lines of pgrx's `[configs]` table.
fn parse_registered_majors(config: &str) -> Vec<(u32, String)> {
    config
        .lines()
        .filter_map(|line| {
            let (key, value) = line.split_once('=')?;
            let major = key.trim().strip_prefix("pg")?.parse::<u32>().ok()?;
            let path = value.trim().trim_matches('"').to_string();
            Some((major, path))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_registered_majors_from_pgrx_config() {
        let config = "[configs]\npg15 = \"/usr/lib/postgresql/15/bin/pg_config\"\npg16 = \"/opt/pg16/bin/pg_config\"\n";
        assert_eq!(
            parse_registered_majors(config),
            vec![
                (15, "/usr/lib/postgresql/15/bin/pg_config".to_string()),
                (16, "/opt/pg16/bin/pg_config".to_string())
            ]
        );
        assert!(parse_registered_majors("").is_empty());
    }
}
