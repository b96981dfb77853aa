//! `test`: the whole suite, in the order that fails fastest.
//!
//! 1. lint: `cargo fmt --check`, `cargo clippy -D warnings`;
//! 2. `cargo pgrx test`: `#[pg_test]` unit tests inside a server (as the
//!    server user, since PostgreSQL refuses to run as root);
//! 3. install the build under test, then `cargo test -p pg_test`: integration
//!    tests that start real clusters and talk to them through real clients.

use std::process::Command;
use std::time::Instant;

use crate::error::Result;
use crate::extension::{build_and_install, workspace_root, Profile, INSTALLED_ENV};
use crate::install::PgInstall;
use crate::process::{is_root, run_visible, SERVER_USER};

/// The integration tests read the major to test from here.
pub const MAJOR_ENV: &str = "COWCLONE_PG";

pub struct SuiteOptions {
    pub lint: bool,
}

/// Runs `job` for each major in turn. One major: its result. Several: each
/// runs even if an earlier one failed, then one line per major, and an
/// error naming the majors that failed.
pub fn for_each_major(
    majors: &[u32],
    what: &str,
    mut job: impl FnMut(&PgInstall) -> Result<()>,
) -> Result<()> {
    if let [major] = majors {
        return job(&PgInstall::for_major(*major)?);
    }
    let mut outcomes = Vec::new();
    for major in majors {
        let outcome = PgInstall::for_major(*major).and_then(|pg| job(&pg));
        if let Err(e) = &outcome {
            println!("\nPostgreSQL {major}: {what} FAILED: {e}");
        }
        outcomes.push((*major, outcome.is_ok()));
    }
    println!("\nsummary ({what}):");
    for (major, passed) in &outcomes {
        println!(
            "  PostgreSQL {major}: {}",
            if *passed { "passed" } else { "FAILED" }
        );
    }
    let failed: Vec<String> = outcomes
        .iter()
        .filter(|(_, ok)| !ok)
        .map(|(m, _)| m.to_string())
        .collect();
    if !failed.is_empty() {
        crate::bail!("{what} failed for PostgreSQL {}", failed.join(", "));
    }
    Ok(())
}

pub fn run(pg: &PgInstall, options: &SuiteOptions) -> Result<()> {
    let started = Instant::now();
    if options.lint {
        stage("lint: cargo fmt --check", || {
            run_visible(
                cargo().args(["fmt", "--all", "--check"]),
                "cargo fmt --check",
            )
        })?;
        stage("lint: cargo clippy", || {
            run_visible(
                cargo()
                    .args([
                        "clippy",
                        "--quiet",
                        "--workspace",
                        "--all-targets",
                        "--no-default-features",
                    ])
                    .args(["--features", &pg.feature(), "--", "-D", "warnings"]),
                "cargo clippy",
            )
        })?;
    }
    stage("unit tests in a server: cargo pgrx test", || pgrx_test(pg))?;
    stage("install the build under test", || {
        build_and_install(pg, Profile::Debug)
    })?;
    stage(
        "integration tests against real clusters: cargo test -p pg_test",
        || {
            run_visible(
                cargo()
                    .args(["test", "-p", "pg_test", "--", "--test-threads=2"])
                    .env(INSTALLED_ENV, "1")
                    .env(MAJOR_ENV, pg.major.to_string()),
                "integration tests",
            )
        },
    )?;
    println!(
        "\nall stages passed for PostgreSQL {} in {:.0} s",
        pg.major,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn cargo() -> Command {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(workspace_root());
    cmd
}

fn stage(name: &str, body: impl FnOnce() -> Result<()>) -> Result<()> {
    println!("\n=== {name}");
    let started = Instant::now();
    body()?;
    println!("=== {name}: ok ({:.0} s)", started.elapsed().as_secs_f64());
    Ok(())
}

fn pgrx_test(pg: &PgInstall) -> Result<()> {
    let mut cmd = cargo();
    cmd.args(["pgrx", "test", &pg.feature()]);
    if is_root() {
        // The data directory must belong to the server user; pgrx creates it
        // through sudo when it is missing.
        let pgdata = std::env::temp_dir().join(format!("cowclone-pgrx-test-{}", pg.major));
        cmd.args(["--runas", SERVER_USER, "--pgdata"]).arg(pgdata);
    }
    run_visible(&mut cmd, "cargo pgrx test")
}
