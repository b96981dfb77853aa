//! `bench --history`: what a history window costs, and what finding a
//! point in it costs. `prod` keeps a window while TPC-B runs in it and, side
//! by side, in `ctrl`, an identical database without one; then `prod` and
//! `tiny` (a database a twentieth of its size with the same window) are
//! cloned as of now, a minute ago, ten minutes ago and the window's start.

use std::fmt::Write as _;
use std::process::Stdio;
use std::thread;
use std::time::{Duration, Instant};

use super::common::{
    self, mb, number, pgbench_init, pgbench_source_cluster, pgbench_tps, spread, tables_size,
    HISTORY_SECTION, UPDATED,
};
use crate::cluster::Cluster;
use crate::error::{Error, Result};
use crate::install::PgInstall;

pub struct HistoryBenchOptions {
    pub scale: u32,
    pub pgbench_seconds: u32,
    /// The window `cow.set_retention` keeps, in seconds.
    pub keep_seconds: u32,
    /// The points cloned, as (label, seconds ago); `None` is the window's start.
    pub points: Vec<(&'static str, Option<u32>)>,
    pub rounds: usize,
    pub write_docs: bool,
}

impl HistoryBenchOptions {
    pub fn standard() -> Self {
        Self {
            scale: 20,
            pgbench_seconds: 720,
            keep_seconds: 660,
            points: vec![
                ("now", Some(0)),
                ("1 minute ago", Some(60)),
                ("10 minutes ago", Some(600)),
                ("the window's start", None),
            ],
            rounds: 5,
            write_docs: true,
        }
    }

    pub fn quick() -> Self {
        Self {
            scale: 2,
            pgbench_seconds: 30,
            keep_seconds: 25,
            points: vec![
                ("now", Some(0)),
                ("5 s ago", Some(5)),
                ("20 s ago", Some(20)),
                ("the window's start", None),
            ],
            rounds: 3,
            write_docs: false,
        }
    }
}

fn size(cluster: &Cluster, db: &str) -> Result<i64> {
    tables_size(cluster, db, UPDATED)
}

fn wal_kept(cluster: &Cluster) -> Result<i64> {
    number(
        cluster,
        "postgres",
        "SELECT coalesce(max(wal_kept_bytes), 0) FROM cow.retention WHERE database = 'prod'",
    )
}

fn vacuum_kept(cluster: &Cluster, db: &str) -> Result<u64> {
    common::vacuum_kept(
        cluster,
        db,
        "pgbench_accounts, pgbench_branches, pgbench_tellers",
    )
}

/// Clones `source` as of `point` `rounds` times (each clone dropped again):
/// cow.clone's own elapsed_ms each time.
fn clone_times(
    cluster: &Cluster,
    source: &str,
    point: Option<u32>,
    rounds: usize,
) -> Result<Vec<f64>> {
    let mut times = Vec::new();
    for _ in 0..rounds {
        let as_of = match point {
            Some(0) => String::new(),
            Some(ago) => format!(", as_of => now() - interval '{ago} seconds'"),
            None => format!(
                ", as_of => (SELECT window_start_time FROM cow.retention WHERE database = '{source}') + interval '1 millisecond'"
            ),
        };
        let ms = cluster.psql(
            "postgres",
            &format!("SELECT elapsed_ms FROM cow.clone('{source}', 'pit'{as_of})"),
        )?;
        times.push(
            ms.trim()
                .parse()
                .map_err(|_| Error(format!("elapsed_ms: {ms}")))?,
        );
        cluster.psql("postgres", "DROP DATABASE pit")?;
    }
    Ok(times)
}

pub fn run(pg: &PgInstall, options: &HistoryBenchOptions) -> Result<()> {
    let cluster = pgbench_source_cluster(pg, options.scale, "history")?;
    cluster.psql("postgres", "CREATE EXTENSION cowclone")?;
    for (db, scale) in [("ctrl", options.scale), ("tiny", 1)] {
        cluster.psql("postgres", &format!("CREATE DATABASE {db}"))?;
        pgbench_init(&cluster, db, scale)?;
        cluster.psql(db, "VACUUM ANALYZE")?;
    }
    cluster.psql("tiny", "CREATE EXTENSION cowclone")?;
    let keep = options.keep_seconds;
    for db in ["prod", "tiny"] {
        cluster.psql(
            "postgres",
            &format!("SELECT cow.set_retention('{db}', interval '{keep} seconds')"),
        )?;
    }
    let started = Instant::now();
    while number(
        &cluster,
        "postgres",
        "SELECT count(*) FROM cow.retention WHERE window_start_lsn IS NOT NULL",
    )? < 2
    {
        if started.elapsed() > Duration::from_secs(60) {
            return Err(Error("the history windows did not start".into()));
        }
        thread::sleep(Duration::from_millis(200));
    }
    let prod_before = size(&cluster, "prod")?;
    let ctrl_before = size(&cluster, "ctrl")?;

    // TPC-B in both, side by side, sampled as it runs.
    let seconds = options.pgbench_seconds;
    let mut loads = Vec::new();
    for db in ["prod", "ctrl"] {
        loads.push(
            cluster
                .client_command("pgbench", db)
                .args(["-n", "-c", "4", "-j", "2", "-T", &seconds.to_string()])
                .stdout(Stdio::piped())
                // The harness's `-d dbname` is pgbench's debug flag too.
                .stderr(Stdio::null())
                .spawn()?,
        );
    }
    let mut samples = Vec::new();
    let step = (seconds / 6).max(5);
    let run_started = Instant::now();
    for i in 1..=6 {
        let at = Duration::from_secs(u64::from(step * i));
        if let Some(wait) = at.checked_sub(run_started.elapsed()) {
            thread::sleep(wait);
        }
        if run_started.elapsed().as_secs() > u64::from(seconds) {
            break;
        }
        samples.push((
            run_started.elapsed().as_secs(),
            size(&cluster, "prod")?,
            size(&cluster, "ctrl")?,
            wal_kept(&cluster)?,
        ));
    }
    let mut tps = Vec::new();
    for load in loads {
        let out = load.wait_with_output()?;
        if !out.status.success() {
            return Err(Error("pgbench (TPC-B) failed".into()));
        }
        tps.push(pgbench_tps(&String::from_utf8_lossy(&out.stdout))?);
    }
    let prod_after = size(&cluster, "prod")?;
    let ctrl_after = size(&cluster, "ctrl")?;
    let wal_after = wal_kept(&cluster)?;
    let ctrl_kept = vacuum_kept(&cluster, "ctrl")?;
    let prod_kept = vacuum_kept(&cluster, "prod")?;

    // Finding a point: each kind, in the big source and the tiny one.
    let mut rows = Vec::new();
    for &(label, point) in &options.points {
        let big = clone_times(&cluster, "prod", point, options.rounds)?;
        let small = clone_times(&cluster, "tiny", point, options.rounds)?;
        println!("{label}: prod {big:?} ms, tiny {small:?} ms");
        rows.push((label, spread(&big), spread(&small)));
    }

    let mut cost = format!(
        "| after (s) | `prod` (window {keep} s): accounts, branches, tellers with indexes | `ctrl` (no window) | ratio | WAL `prod`'s history slot keeps |\n|---|---|---|---|---|\n\
         | 0 | {} | {} | {:.2}x | |\n",
        mb(prod_before),
        mb(ctrl_before),
        prod_before as f64 / ctrl_before as f64
    );
    for (at, prod, ctrl, wal) in &samples {
        let _ = writeln!(
            cost,
            "| {at} | {} | {} | {:.2}x | {} |",
            mb(*prod),
            mb(*ctrl),
            *prod as f64 / *ctrl as f64,
            mb(*wal)
        );
    }
    let _ = writeln!(
        cost,
        "| end | {} | {} | {:.2}x | {} |",
        mb(prod_after),
        mb(ctrl_after),
        prod_after as f64 / ctrl_after as f64,
        mb(wal_after)
    );
    let _ = write!(
        cost,
        "\nTPC-B: {:.0} tps in `prod`, {:.0} tps in `ctrl` ({:.2}x). VACUUM right after the run: dead row versions it could not remove: {ctrl_kept} in `ctrl`, {prod_kept} in `prod` (the window's).\n\n         The window binds its source alone: `ctrl`'s VACUUM removed everything. In `prod` it keeps every version a point of the window sees, which is what a snapshot as old as the window would keep (not measured side by side here); TPC-B updates the same few branch and teller rows all the time, so their dead versions pile up and each update has more of them to pass, which is the likely cause of `prod`'s lower throughput. The WAL kept is the cluster's WAL of the window (both databases write it).\n",
        tps[0],
        tps[1],
        tps[0] / tps[1]
    );
    let mut finding = format!(
        "| clone as of | `prod` (scale {}) min / median / max ms | `tiny` (scale 1) min / median / max ms |\n|---|---|---|\n",
        options.scale
    );
    for (label, (a, b, c), (d, e, f)) in &rows {
        let _ = writeln!(
            finding,
            "| {label} | {a:.0} / {b:.0} / {c:.0} | {d:.0} / {e:.0} / {f:.0} |"
        );
    }
    println!("\n{cost}\n{finding}");
    if options.write_docs {
        let (start, end) = (HISTORY_SECTION.start, HISTORY_SECTION.end);
        let section = format!(
            "{start}\n## What a history window costs, and finding a point in it\n\n\
             Generated by `cargo run -p pg_test -- bench --history` (release build, one cluster, \
             `cow.retention_mark_interval` at its default of 10 s). `prod` and `ctrl` are identical \
             pgbench databases of scale {}; `prod` keeps a window of {keep} s (`cow.set_retention`), \
             `ctrl` none; `pgbench -c 4 -j 2 -T {seconds}` runs in both at once, autovacuum on.\n\n{cost}\n\
             Then each point is cloned {} times (and dropped), in `prod` and in `tiny`, a scale-1 \
             database with the same window; the figures are `cow.clone`'s `elapsed_ms`. \"now\" is a \
             plain `cow.clone`; the others are `as_of` a time. Finding a point reads the WAL from \
             the newest mark before it, at most one mark interval of it, whatever the point's age \
             and the database's size.\n\n{finding}\n{end}\n",
            options.scale, options.rounds
        );
        HISTORY_SECTION.replace(&section)?;
        println!("updated docs/BENCHMARKS.md");
    }
    if ctrl_kept != 0 {
        return Err(Error(format!(
            "VACUUM in ctrl could not remove {ctrl_kept} dead row versions"
        )));
    }
    Ok(())
}
