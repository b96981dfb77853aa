//! `bench --nested`: reading clones of clones. A chain prod → c1 → … → c8
//! with a few rows written at each level; a full scan and `pgbench -S` in
//! the source and at depths 1, 4 and 8, round after round side by side, and
//! what making each level cost.

use std::fmt::Write as _;

use super::common::{
    number, pgbench_source_cluster, select_only_tps, spread, timed, NESTED_SECTION,
};
use crate::error::{Error, Result};
use crate::install::PgInstall;

pub struct NestedBenchOptions {
    pub scale: u32,
    pub rounds: usize,
    pub pgbench_seconds: u32,
    pub write_docs: bool,
}

impl NestedBenchOptions {
    pub fn standard() -> Self {
        Self {
            scale: 80,
            rounds: 5,
            pgbench_seconds: 15,
            write_docs: true,
        }
    }

    pub fn quick() -> Self {
        Self {
            scale: 5,
            rounds: 2,
            pgbench_seconds: 3,
            write_docs: false,
        }
    }
}

const DEPTH: usize = 8;
const MEASURED: [(&str, &str); 4] = [
    ("source", "prod"),
    ("depth 1", "c1"),
    ("depth 4", "c4"),
    ("depth 8", "c8"),
];

pub fn run(pg: &PgInstall, options: &NestedBenchOptions) -> Result<()> {
    let cluster = pgbench_source_cluster(pg, options.scale, "nested")?;
    cluster.psql("postgres", "CHECKPOINT")?;
    let accounts = options.scale as i64 * 100_000;
    let mut creation_ms = Vec::new();
    let mut parent = "prod".to_string();
    for level in 1..=DEPTH {
        let clone = format!("c{level}");
        let elapsed = cluster.psql(
            "prod",
            &format!("SELECT elapsed_ms FROM cow.clone('{parent}', '{clone}')"),
        )?;
        creation_ms.push(
            elapsed
                .trim()
                .parse::<f64>()
                .map_err(|_| Error(format!("not a number: {elapsed}")))?,
        );
        // A few rows per level: about 100 accounts moved into the level.
        cluster.psql(
            &clone,
            &format!(
                "UPDATE pgbench_accounts SET abalance = abalance + {level} WHERE aid % {} = {level}",
                accounts / 100
            ),
        )?;
        cluster.psql(&clone, "ANALYZE")?;
        parent = clone;
    }
    let written = number(
        &cluster,
        "c8",
        "SELECT count(*) FROM pgbench_accounts WHERE abalance <> 0",
    )?;

    let scan = "SET max_parallel_workers_per_gather = 0; SELECT count(*), sum(abalance) FROM pgbench_accounts";
    let expected = cluster.psql("c8", scan)?;
    for (_, db) in MEASURED {
        cluster.psql(db, scan)?;
    }
    let mut scans = vec![Vec::new(); MEASURED.len()];
    let mut tps = vec![Vec::new(); MEASURED.len()];
    for _ in 0..options.rounds {
        for (i, (_, db)) in MEASURED.iter().enumerate() {
            scans[i].push(timed(&cluster, db, scan)?);
        }
        for (i, (_, db)) in MEASURED.iter().enumerate() {
            tps[i].push(select_only_tps(&cluster, db, options.pgbench_seconds)?);
        }
    }
    if cluster.psql("c8", scan)? != expected {
        return Err(Error("c8's full scan changed between rounds".into()));
    }

    // What a parent's own data costs its child: c4 rewrites a tenth of the
    // accounts (its own heap grows by that much), then is cloned.
    cluster.psql(
        "c4",
        "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid % 10 = 0",
    )?;
    cluster.psql("c4", "VACUUM pgbench_accounts")?;
    let own_bytes = number(
        &cluster,
        "c4",
        "SELECT sum(pg_relation_size(c.oid))::bigint FROM pg_class c WHERE c.oid >= 16384 AND c.relkind IN ('r', 'i', 't', 'm')",
    )?;
    cluster.psql("postgres", "CHECKPOINT")?;
    let big_child_ms: f64 = cluster
        .psql("prod", "SELECT elapsed_ms FROM cow.clone('c4', 'c4_child')")?
        .trim()
        .parse()
        .map_err(|_| Error("not a number".into()))?;

    let scan_bytes = number(
        &cluster,
        "prod",
        "SELECT pg_relation_size('pgbench_accounts')",
    )?;
    let mut table = String::from("| read |");
    for (label, _) in MEASURED {
        let _ = write!(table, " {label} |");
    }
    table.push_str(" depth 8 / source |\n|---|---|---|---|---|---|\n");
    let cell = |values: &[f64], unit: &str, digits: usize| {
        let (min, median, max) = spread(values);
        format!("{median:.digits$} {unit} ({min:.digits$}–{max:.digits$})")
    };
    let _ = write!(
        table,
        "| full scan of pgbench_accounts ({} MB), one process |",
        scan_bytes / 1_048_576
    );
    for values in &scans {
        let _ = write!(table, " {} |", cell(values, "s", 3));
    }
    let _ = writeln!(
        table,
        " {:.2}x throughput |",
        spread(&scans[0]).1 / spread(&scans[3]).1
    );
    table.push_str("| `pgbench -S -c 2 -j 2` |");
    for values in &tps {
        let _ = write!(table, " {} |", cell(values, "tps", 0));
    }
    let _ = writeln!(table, " {:.2}x |", spread(&tps[3]).1 / spread(&tps[0]).1);
    let creation: Vec<String> = creation_ms
        .iter()
        .enumerate()
        .map(|(i, ms)| format!("c{} {ms:.0} ms", i + 1))
        .collect();
    println!("\n{table}");
    println!("making each level: {}", creation.join(", "));
    println!("rows c8 holds of its own (copied down the chain): {written}");
    let big_child = format!(
        "after c4 rewrote a tenth of the accounts ({} MB of its own relations), cow.clone('c4', ...) took {big_child_ms:.0} ms",
        own_bytes / 1_048_576
    );
    println!("{big_child}");
    if options.write_docs {
        let (start, end) = (NESTED_SECTION.start, NESTED_SECTION.end);
        let section = format!(
            "{start}\n## Reading clones of clones\n\n\
             Generated by `cargo run -p pg_test -- bench --nested` (pgbench scale {}, release build, \
             {} rounds side by side, medians with min–max). A chain prod → c1 → … → c8; each level \
             updates about 100 accounts before its child is made. A clone of a clone reads the root \
             source as of the same point as its parent and holds a copy of everything its parent \
             wrote (docs/ARCHITECTURE.md, \"Clones of clones\"), so depth adds nothing to a read: c8 \
             reads pgbench_accounts exactly as c1 does, with {written} rows of its own.\n\n{table}\n\
             Making each level (`cow.clone` of the level above, elapsed): {}. What a parent's own \
             data costs: {big_child}.\n{end}\n",
            options.scale,
            options.rounds,
            creation.join(", "),
        );
        NESTED_SECTION.replace(&section)?;
        println!("updated docs/BENCHMARKS.md");
    }
    Ok(())
}
