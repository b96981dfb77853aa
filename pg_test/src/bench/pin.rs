//! `bench --pin`: what a clone's pin costs elsewhere. The same pgbench run
//! in another database with and without a live clone of `prod`, and TPC-B
//! in a clone against TPC-B in a plain `TEMPLATE` copy, each side followed
//! by VACUUM, compared by what they leave on disk.

use std::fmt::Write as _;

use super::common::{
    self, mb, number, pgbench_init, pgbench_source_cluster, tables_size, tpcb, PIN_SECTION, UPDATED,
};
use crate::cluster::Cluster;
use crate::error::{Error, Result};
use crate::install::PgInstall;

pub struct PinBenchOptions {
    /// pgbench scale of the source and of the other database.
    pub scale: u32,
    pub pgbench_seconds: u32,
    pub write_docs: bool,
}

impl PinBenchOptions {
    pub fn standard() -> Self {
        Self {
            scale: 10,
            pgbench_seconds: 60,
            write_docs: true,
        }
    }

    pub fn quick() -> Self {
        Self {
            scale: 2,
            pgbench_seconds: 5,
            write_docs: false,
        }
    }
}

/// TPC-B, then the wait until its backends are gone.
fn tpcb_then_settle(cluster: &Cluster, db: &str, seconds: u32) -> Result<()> {
    tpcb(cluster, db, seconds)?;
    // pgbench has exited, but its backends may still be ending (and hold
    // back this database's horizon) for a moment.
    let others = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = '{db}' AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
    );
    for _ in 0..100 {
        if number(cluster, db, &others)? == 0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    Ok(())
}

/// Every pgbench table, for VACUUM.
const ALL_TABLES: &str = "pgbench_accounts, pgbench_branches, pgbench_tellers, pgbench_history";

fn vacuum_kept(cluster: &Cluster, db: &str) -> Result<u64> {
    common::vacuum_kept(cluster, db, ALL_TABLES)
}

const SMALL: &str = "'pgbench_branches', 'pgbench_tellers'";

fn kb(bytes: i64) -> String {
    format!("{} kB ({} pages)", bytes / 1024, bytes / 8192)
}

fn no_autovacuum(cluster: &Cluster, db: &str) -> Result<()> {
    cluster.psql(
        db,
        "DO $$ DECLARE t text; BEGIN FOR t IN SELECT relname FROM pg_class WHERE relname LIKE 'pgbench\\_%' AND relkind = 'r' LOOP EXECUTE format('ALTER TABLE %I SET (autovacuum_enabled = off)', t); END LOOP; END $$",
    )?;
    Ok(())
}

pub fn run(pg: &PgInstall, options: &PinBenchOptions) -> Result<()> {
    let cluster = pgbench_source_cluster(pg, options.scale, "pin")?;
    let init = |db: &str| -> Result<()> {
        cluster.psql("postgres", &format!("CREATE DATABASE {db}"))?;
        pgbench_init(&cluster, db, options.scale)?;
        cluster.psql(db, "VACUUM ANALYZE")?;
        no_autovacuum(&cluster, db)?;
        Ok(())
    };
    // Autovacuum's ANALYZE holds a snapshot in its database, which would keep
    // dead rows there on either side; every VACUUM here is explicit.
    no_autovacuum(&cluster, "prod")?;
    init("alone")?;
    init("beside")?;
    let seconds = options.pgbench_seconds;

    // Another database, with no clone in the cluster, then with one.
    tpcb_then_settle(&cluster, "alone", seconds)?;
    let alone_kept = vacuum_kept(&cluster, "alone")?;
    let alone = tables_size(&cluster, "alone", UPDATED)?;
    cluster.psql("postgres", "CREATE DATABASE copy TEMPLATE prod")?;
    cluster.psql("prod", "SELECT cow.clone('prod', 'staging')")?;
    tpcb_then_settle(&cluster, "beside", seconds)?;
    let beside_kept = vacuum_kept(&cluster, "beside")?;
    let beside = tables_size(&cluster, "beside", UPDATED)?;

    // TPC-B in the clone and in the plain copy.
    tpcb_then_settle(&cluster, "copy", seconds)?;
    vacuum_kept(&cluster, "copy")?;
    let copy_small = tables_size(&cluster, "copy", SMALL)?;
    tpcb_then_settle(&cluster, "staging", seconds)?;
    let clone_kept = vacuum_kept(&cluster, "staging")?;
    let clone_small = tables_size(&cluster, "staging", SMALL)?;
    let scope = cluster.psql("prod", "SELECT scope FROM cow.pins")?;

    let table = format!(
        "| what (each side `pgbench -c 4 -j 2 -T {seconds}` then VACUUM) | without the clone | with it | ratio |\n|---|---|---|---|\n\
         | another database: `pgbench_accounts`, `_branches`, `_tellers` with indexes | {} | {} | {:.2}x |\n\
         | another database: dead row versions VACUUM could not remove | {alone_kept} | {beside_kept} | |\n\
         | `pgbench_branches` + `pgbench_tellers` (and indexes): TPC-B in a plain copy / in the clone | {} | {} | {:.2}x |\n\
         | dead row versions VACUUM could not remove in the clone | | {clone_kept} | |\n",
        mb(alone),
        mb(beside),
        beside as f64 / alone as f64,
        kb(copy_small),
        kb(clone_small),
        clone_small as f64 / copy_small as f64,
    );
    println!("\n{table}\npin scope during the runs: {}", scope.trim());
    if options.write_docs {
        let (start, end) = (PIN_SECTION.start, PIN_SECTION.end);
        let mut section = String::new();
        let _ = write!(
            section,
            "{start}\n## What a clone's pin costs elsewhere\n\n\
             Generated by `cargo run -p pg_test -- bench --pin` (pgbench scale {}, release build, one cluster). \
             `alone` and `beside` are identical pgbench databases: `alone` runs before any clone exists, `beside` \
             while a clone of `prod` lives (its pin scope: {}). `copy` is `CREATE DATABASE copy TEMPLATE prod`, \
             made just before the clone; TPC-B then runs in the copy and in the clone.\n\n{table}\n{end}\n",
            options.scale,
            scope.trim()
        );
        PIN_SECTION.replace(&section)?;
        println!("updated docs/BENCHMARKS.md");
    }
    if beside_kept != 0 || clone_kept != 0 {
        return Err(Error(format!(
            "vacuum kept dead rows: {beside_kept} in another database, {clone_kept} in the clone"
        )));
    }
    Ok(())
}
