//! What the benchmarks share: statistics and formatting, the throwaway
//! benchmark clusters, pgbench's output, and docs/BENCHMARKS.md, which the
//! creation benchmark writes whole and the others each own a marked
//! section of. Depends on no benchmark.

use std::path::PathBuf;
use std::time::Instant;

use crate::cluster::{Cluster, ClusterConfig};
use crate::error::{Error, Result};
use crate::extension::{build_and_install, workspace_root, Profile};
use crate::install::PgInstall;
use crate::process::run_captured;

pub(crate) fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.partial_cmp(b).expect("times are finite"));
    values[values.len() / 2]
}

/// (min, median, max) of some timings.
pub(crate) fn spread(values: &[f64]) -> (f64, f64, f64) {
    let mut sorted = values.to_vec();
    let mid = median(&mut sorted);
    (sorted[0], mid, sorted[sorted.len() - 1])
}

/// The pgbench tables TPC-B updates (pgbench_history only grows, by the
/// number of transactions run: what vacuum does shows in these three).
pub const UPDATED: &str = "'pgbench_accounts', 'pgbench_branches', 'pgbench_tellers'";

/// Bytes of the named tables (`'a', 'b'`) with their indexes.
pub fn tables_size(cluster: &Cluster, db: &str, tables: &str) -> Result<i64> {
    // Sizes are whole pages.
    number(
        cluster,
        db,
        &format!("SELECT sum(pg_total_relation_size(c.oid))::bigint FROM pg_class c WHERE c.relname IN ({tables}) AND c.relkind = 'r'"),
    )
}

/// VACUUM (VERBOSE) of `tables` (`a, b`): the dead row versions it could
/// not remove.
pub fn vacuum_kept(cluster: &Cluster, db: &str, tables: &str) -> Result<u64> {
    let counts = cluster.vacuum_verbose(db, tables)?;
    Ok(counts.iter().map(|(_, kept)| kept).sum())
}

pub fn mb(bytes: i64) -> String {
    format!("{:.1} MB", bytes as f64 / 1_048_576.0)
}

/// The `tps = ...` figure of a pgbench run's output.
pub fn pgbench_tps(out: &str) -> Result<f64> {
    out.lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| Error(format!("no tps in pgbench output: {out}")))
}

/// One integer a query returns.
pub fn number(cluster: &Cluster, db: &str, sql: &str) -> Result<i64> {
    let out = cluster.psql(db, sql)?;
    out.trim()
        .parse()
        .map_err(|_| Error(format!("not a number: {out}")))
}

/// A throwaway cluster for a benchmark, with the release build installed.
/// Durability as in production (fsync on): every side pays for its fsyncs.
pub fn benchmark_cluster(pg: &PgInstall, label: &str) -> Result<Cluster> {
    build_and_install(pg, Profile::Release)?;
    let mut config = ClusterConfig::for_tests()?;
    config.settings = vec![
        "max_wal_size = 8GB".into(),
        "checkpoint_timeout = 30min".into(),
    ];
    let cluster = Cluster::temporary(pg, config)?;
    println!(
        "{label} benchmark cluster: PostgreSQL {} in {}",
        pg.major,
        cluster.dir.display()
    );
    Ok(cluster)
}

/// A benchmark cluster with a pgbench source `prod` of `scale` (cowclone
/// installed, vacuumed and analyzed), for the side-by-side benchmarks.
pub fn pgbench_source_cluster(pg: &PgInstall, scale: u32, label: &str) -> Result<Cluster> {
    let cluster = benchmark_cluster(pg, label)?;
    cluster.psql("postgres", "CREATE DATABASE prod")?;
    pgbench_init(&cluster, "prod", scale)?;
    cluster.psql("prod", "CREATE EXTENSION cowclone")?;
    cluster.psql("prod", "VACUUM ANALYZE")?;
    Ok(cluster)
}

/// `pgbench -i` of `scale` into the existing database `db`.
pub fn pgbench_init(cluster: &Cluster, db: &str, scale: u32) -> Result<()> {
    run_captured(
        cluster
            .client_command("pgbench", db)
            .args(["-i", "-q", "-s", &scale.to_string()]),
        "pgbench -i",
    )?;
    Ok(())
}

/// TPC-B in `db`: `pgbench -n -c 4 -j 2 -T seconds`; returns pgbench's report.
pub fn tpcb(cluster: &Cluster, db: &str, seconds: u32) -> Result<String> {
    run_captured(
        cluster.client_command("pgbench", db).args([
            "-n",
            "-c",
            "4",
            "-j",
            "2",
            "-T",
            &seconds.to_string(),
        ]),
        "pgbench (TPC-B)",
    )
}

/// How long `sql` takes in `db` on a fresh connection (connecting excluded).
pub fn timed(cluster: &Cluster, db: &str, sql: &str) -> Result<f64> {
    let mut client = cluster.connect(db)?;
    let started = Instant::now();
    client.batch_execute(sql)?;
    Ok(started.elapsed().as_secs_f64())
}

/// `pgbench -S -c 2 -j 2` in `db` for `seconds`: its tps.
pub fn select_only_tps(cluster: &Cluster, db: &str, seconds: u32) -> Result<f64> {
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

/// docs/BENCHMARKS.md.
pub fn benchmarks_md() -> PathBuf {
    workspace_root().join("docs/BENCHMARKS.md")
}

/// A part of docs/BENCHMARKS.md that one benchmark owns, between two
/// marker lines (the section's text carries both).
#[derive(Clone, Copy, Debug)]
pub struct DocsSection {
    pub start: &'static str,
    pub end: &'static str,
}

/// `bench --reads`'s section.
pub const READS_SECTION: DocsSection = DocsSection {
    start: "<!-- reads: written by `bench --reads` -->",
    end: "<!-- /reads -->",
};

/// `bench --writes`'s section.
pub const WRITES_SECTION: DocsSection = DocsSection {
    start: "<!-- writes: written by `bench --writes` -->",
    end: "<!-- /writes -->",
};

/// `bench --pin`'s section.
pub const PIN_SECTION: DocsSection = DocsSection {
    start: "<!-- pin: written by `bench --pin` -->",
    end: "<!-- /pin -->",
};

/// `bench --materialize`'s section.
pub const MATERIALIZE_SECTION: DocsSection = DocsSection {
    start: "<!-- materialize: written by `bench --materialize` -->",
    end: "<!-- /materialize -->",
};

/// `bench --history`'s section.
pub const HISTORY_SECTION: DocsSection = DocsSection {
    start: "<!-- history: written by `bench --history` -->",
    end: "<!-- /history -->",
};

/// `bench --nested`'s section.
pub const NESTED_SECTION: DocsSection = DocsSection {
    start: "<!-- nested: written by `bench --nested` -->",
    end: "<!-- /nested -->",
};

/// The sections the creation benchmark keeps, in this order, after its own
/// text when it rewrites the whole file.
pub const OWNED_SECTIONS: [DocsSection; 6] = [
    READS_SECTION,
    WRITES_SECTION,
    PIN_SECTION,
    MATERIALIZE_SECTION,
    HISTORY_SECTION,
    NESTED_SECTION,
];

impl DocsSection {
    /// This section of `text` (markers included, plus a newline), or
    /// nothing if `text` lacks it.
    fn within(&self, text: &str) -> String {
        match (text.find(self.start), text.find(self.end)) {
            (Some(start), Some(end)) => text[start..end + self.end.len()].to_string() + "\n",
            _ => String::new(),
        }
    }

    /// `text` with this section replaced by `section` (which carries the
    /// markers), or with `section` appended.
    fn replaced_in(&self, text: &str, section: &str) -> String {
        match (text.find(self.start), text.find(self.end)) {
            (Some(start), Some(end)) => format!(
                "{}{}{}",
                &text[..start],
                section.trim_end_matches('\n'),
                &text[end + self.end.len()..]
            ),
            _ => format!("{}\n\n{}", text.trim_end(), section),
        }
    }

    /// Replaces this section of docs/BENCHMARKS.md with `section`, leaving
    /// the rest (or appends it).
    pub fn replace(&self, section: &str) -> Result<()> {
        let path = benchmarks_md();
        let existing = std::fs::read_to_string(&path).unwrap_or_default();
        std::fs::write(path, self.replaced_in(&existing, section))?;
        Ok(())
    }
}

/// Writes docs/BENCHMARKS.md as `head` followed by the [`OWNED_SECTIONS`]
/// as they stand in the file now.
pub fn rewrite_benchmarks_md(head: &str) -> Result<()> {
    let path = benchmarks_md();
    let existing = std::fs::read_to_string(&path).unwrap_or_default();
    std::fs::write(path, composed(head, &existing))?;
    Ok(())
}

fn composed(head: &str, existing: &str) -> String {
    let mut text = head.to_string();
    for section in OWNED_SECTIONS {
        text.push_str(&section.within(existing));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0]), 4.0);
    }

    #[test]
    fn reads_tps_from_pgbench_output() {
        let out = "number of failed transactions: 0 (0.000%)\ntps = 1234.5 (without initial connection time)\n";
        assert_eq!(pgbench_tps(out).unwrap(), 1234.5);
        assert!(pgbench_tps("nothing").is_err());
    }

    #[test]
    fn sections_are_kept_replaced_or_appended() {
        let reads = format!("{}\nold reads\n{}", READS_SECTION.start, READS_SECTION.end);
        let writes = format!("{}\nwrites\n{}", WRITES_SECTION.start, WRITES_SECTION.end);
        let file = format!("# Benchmarks\nold head\n{reads}\n\n{writes}\n");
        assert_eq!(
            composed("# Benchmarks\nnew head\n", &file),
            format!("# Benchmarks\nnew head\n{reads}\n{writes}\n")
        );
        assert_eq!(composed("head\n", "no sections"), "head\n");

        let new_reads = format!(
            "{}\nnew reads\n{}\n",
            READS_SECTION.start, READS_SECTION.end
        );
        assert_eq!(
            READS_SECTION.replaced_in(&file, &new_reads),
            file.replace("old reads", "new reads")
        );
        assert_eq!(
            READS_SECTION.replaced_in("# Benchmarks\n\n", &new_reads),
            format!("# Benchmarks\n\n{new_reads}")
        );
    }
}
