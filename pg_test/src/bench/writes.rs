//! `bench --writes`: writing in a clone side by side with writing in a plain
//! full copy of the same data (`CREATE DATABASE ... TEMPLATE`), in one run
//! on one throwaway cluster, reported as ratios.

use std::fmt::Write as _;
use std::time::Instant;

use super::common::{
    mb, median, number, pgbench_source_cluster, pgbench_tps, tpcb, WRITES_SECTION,
};
use crate::cluster::Cluster;
use crate::error::{Error, Result};
use crate::install::PgInstall;

pub struct WriteBenchOptions {
    /// pgbench scale of the source.
    pub scale: u32,
    /// Alternating TPC-B runs per side.
    pub runs: usize,
    pub pgbench_seconds: u32,
    /// Rows updated one by one, twice, for the latency and size figures.
    pub rows: i32,
    pub write_docs: bool,
}

impl WriteBenchOptions {
    pub fn standard() -> Self {
        Self {
            scale: 20,
            runs: 3,
            pgbench_seconds: 30,
            rows: 10_000,
            write_docs: true,
        }
    }

    pub fn quick() -> Self {
        Self {
            scale: 2,
            runs: 1,
            pgbench_seconds: 3,
            rows: 500,
            write_docs: false,
        }
    }
}

/// Mean seconds per single-row UPDATE (each its own transaction) of
/// accounts 1..=rows.
fn update_latency(cluster: &Cluster, db: &str, rows: i32) -> Result<f64> {
    let mut client = cluster.connect(db)?;
    let update =
        client.prepare("UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = $1")?;
    let started = Instant::now();
    for aid in 1..=rows {
        let changed = client.execute(&update, &[&aid])?;
        if changed != 1 {
            return Err(Error(format!("account {aid} updated {changed} rows")));
        }
    }
    Ok(started.elapsed().as_secs_f64() / rows as f64)
}

/// Bytes on disk of the pgbench tables, their indexes and the tombstones.
fn stored_bytes(cluster: &Cluster, db: &str) -> Result<i64> {
    number(
        cluster,
        db,
        "SELECT sum(pg_total_relation_size(c.oid))::bigint FROM pg_class c \
         WHERE c.relname LIKE 'pgbench_%' AND c.relkind = 'r' \
            OR c.oid = to_regclass('cow.tombstone')",
    )
}

fn tpcb_tps(cluster: &Cluster, db: &str, seconds: u32) -> Result<(f64, i64)> {
    let out = tpcb(cluster, db, seconds)?;
    let tps = pgbench_tps(&out)?;
    let failed = out
        .lines()
        .find_map(|l| l.strip_prefix("number of failed transactions: "))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    Ok((tps, failed))
}

pub fn run(pg: &PgInstall, options: &WriteBenchOptions) -> Result<()> {
    let cluster = pgbench_source_cluster(pg, options.scale, "write")?;
    let source_bytes = stored_bytes(&cluster, "prod")?;
    cluster.psql("postgres", "CREATE DATABASE copy TEMPLATE prod")?;
    cluster.psql("prod", "SELECT cow.clone('prod', 'staging')")?;
    cluster.psql("postgres", "CHECKPOINT")?;

    // First and second writes to the same rows, one transaction each.
    let clone_before = stored_bytes(&cluster, "staging")?;
    let clone_first = update_latency(&cluster, "staging", options.rows)?;
    let clone_after_first = stored_bytes(&cluster, "staging")?;
    let clone_second = update_latency(&cluster, "staging", options.rows)?;
    let copy_first = update_latency(&cluster, "copy", options.rows)?;
    let copy_second = update_latency(&cluster, "copy", options.rows)?;
    let per_thousand = (clone_after_first - clone_before) as f64 / (options.rows as f64 / 1000.0);

    // TPC-B, alternating sides.
    let (mut copy_tps, mut clone_tps) = (Vec::new(), Vec::new());
    let mut failures = 0;
    for _ in 0..options.runs {
        let (tps, failed) = tpcb_tps(&cluster, "copy", options.pgbench_seconds)?;
        copy_tps.push(tps);
        failures += failed;
        let (tps, failed) = tpcb_tps(&cluster, "staging", options.pgbench_seconds)?;
        clone_tps.push(tps);
        failures += failed;
    }
    let copy = median(&mut copy_tps);
    let clone = median(&mut clone_tps);
    // TPC-B's invariant, less the latency passes' +1 twice to each of the
    // first `rows` accounts (which wrote no history).
    let balances = cluster.psql(
        "staging",
        &format!(
            "SELECT (SELECT sum(abalance) FROM pgbench_accounts) - 2 * {} = (SELECT sum(delta) FROM pgbench_history) \
             AND (SELECT sum(bbalance) FROM pgbench_branches) = (SELECT sum(delta) FROM pgbench_history)",
            options.rows
        ),
    )?;
    let clone_end = stored_bytes(&cluster, "staging")?;
    let tombstones = number(&cluster, "staging", "SELECT count(*) FROM cow.tombstone")?;

    let table = format!(
        "| write | plain copy (TEMPLATE) | clone | clone / copy |\n|---|---|---|---|\n\
         | TPC-B, `pgbench -c 4 -j 2 -T {}` (median of {}) | {:.0} tps | {:.0} tps | {:.2}x |\n\
         | single-row UPDATE, first write to a row (mean of {}) | {:.0} µs | {:.0} µs | {:.2}x latency |\n\
         | single-row UPDATE, second write to the same row | {:.0} µs | {:.0} µs | {:.2}x latency |\n",
        options.pgbench_seconds,
        options.runs,
        copy,
        clone,
        clone / copy,
        options.rows,
        copy_first * 1e6,
        clone_first * 1e6,
        clone_first / copy_first,
        copy_second * 1e6,
        clone_second * 1e6,
        clone_second / copy_second,
    );
    let sizes = format!(
        "Storage (pgbench tables with their TOAST and indexes, plus `cow.tombstone`): the source and its \
         plain copy hold {}; the clone held {} after cloning, grew by {:.0} kB per 1,000 rows updated for \
         the first time, and held {} after all runs ({} tombstones). Failed transactions: {}. TPC-B \
         invariant in the clone after the runs (balances equal history deltas): {}.",
        mb(source_bytes),
        mb(clone_before),
        per_thousand / 1024.0,
        mb(clone_end),
        tombstones,
        failures,
        if balances.trim() == "t" { "holds" } else { "BROKEN" },
    );
    println!("\n{table}\n{sizes}");
    if options.write_docs {
        write_docs(&table, &sizes, options)?;
        println!("updated docs/BENCHMARKS.md");
    }
    if balances.trim() != "t" || failures != 0 {
        return Err(Error(
            "the clone failed transactions or broke TPC-B's invariant".into(),
        ));
    }
    Ok(())
}

/// Replaces the writes section of docs/BENCHMARKS.md, leaving the rest.
fn write_docs(table: &str, sizes: &str, options: &WriteBenchOptions) -> Result<()> {
    let (start, end) = (WRITES_SECTION.start, WRITES_SECTION.end);
    let mut section = String::new();
    let _ = write!(
        section,
        "{start}\n## Writing in a clone vs writing in a plain copy\n\n\
         Generated by `cargo run -p pg_test -- bench --writes` (pgbench scale {}, release build, \
         `shared_buffers = 256MB`, one cluster). The plain copy is `CREATE DATABASE copy TEMPLATE prod` \
         of the same source, made just before the clone; both live in the same cluster, so the clone's \
         pin (held in `prod` alone) holds back vacuum in neither. The latency rows update accounts 1..{} one statement \
         (one transaction) at a time, first in the clone (each a first write: a tombstone and a new local \
         row), then again (each a second write: a plain heap update of the local row), then the same in the \
         copy. TPC-B runs alternate copy and clone.\n\n{table}\n{sizes}\n{end}\n",
        options.scale, options.rows
    );
    WRITES_SECTION.replace(&section)
}
