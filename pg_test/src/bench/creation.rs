//! `bench` (the creation benchmark): cowclone side by side with what users
//! would do instead, measured in one run on one throwaway cluster, reported
//! as ratios.
//!
//! For each pgbench source scale, each way of making a new database from it
//! is timed (median of several runs, client-side wall clock on an open
//! connection), with the bytes the new database adds on disk and the WAL it
//! writes; then once more while pgbench writes to the source, where
//! `CREATE DATABASE ... TEMPLATE` fails (reported as the result).

use std::fmt::Write as _;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use super::common::{benchmark_cluster, mb, median, rewrite_benchmarks_md};
use crate::bail;
use crate::cluster::Cluster;
use crate::error::{Error, Result};
use crate::extension::workspace_root;
use crate::install::PgInstall;
use crate::process::run_captured;

pub struct BenchOptions {
    pub scales: Vec<u32>,
    pub runs: usize,
    /// Seconds of pgbench load during the live round.
    pub load_seconds: u32,
    pub write_docs: bool,
}

impl BenchOptions {
    pub fn standard() -> Self {
        Self {
            scales: vec![10, 60, 100],
            runs: 5,
            load_seconds: 20,
            write_docs: true,
        }
    }

    pub fn quick() -> Self {
        Self {
            scales: vec![1, 10],
            runs: 1,
            load_seconds: 8,
            write_docs: false,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Method {
    Cowclone,
    TemplateWalLog,
    TemplateFileCopy,
    DumpRestore,
}

const METHODS: [Method; 4] = [
    Method::Cowclone,
    Method::TemplateWalLog,
    Method::TemplateFileCopy,
    Method::DumpRestore,
];

impl Method {
    fn label(self) -> &'static str {
        match self {
            Method::Cowclone => "cow.clone",
            Method::TemplateWalLog => "TEMPLATE (WAL_LOG)",
            Method::TemplateFileCopy => "TEMPLATE (FILE_COPY)",
            Method::DumpRestore => "pg_dump | pg_restore",
        }
    }

    fn color(self) -> &'static str {
        match self {
            Method::Cowclone => "#1b9e77",
            Method::TemplateWalLog => "#d95f02",
            Method::TemplateFileCopy => "#7570b3",
            Method::DumpRestore => "#e7298a",
        }
    }
}

/// One method on one source.
struct Measurement {
    scale: u32,
    source_bytes: i64,
    method: Method,
    /// Median seconds when idle.
    seconds: f64,
    added_bytes: i64,
    wal_bytes: i64,
    /// Seconds under load, or the error the method gave.
    under_load: std::result::Result<f64, String>,
    /// cow.clone only: what rebuilding the clone's catalog indexes
    /// (`REINDEX SYSTEM` in the fresh clone) would have added.
    catalog_rebuild_seconds: Option<f64>,
}

pub fn run(pg: &PgInstall, options: &BenchOptions) -> Result<()> {
    let cluster = benchmark_cluster(pg, "creation")?;

    let mut results = Vec::new();
    for scale in &options.scales {
        let source = format!("bench_s{scale}");
        println!("\n-- source {source}: pgbench -i -s {scale}");
        cluster.psql("postgres", &format!("CREATE DATABASE {source}"))?;
        run_captured(
            cluster
                .client_command("pgbench", &source)
                .args(["-i", "-q", "-s", &scale.to_string()]),
            "pgbench -i",
        )?;
        cluster.psql(&source, "CREATE EXTENSION cowclone")?;
        cluster.psql("postgres", "CHECKPOINT")?;
        let source_bytes = size_of(&cluster, &source)?;
        // One discarded clone first: the first one after building a source
        // pays for cold caches (template0, the source's catalog pages).
        create(
            &cluster,
            Method::Cowclone,
            &source,
            &format!("{source}_warmup"),
        )?;
        cluster.psql("postgres", &format!("DROP DATABASE {source}_warmup"))?;
        cluster.psql("postgres", "CHECKPOINT")?;
        let mut reindex_seconds = Vec::new();
        for method in METHODS {
            let mut times = Vec::new();
            let mut added_bytes = 0;
            let mut wal_bytes = 0;
            for run in 0..options.runs {
                let target = format!("{source}_copy{run}");
                let wal_before = wal_position(&cluster)?;
                times.push(create(&cluster, method, &source, &target)?);
                wal_bytes = wal_since(&cluster, &wal_before)?;
                added_bytes = size_of(&cluster, &target)?;
                if method == Method::Cowclone && run == 0 {
                    reindex_seconds.push(rebuild_catalog_indexes(&cluster, &target)?);
                }
                cluster.psql("postgres", &format!("DROP DATABASE {target}"))?;
                cluster.psql("postgres", "CHECKPOINT")?;
            }
            let seconds = median(&mut times);
            println!(
                "   {:<22} {:>9.3} s  adds {:>8}  WAL {:>8}",
                method.label(),
                seconds,
                mb(added_bytes),
                mb(wal_bytes)
            );
            results.push(Measurement {
                scale: *scale,
                source_bytes,
                method,
                seconds,
                added_bytes,
                wal_bytes,
                under_load: Err(String::new()),
                catalog_rebuild_seconds: (method == Method::Cowclone).then(|| reindex_seconds[0]),
            });
        }
        println!("   with pgbench -c 4 writing to {source}:");
        let load = start_load(&cluster, &source, options.load_seconds)?;
        std::thread::sleep(Duration::from_secs(2));
        for method in METHODS {
            let target = format!("{source}_live");
            let outcome = create(&cluster, method, &source, &target).map_err(|e| short_reason(&e));
            if outcome.is_ok() {
                cluster.psql("postgres", &format!("DROP DATABASE {target}"))?;
            } else {
                let _ = cluster.psql("postgres", &format!("DROP DATABASE IF EXISTS {target}"));
            }
            match &outcome {
                Ok(s) => println!("   {:<22} {:>9.3} s", method.label(), s),
                Err(reason) => println!("   {:<22}     fails: {reason}", method.label()),
            }
            let slot = results
                .iter_mut()
                .rev()
                .find(|m| m.scale == *scale && m.method == method)
                .expect("measured");
            slot.under_load = outcome;
        }
        finish_load(load)?;
        cluster.psql("postgres", &format!("DROP DATABASE {source} WITH (FORCE)"))?;
    }

    let table = render_table(&results);
    println!("\n{table}");
    let summary = summary_line(&results);
    println!("{summary}");
    if options.write_docs {
        let machine = machine_description(&cluster)?;
        write_docs(&table, &summary, &machine, &results)?;
        println!("wrote docs/BENCHMARKS.md and docs/bench-clone-time.svg");
    }
    Ok(())
}

fn create(cluster: &Cluster, method: Method, source: &str, target: &str) -> Result<f64> {
    let mut admin = cluster.connect("postgres")?;
    let started = Instant::now();
    match method {
        Method::Cowclone => {
            let mut client = cluster.connect(source)?;
            let started = Instant::now();
            client.batch_execute(&format!("SELECT cow.clone('{source}', '{target}')"))?;
            return Ok(started.elapsed().as_secs_f64());
        }
        Method::TemplateWalLog => {
            admin.batch_execute(&format!(
                "CREATE DATABASE {target} TEMPLATE {source} STRATEGY WAL_LOG"
            ))?;
        }
        Method::TemplateFileCopy => {
            admin.batch_execute(&format!(
                "CREATE DATABASE {target} TEMPLATE {source} STRATEGY FILE_COPY"
            ))?;
        }
        Method::DumpRestore => {
            admin.batch_execute(&format!("CREATE DATABASE {target} TEMPLATE template0"))?;
            let mut dump = cluster
                .client_command("pg_dump", source)
                .args(["-Fc", "--no-sync"])
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()?;
            let restore = cluster
                .client_command("pg_restore", target)
                .stdin(dump.stdout.take().expect("piped"))
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .output()?;
            let dumped = dump.wait()?;
            if !dumped.success() || !restore.status.success() {
                bail!(
                    "pg_dump | pg_restore failed: {}",
                    String::from_utf8_lossy(&restore.stderr).trim()
                );
            }
        }
    }
    Ok(started.elapsed().as_secs_f64())
}

/// The design alternative to copying catalog indexes: rebuilding them in
/// the clone. Timed as REINDEX SYSTEM in a fresh clone.
fn rebuild_catalog_indexes(cluster: &Cluster, clone: &str) -> Result<f64> {
    let mut client = cluster.connect(clone)?;
    let started = Instant::now();
    client.batch_execute(&format!("REINDEX SYSTEM {clone}"))?;
    Ok(started.elapsed().as_secs_f64())
}

/// The server's message without the database name or SQLSTATE, for the table.
fn short_reason(error: &Error) -> String {
    let message = error.to_string();
    let message = message.split(" (").next().unwrap_or_default();
    match message
        .split_once('"')
        .and_then(|(before, rest)| Some((before, rest.split_once('"')?.1)))
    {
        Some((before, after)) => format!("{}{}", before.trim_end(), after),
        None => message.to_string(),
    }
}

fn start_load(cluster: &Cluster, source: &str, seconds: u32) -> Result<Child> {
    Ok(cluster
        .client_command("pgbench", source)
        .args(["-c", "4", "-j", "2", "-n", "-T", &seconds.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?)
}

/// Waits for the load to end, draining its output (an undrained pipe would
/// block pgbench in the middle of a transaction).
fn finish_load(load: Child) -> Result<()> {
    let output = load.wait_with_output()?;
    if !output.status.success() {
        bail!(
            "the pgbench load failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

fn size_of(cluster: &Cluster, db: &str) -> Result<i64> {
    let out = cluster.psql("postgres", &format!("SELECT pg_database_size('{db}')"))?;
    out.trim()
        .parse()
        .map_err(|_| Error(format!("unexpected size: {out}")))
}

fn wal_position(cluster: &Cluster) -> Result<String> {
    Ok(cluster
        .psql("postgres", "SELECT pg_current_wal_insert_lsn()")?
        .trim()
        .to_string())
}

fn wal_since(cluster: &Cluster, start: &str) -> Result<i64> {
    let out = cluster.psql(
        "postgres",
        &format!("SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '{start}')::bigint"),
    )?;
    out.trim()
        .parse()
        .map_err(|_| Error(format!("unexpected WAL size: {out}")))
}

fn render_table(results: &[Measurement]) -> String {
    let mut out = String::from(
        "| source | method | time (median) | vs cow.clone | adds on disk | WAL written | under pgbench load |\n|---|---|---|---|---|---|---|\n",
    );
    for m in results {
        let cow = results
            .iter()
            .find(|c| c.scale == m.scale && c.method == Method::Cowclone)
            .expect("measured");
        let ratio = match m.seconds / cow.seconds {
            _ if m.method == Method::Cowclone => "1x".to_string(),
            r if r >= 1.0 => format!("{r:.1}x slower"),
            r => format!("{:.1}x faster", 1.0 / r),
        };
        let load = match &m.under_load {
            Ok(s) => format!("{s:.3} s"),
            Err(reason) => format!("fails: {reason}"),
        };
        let _ = writeln!(
            out,
            "| scale {} ({}) | {} | {:.3} s | {} | {} | {} | {} |",
            m.scale,
            mb(m.source_bytes),
            m.method.label().replace('|', "\\|"),
            m.seconds,
            ratio,
            mb(m.added_bytes),
            mb(m.wal_bytes),
            load
        );
    }
    out
}

fn summary_line(results: &[Measurement]) -> String {
    let scales: Vec<u32> = results
        .iter()
        .map(|m| m.scale)
        .fold(Vec::new(), |mut v, s| {
            if !v.contains(&s) {
                v.push(s);
            }
            v
        });
    let time = |scale: u32, method: Method| {
        results
            .iter()
            .find(|m| m.scale == scale && m.method == method)
            .map(|m| m.seconds)
            .unwrap_or(f64::NAN)
    };
    let (small, large) = (scales[0], *scales.last().expect("at least one scale"));
    format!(
        "summary: cow.clone {:.0} ms at scale {small}, {:.0} ms at scale {large} ({:.2}x for {:.0}x the data); at scale {large} TEMPLATE WAL_LOG is {:.0}x, FILE_COPY {:.0}x, pg_dump|pg_restore {:.0}x slower than cow.clone",
        time(small, Method::Cowclone) * 1000.0,
        time(large, Method::Cowclone) * 1000.0,
        time(large, Method::Cowclone) / time(small, Method::Cowclone),
        large as f64 / small as f64,
        time(large, Method::TemplateWalLog) / time(large, Method::Cowclone),
        time(large, Method::TemplateFileCopy) / time(large, Method::Cowclone),
        time(large, Method::DumpRestore) / time(large, Method::Cowclone),
    )
}

fn machine_description(cluster: &Cluster) -> Result<String> {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .map(|l| l.split_whitespace().nth(1).unwrap_or("0").to_string())
        })
        .and_then(|kb| kb.parse::<u64>().ok())
        .map(|kb| format!("{:.0} GiB", kb as f64 / 1_048_576.0))
        .unwrap_or_else(|| "unknown".into());
    let version = cluster
        .psql("postgres", "SHOW server_version")?
        .trim()
        .to_string();
    let date = run_captured(
        std::process::Command::new("date").args(["-u", "+%Y-%m-%d"]),
        "date",
    )?
    .trim()
    .to_string();
    Ok(format!(
        "{cores} cores, {memory} memory, PostgreSQL {version}, release build, measured {date}"
    ))
}

fn write_docs(table: &str, summary: &str, machine: &str, results: &[Measurement]) -> Result<()> {
    let docs = workspace_root().join("docs");
    let text = format!(
        "# Benchmarks\n\n\
         Generated by `cargo run -p pg_test -- bench` (the numbers below come from that command's last full run; \
         rerun it to reproduce them). Machine: {machine}.\n\n\
         ## Creating a database from a live source\n\n\
         Each method makes a new database from a pgbench source of the given scale on one throwaway cluster \
         (fsync on, `shared_buffers = 256MB`), after one discarded warm-up clone. Times are client-side \
         wall clock, median of the runs; \
         \"adds on disk\" is `pg_database_size` of the new database; \"WAL written\" is the WAL the creation \
         generated. The last column repeats each method once while `pgbench -c 4` writes to the source.\n\n\
         {table}\n{summary}\n\n\
         ![creation time vs source size](bench-clone-time.svg)\n\n\
         What the cow.clone time is made of: creating the database shell from template0 \
         (PostgreSQL's own `createdb`, WAL_LOG strategy, about 7 MB), copying the source's catalog as of the \
         clone point (catalog pages read through shared buffers, sanitized, WAL-logged) and the empty local \
         files of shadowed relations. None of it depends on the amount of user data, which is why the time \
         stays flat as the source grows.\n\n\
         TPC-B throughput, first-write latency and materialization numbers join these tables as those \
         capabilities land (issue #5).\n"
    );
    let mut text = text;
    text.push_str(&rebuild_note(results));
    text.push('\n');
    rewrite_benchmarks_md(&text)?;
    std::fs::write(docs.join("bench-clone-time.svg"), plot(results))?;
    Ok(())
}

/// Copying catalog indexes vs rebuilding them (docs/ARCHITECTURE.md).
fn rebuild_note(results: &[Measurement]) -> String {
    let mut note = String::from(
        "\n## Catalog indexes: copied and verified, or rebuilt?\n\n\
         cow.clone copies the source's catalog indexes page by page and verifies them unchanged. \
         The alternative, rebuilding them in the clone, is measured as `REINDEX SYSTEM` in a fresh clone:\n\n\
         | source | cow.clone (copies indexes) | REINDEX SYSTEM in the clone |\n|---|---|---|\n",
    );
    for m in results.iter().filter(|m| m.method == Method::Cowclone) {
        if let Some(rebuild) = m.catalog_rebuild_seconds {
            let _ = writeln!(
                note,
                "| scale {} | {:.0} ms | {:.0} ms |",
                m.scale,
                m.seconds * 1000.0,
                rebuild * 1000.0
            );
        }
    }
    note
}

/// A small line chart: creation time against source size, one line per method.
fn plot(results: &[Measurement]) -> String {
    let (width, height, margin) = (640.0, 400.0, 60.0);
    let max_x = results
        .iter()
        .map(|m| m.source_bytes as f64 / 1_048_576.0)
        .fold(1.0, f64::max);
    let max_y = results.iter().map(|m| m.seconds).fold(0.1, f64::max) * 1.1;
    let x = |mb: f64| margin + mb / max_x * (width - 2.0 * margin);
    let y = |s: f64| height - margin - s / max_y * (height - 2.0 * margin);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"20\" text-anchor=\"middle\" font-size=\"14\">Time to create a database from a pgbench source</text>\n\
         <line x1=\"{margin}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\n\
         <line x1=\"{margin}\" y1=\"{margin}\" x2=\"{margin}\" y2=\"{}\" stroke=\"black\"/>\n\
         <text x=\"{}\" y=\"{}\" text-anchor=\"middle\">source size (MB)</text>\n\
         <text x=\"15\" y=\"{}\" transform=\"rotate(-90 15 {})\" text-anchor=\"middle\">seconds</text>\n",
        width / 2.0,
        height - margin,
        width - margin,
        height - margin,
        height - margin,
        width / 2.0,
        height - 15.0,
        height / 2.0,
        height / 2.0
    );
    for i in 0..=4 {
        let value = max_y * i as f64 / 4.0;
        let _ = writeln!(
            svg,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{value:.1}</text>",
            margin - 5.0,
            y(value) + 4.0
        );
        let size = max_x * i as f64 / 4.0;
        let _ = writeln!(
            svg,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{size:.0}</text>",
            x(size),
            height - margin + 16.0
        );
    }
    for (index, method) in METHODS.iter().enumerate() {
        let points: Vec<String> = results
            .iter()
            .filter(|m| m.method == *method)
            .map(|m| {
                format!(
                    "{:.1},{:.1}",
                    x(m.source_bytes as f64 / 1_048_576.0),
                    y(m.seconds)
                )
            })
            .collect();
        let _ = writeln!(
            svg,
            "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"2\" points=\"{}\"/>",
            method.color(),
            points.join(" ")
        );
        for point in &points {
            let (px, py) = point.split_once(',').expect("x,y");
            let _ = writeln!(
                svg,
                "<circle cx=\"{px}\" cy=\"{py}\" r=\"3\" fill=\"{}\"/>",
                method.color()
            );
        }
        let ly = margin + 10.0 + index as f64 * 18.0;
        let _ = writeln!(
            svg,
            "<rect x=\"{}\" y=\"{}\" width=\"12\" height=\"3\" fill=\"{}\"/><text x=\"{}\" y=\"{}\">{}</text>",
            margin + 15.0,
            ly,
            method.color(),
            margin + 32.0,
            ly + 5.0,
            method.label()
        );
    }
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    fn measurement(scale: u32, method: Method, seconds: f64) -> Measurement {
        Measurement {
            scale,
            source_bytes: scale as i64 * 15_000_000,
            method,
            seconds,
            added_bytes: 7_000_000,
            wal_bytes: 8_000_000,
            under_load: if method == Method::Cowclone {
                Ok(seconds)
            } else {
                Err("busy".into())
            },
            catalog_rebuild_seconds: None,
        }
    }

    #[test]
    fn summary_reports_ratios_against_cowclone() {
        let mut results = Vec::new();
        for (scale, factor) in [(10, 1.0), (100, 10.0)] {
            results.push(measurement(scale, Method::Cowclone, 0.2));
            results.push(measurement(scale, Method::TemplateWalLog, 0.4 * factor));
            results.push(measurement(scale, Method::TemplateFileCopy, 0.2 * factor));
            results.push(measurement(scale, Method::DumpRestore, 1.0 * factor));
        }
        let summary = summary_line(&results);
        assert!(
            summary.contains("200 ms at scale 10, 200 ms at scale 100 (1.00x for 10x the data)"),
            "{summary}"
        );
        assert!(
            summary.contains("WAL_LOG is 20x, FILE_COPY 10x, pg_dump|pg_restore 50x slower"),
            "{summary}"
        );
        let table = render_table(&results);
        assert!(
            table.contains("| 2.0x slower |") && table.contains("fails: busy"),
            "{table}"
        );
        assert!(table.contains("pg_dump \\| pg_restore"), "{table}");
        assert!(plot(&results).matches("<polyline").count() == 4);
    }

    #[test]
    fn failure_reasons_drop_names_and_codes() {
        let error =
            Error("source database \"bench_s10\" is being accessed by other users (55006)".into());
        assert_eq!(
            short_reason(&error),
            "source database is being accessed by other users"
        );
    }
}
