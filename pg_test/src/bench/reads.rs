//! `bench --reads`: reading a clone side by side with reading its source,
//! in one run on one throwaway cluster, reported as ratios.
//!
//! The clone reads the source's own files through shared buffers, so both
//! sides share one cache: alternating the two (source, clone, source, ...)
//! gives each the same cache state, and medians absorb the rest.

use std::fmt::Write as _;
use std::time::Instant;

use super::common::{median, number, pgbench_source_cluster, pgbench_tps, READS_SECTION};
use crate::cluster::Cluster;
use crate::error::{Error, Result};
use crate::install::PgInstall;
use crate::process::run_captured;

pub struct ReadBenchOptions {
    /// pgbench scale of the source: 80 gives a 1 GB pgbench_accounts.
    pub scale: u32,
    pub runs: usize,
    pub pgbench_seconds: u32,
    pub write_docs: bool,
}

impl ReadBenchOptions {
    pub fn standard() -> Self {
        Self {
            scale: 80,
            runs: 5,
            pgbench_seconds: 20,
            write_docs: true,
        }
    }

    pub fn quick() -> Self {
        Self {
            scale: 5,
            runs: 1,
            pgbench_seconds: 3,
            write_docs: false,
        }
    }
}

struct Side {
    scan_seconds: f64,
    select_tps: f64,
}

pub fn run(pg: &PgInstall, options: &ReadBenchOptions) -> Result<()> {
    let cluster = pgbench_source_cluster(pg, options.scale, "read")?;
    cluster.psql("postgres", "CHECKPOINT")?;
    cluster.psql("prod", "SELECT cow.clone('prod', 'staging')")?;
    cluster.psql("staging", "ANALYZE")?;
    let table_bytes: i64 = number(
        &cluster,
        "prod",
        "SELECT pg_relation_size('pgbench_accounts')",
    )?;
    println!(
        "source: pgbench scale {}, pgbench_accounts {}",
        options.scale,
        mb(table_bytes)
    );

    // Warm both paths once, then alternate.
    let scan = "SET max_parallel_workers_per_gather = 0; SELECT count(*), sum(abalance) FROM pgbench_accounts";
    let expected = cluster.psql("prod", scan)?;
    if cluster.psql("staging", scan)? != expected {
        return Err(Error(
            "the clone's full scan differs from the source's".into(),
        ));
    }
    let mut scans = (Vec::new(), Vec::new());
    let mut tps = (Vec::new(), Vec::new());
    for _ in 0..options.runs {
        scans.0.push(timed(&cluster, "prod", scan)?);
        scans.1.push(timed(&cluster, "staging", scan)?);
    }
    for _ in 0..options.runs.clamp(1, 3) {
        tps.0
            .push(select_only_tps(&cluster, "prod", options.pgbench_seconds)?);
        tps.1.push(select_only_tps(
            &cluster,
            "staging",
            options.pgbench_seconds,
        )?);
    }
    let source = Side {
        scan_seconds: median(&mut scans.0),
        select_tps: median(&mut tps.0),
    };
    let clone = Side {
        scan_seconds: median(&mut scans.1),
        select_tps: median(&mut tps.1),
    };

    // What reading the clone writes: WAL and changes to the source's pages.
    let lsn = cluster.psql("postgres", "SELECT pg_current_wal_insert_lsn()")?;
    cluster.psql("staging", scan)?;
    run_captured(
        cluster
            .client_command("pgbench", "staging")
            .args(["-S", "-n", "-t", "2000"]),
        "pgbench -S",
    )?;
    let wal: i64 = number(
        &cluster,
        "postgres",
        &format!(
            "SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '{}')::bigint",
            lsn.trim()
        ),
    )?;

    let table = format!(
        "| read | source | clone | clone / source |\n|---|---|---|---|\n\
         | full scan of pgbench_accounts ({}), one process | {:.3} s | {:.3} s | {:.2}x throughput |\n\
         | `pgbench -S -c 2 -j 2` (primary-key lookups) | {:.0} tps | {:.0} tps | {:.2}x |\n",
        mb(table_bytes),
        source.scan_seconds,
        clone.scan_seconds,
        source.scan_seconds / clone.scan_seconds,
        source.select_tps,
        clone.select_tps,
        clone.select_tps / source.select_tps,
    );
    println!("\n{table}");
    println!(
        "WAL written while the clone scanned the whole table and ran 2000 lookups: {wal} bytes"
    );
    if options.write_docs {
        write_docs(&table, wal, options)?;
        println!("updated docs/BENCHMARKS.md");
    }
    Ok(())
}

fn timed(cluster: &Cluster, db: &str, sql: &str) -> Result<f64> {
    let mut client = cluster.connect(db)?;
    let started = Instant::now();
    client.batch_execute(sql)?;
    Ok(started.elapsed().as_secs_f64())
}

fn select_only_tps(cluster: &Cluster, db: &str, seconds: u32) -> Result<f64> {
    let out = run_captured(
        cluster.client_command("pgbench", db).args([
            "-S",
            "-n",
            "-c",
            "2",
            "-j",
            "2",
            "-T",
            &seconds.to_string(),
        ]),
        "pgbench -S",
    )?;
    pgbench_tps(&out)
}

/// Whole megabytes (`common::mb` gives tenths).
fn mb(bytes: i64) -> String {
    format!("{:.0} MB", bytes as f64 / 1_048_576.0)
}

/// Replaces the reads section of docs/BENCHMARKS.md, leaving the rest.
fn write_docs(table: &str, wal: i64, options: &ReadBenchOptions) -> Result<()> {
    let (start, end) = (READS_SECTION.start, READS_SECTION.end);
    let mut section = String::new();
    let _ = write!(
        section,
        "{start}\n## Reading a clone vs reading its source\n\n\
         Generated by `cargo run -p pg_test -- bench --reads` (pgbench scale {}, medians of {} alternating \
         runs, release build, `shared_buffers = 256MB`). Both sides read the same files through the same \
         shared buffers, so alternating them gives each the same cache state. The full scan runs with \
         `max_parallel_workers_per_gather = 0` on both sides: a clone never scans a shadowed table in \
         parallel (docs/ARCHITECTURE.md), so this compares one process with one process.\n\n{table}\n\
         WAL written by the clone's reads (a full scan plus 2,000 lookups): {wal} bytes. Source pages \
         are only ever pinned and share-locked; the source's tuples here are frozen by `pgbench -i`, so \
         not even hint bits change. Before the three changes under \"Keeping reads cheap\" in \
         docs/ARCHITECTURE.md, the same benchmark measured 0.61x (full scan) and 0.80x (`pgbench -S`).\n{end}\n",
        options.scale, options.runs
    );
    READS_SECTION.replace(&section)
}
