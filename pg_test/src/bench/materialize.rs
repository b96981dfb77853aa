//! `bench --materialize`: materializing a clone against the copies a user
//! would make instead (`CREATE DATABASE ... TEMPLATE` with each strategy),
//! rounds side by side in one run, and `pgbench -S` in a clone before,
//! during and after its materialization.

use std::fmt::Write as _;
use std::process::{Command, Stdio};
use std::time::Instant;

use super::common::{mb, number, pgbench_source_cluster, pgbench_tps, spread, MATERIALIZE_SECTION};
use crate::cluster::Cluster;
use crate::error::{Error, Result};
use crate::install::PgInstall;
use crate::process::run_captured;

pub struct MaterializeBenchOptions {
    pub scale: u32,
    pub rounds: usize,
    pub select_seconds: u32,
    pub write_docs: bool,
}

impl MaterializeBenchOptions {
    pub fn standard() -> Self {
        Self {
            scale: 100,
            rounds: 3,
            select_seconds: 20,
            write_docs: true,
        }
    }

    pub fn quick() -> Self {
        Self {
            scale: 5,
            rounds: 2,
            select_seconds: 3,
            write_docs: false,
        }
    }
}

fn timed(cluster: &Cluster, db: &str, sql: &str) -> Result<f64> {
    let started = Instant::now();
    cluster.psql(db, sql)?;
    Ok(started.elapsed().as_secs_f64())
}

fn select_only(cluster: &Cluster, db: &str, seconds: u32) -> Command {
    let mut cmd = cluster.client_command("pgbench", db);
    cmd.args(["-n", "-S", "-c", "4", "-j", "2", "-T", &seconds.to_string()]);
    cmd
}

pub fn run(pg: &PgInstall, options: &MaterializeBenchOptions) -> Result<()> {
    let cluster = pgbench_source_cluster(pg, options.scale, "materialize")?;
    cluster.psql("postgres", "CREATE EXTENSION cowclone")?;
    let size = number(&cluster, "postgres", "SELECT pg_database_size('prod')")?;
    let mut wal_log = Vec::new();
    let mut file_copy = Vec::new();
    let mut materialize = Vec::new();
    for round in 0..options.rounds {
        cluster.psql("postgres", "CHECKPOINT")?;
        wal_log.push(timed(
            &cluster,
            "postgres",
            "CREATE DATABASE copy_wal TEMPLATE prod STRATEGY wal_log",
        )?);
        cluster.psql("postgres", "DROP DATABASE copy_wal")?;
        cluster.psql("postgres", "CHECKPOINT")?;
        file_copy.push(timed(
            &cluster,
            "postgres",
            "CREATE DATABASE copy_file TEMPLATE prod STRATEGY file_copy",
        )?);
        cluster.psql("postgres", "DROP DATABASE copy_file")?;
        cluster.psql("prod", "SELECT cow.clone('prod', 'staging')")?;
        cluster.psql("postgres", "CHECKPOINT")?;
        materialize.push(timed(
            &cluster,
            "postgres",
            "SELECT cow.materialize('staging')",
        )?);
        cluster.psql("postgres", "DROP DATABASE staging")?;
        println!(
            "round {}: TEMPLATE wal_log {:.1} s, file_copy {:.1} s, cow.materialize {:.1} s",
            round + 1,
            wal_log[round],
            file_copy[round],
            materialize[round]
        );
    }

    // pgbench -S in a clone: before, while it is materialized, after.
    cluster.psql("prod", "SELECT cow.clone('prod', 'reader')")?;
    let before = pgbench_tps(&run_captured(
        &mut select_only(&cluster, "reader", options.select_seconds),
        "pgbench -S",
    )?)?;
    let (_, mid, _) = spread(&materialize);
    let during_seconds = (mid.ceil() as u32).max(2);
    let load = select_only(&cluster, "reader", during_seconds)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let started = Instant::now();
    cluster.psql("postgres", "SELECT cow.materialize('reader')")?;
    let took = started.elapsed().as_secs_f64();
    let output = load.wait_with_output()?;
    if !output.status.success() {
        return Err(Error("pgbench -S during the materialization failed".into()));
    }
    let during = pgbench_tps(&String::from_utf8_lossy(&output.stdout))?;
    let after = pgbench_tps(&run_captured(
        &mut select_only(&cluster, "reader", options.select_seconds),
        "pgbench -S",
    )?)?;

    let row = |name: &str, values: &[f64]| {
        let (min, mid, max) = spread(values);
        format!(
            "| {name} | {mid:.2} s | {min:.2} s | {max:.2} s | {:.2}x |\n",
            mid / spread(&wal_log).1
        )
    };
    let mut table = String::new();
    table.push_str("| making an independent copy of `prod` | median | min | max | vs `TEMPLATE` wal_log |\n|---|---|---|---|---|\n");
    table.push_str(&row(
        "`CREATE DATABASE ... TEMPLATE prod STRATEGY wal_log`",
        &wal_log,
    ));
    table.push_str(&row(
        "`CREATE DATABASE ... TEMPLATE prod STRATEGY file_copy`",
        &file_copy,
    ));
    table.push_str(&row(
        "`cow.materialize` of a fresh clone of `prod`",
        &materialize,
    ));
    let mut reads = String::new();
    let _ = write!(
        reads,
        "| `pgbench -S -c 4 -j 2` in a clone | tps | vs before |\n|---|---|---|\n\
         | before its materialization ({}s) | {before:.0} | 1.00x |\n\
         | while it is materialized ({during_seconds}s; the materialization took {took:.1} s) | {during:.0} | {:.2}x |\n\
         | after, as an ordinary database ({}s) | {after:.0} | {:.2}x |\n",
        options.select_seconds,
        during / before,
        options.select_seconds,
        after / before,
    );
    println!("\n{table}\n{reads}");
    if options.write_docs {
        let (start, end) = (MATERIALIZE_SECTION.start, MATERIALIZE_SECTION.end);
        let section = format!(
            "{start}\n## Materializing a clone\n\n\
             Generated by `cargo run -p pg_test -- bench --materialize` (pgbench scale {}, `prod` is {}, release build, \
             one cluster, fsync on, {} rounds side by side, a CHECKPOINT before each step). Each `TEMPLATE` copy and \
             each materialization writes every page once more, with its WAL.\n\n{table}\n{reads}\n{end}\n",
            options.scale,
            mb(size),
            options.rounds
        );
        MATERIALIZE_SECTION.replace(&section)?;
        println!("updated docs/BENCHMARKS.md");
    }
    Ok(())
}
