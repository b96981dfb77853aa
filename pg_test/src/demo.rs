//! `demo`: the main job end to end on a throwaway cluster, narrated for a
//! newcomer. It only shows what really runs; what does not exist yet is said
//! plainly.

use std::time::Instant;

use crate::cluster::{Cluster, ClusterConfig};
use crate::error::{Context, Error, Result};
use crate::extension::{build_and_install, Profile};
use crate::install::PgInstall;
use crate::process::run_captured;

pub fn run(pg: &PgInstall) -> Result<()> {
    build_and_install(pg, Profile::Debug)?;

    let mut config = ClusterConfig::for_tests()?;
    config.settings.clear(); // a demo cluster keeps fsync on
                             // Marks of prod's history every second rather than every 10 s, so the
                             // demo need not wait for one.
    config
        .settings
        .push("cow.retention_mark_interval = 1".into());
    let cluster = Cluster::temporary(pg, config)?;
    step(&format!(
        "Started a throwaway PostgreSQL {} cluster in {} with shared_preload_libraries = 'cowclone'.\n   Connect while the demo runs with: {}",
        pg.major,
        cluster.dir.display(),
        cluster.connect_hint()
    ));

    cluster.psql("postgres", "CREATE DATABASE prod")?;
    run_captured(
        cluster
            .client_command("pgbench", "prod")
            .args(["-i", "-q", "-s", "5"]),
        "pgbench -i",
    )?;
    cluster.psql("prod", "CREATE EXTENSION cowclone")?;
    let accounts = one(&cluster, "prod", "SELECT count(*) FROM pgbench_accounts")?;
    let size = one(
        &cluster,
        "prod",
        "SELECT pg_size_pretty(pg_database_size('prod'))",
    )?;
    step(&format!(
        "Source database prod: pgbench data ({accounts} accounts, {size} on disk) and CREATE EXTENSION cowclone (version {}).",
        one(&cluster, "prod", "SELECT cow.version()")?
    ));

    // An application is connected to prod and in the middle of a transaction.
    let mut app = cluster.connect("prod")?;
    app.batch_execute("BEGIN; UPDATE pgbench_branches SET bbalance = bbalance + 1 WHERE bid = 1;")
        .context(|| "application session".into())?;

    let mut admin = cluster.connect("postgres")?;
    let started = Instant::now();
    let refusal = match admin.simple_query("CREATE DATABASE staging_copy TEMPLATE prod") {
        Ok(_) => "it unexpectedly succeeded".to_string(),
        Err(e) => Error::from(e).to_string(),
    };
    step(&format!(
        "Stock PostgreSQL, CREATE DATABASE staging_copy TEMPLATE prod, while that application is connected:\n   ERROR: {refusal} (after {:.1} s of waiting)",
        started.elapsed().as_secs_f64()
    ));

    let mut cloner = cluster.connect("prod")?;
    let row = cloner.query_one(
        "SELECT clone_point_lsn, elapsed_ms, catalog_relations, shadowed_relations FROM cow.clone('prod', 'staging')",
        &[],
    )?;
    step(&format!(
        "SELECT cow.clone('prod', 'staging'), same moment, application still connected:\n   done in {:.0} ms: clone point at LSN {}, {} catalog relations copied, {} user relations shadowed (no data copied).",
        row.get::<_, f64>(1),
        row.get::<_, String>(0),
        row.get::<_, i64>(2),
        row.get::<_, i64>(3)
    ));
    app.batch_execute("COMMIT")?;

    let tables = cluster.psql("staging", "SELECT string_agg(tablename, ', ' ORDER BY tablename) FROM pg_tables WHERE schemaname = 'public'")?;
    let same_oids = one(
        &cluster,
        "staging",
        "SELECT count(*) FROM pg_class WHERE relname LIKE 'pgbench%'",
    )?;
    step(&format!(
        "staging is a real database: psql -d staging lists {}; its {same_oids} pgbench relations carry the source's OIDs and relfilenodes.",
        tables.trim()
    ));
    step(&format!(
        "Disk: staging adds {} (its own catalog) next to prod's {size}.",
        one(
            &cluster,
            "postgres",
            "SELECT pg_size_pretty(pg_database_size('staging'))"
        )?
    ));
    step(&format!(
        "cow.clones: {}",
        one(&cluster, "prod", "SELECT format('clone %s of %s, clone point %s, pin %s holding back %s transactions', clone, source, clone_point_time, pin, pin_age) FROM cow.clones")?
    ));

    let pin = "SELECT format('source %s: scope %s, holder pid %s, horizon held by clone %s at xmin %s', source, scope, holder_pid, horizon_clone, horizon_xmin) FROM cow.pins WHERE scope = 'source-only'";
    let mut held = String::new();
    for _ in 0..100 {
        held = one(&cluster, "prod", pin)?;
        if !held.is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    step(&format!(
        "The pin holds back vacuum in prod only (other databases and staging itself vacuum as usual).\n   cow.pins: {held}\n   pg_stat_activity: {}",
        one(&cluster, "postgres", "SELECT format('%s, connected to %s, backend_xmin %s', backend_type, datname, backend_xmin) FROM pg_stat_activity WHERE backend_type LIKE 'cowclone pin holder%'")?
    ));
    cluster.psql("prod", "SELECT cow.clone('prod', 'staging2')")?;
    step(&format!(
        "A second clone of prod shares its pin: {} cowclone replication slot(s) for {} clones.",
        one(
            &cluster,
            "postgres",
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'cowclone%'"
        )?,
        one(&cluster, "prod", "SELECT count(*) FROM cow.clones")?
    ));
    admin.batch_execute("DROP DATABASE staging2")?;

    // The source moves on; the clone keeps answering as of its clone point.
    run_captured(
        cluster
            .client_command("pgbench", "prod")
            .args(["-n", "-t", "200", "-c", "2"]),
        "pgbench",
    )?;
    cluster.psql("prod", "DELETE FROM pgbench_accounts WHERE aid <= 1000")?;
    cluster.psql("prod", "VACUUM pgbench_accounts")?;
    let balance = "SELECT format('%s accounts, balance total %s, %s history rows', count(*), sum(abalance), (SELECT count(*) FROM pgbench_history)) FROM pgbench_accounts";
    step(&format!(
        "Reads come straight from prod's files as of the clone point. After 400 pgbench transactions, deleting 1,000 accounts and VACUUM in prod:\n   prod:    {}\n   staging: {}",
        one(&cluster, "prod", balance)?,
        one(&cluster, "staging", balance)?
    ));
    let lookup = one(
        &cluster,
        "staging",
        "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) SELECT abalance FROM pgbench_accounts WHERE aid = 42",
    )?;
    step(&format!(
        "Index scans read prod's index files too (EXPLAIN ANALYZE in staging):\n   {}",
        lookup.replace('\n', "\n   ")
    ));
    let mut branch = cluster.connect("staging")?;
    branch.batch_execute(
        "UPDATE pgbench_accounts SET abalance = abalance + 100 WHERE aid = 5000;
         DELETE FROM pgbench_accounts WHERE aid = 5001;
         INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (1, 1, 5000, 100, now())",
    )?;
    let written = "SELECT format('account 5000 balance %s, account 5001 %s, %s history rows', (SELECT abalance FROM pgbench_accounts WHERE aid = 5000), (SELECT CASE WHEN count(*) = 0 THEN 'gone' ELSE 'present' END FROM pgbench_accounts WHERE aid = 5001), (SELECT count(*) FROM pgbench_history))";
    step(&format!(
        "Writes in staging copy a row on its first write; prod never changes (UPDATE +100, DELETE, INSERT in staging):\n   staging: {}\n   prod:    {}",
        one(&cluster, "staging", written)?,
        one(&cluster, "prod", written)?
    ));
    drop(branch);

    let mut standby = cluster.base_backup(ClusterConfig::for_tests()?, true)?;
    standby.start()?;
    cluster.wait_for_replay(&standby)?;
    step(&format!(
        "A streaming standby of the cluster (pg_basebackup -R) answers in staging exactly as the primary:\n   standby: {}\n   its cow.clones: {}",
        one(&standby, "staging", written)?,
        one(&standby, "prod", "SELECT string_agg(clone || ' of ' || source || ', pin_state ' || pin_state, '; ') FROM cow.clones")?
    ));
    drop(standby);

    let guarded = match cloner.simple_query("TRUNCATE pgbench_accounts") {
        Ok(_) => "it was not refused".to_string(),
        Err(e) => Error::from(e).to_string(),
    };
    step(&format!(
        "The source guard: TRUNCATE pgbench_accounts in prod, whose files staging reads:\n   ERROR: {guarded}"
    ));

    drop((cloner, app));

    // A clone of a clone: a branch per developer from the shared staging.
    let dev = one(
        &cluster,
        "prod",
        "SELECT format('in %s ms, as of WAL %s', round(elapsed_ms::numeric), clone_point_lsn) FROM cow.clone('staging', 'dev1')",
    )?;
    cluster.psql(
        "dev1",
        "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = 5000",
    )?;
    step(&format!(
        "A clone of a clone: cow.clone('staging', 'dev1') {dev}. dev1 starts as staging was (its writes included) and writes on its own (+1 to account 5000 in dev1):\n   dev1:    {}\n   staging: {}\n   cow.lineage('dev1'): {}",
        one(&cluster, "dev1", written)?,
        one(&cluster, "staging", written)?,
        one(&cluster, "prod", "SELECT string_agg(format('%s %s (%s)', level, database, status), ' -> ' ORDER BY level) FROM cow.lineage('dev1')")?
    ));

    // A point in time: prod keeps an hour of history; a mistaken DELETE
    // happens; a clone as of just before it shows what was lost.
    one(
        &cluster,
        "prod",
        "SELECT cow.set_retention('prod', interval '1 hour')",
    )?;
    wait_for(
        &cluster,
        "SELECT window_start_lsn IS NOT NULL FROM cow.retention WHERE database = 'prod'",
    )?;
    let before = one(&cluster, "prod", "SELECT clock_timestamp()")?;
    cluster.psql("prod", "DELETE FROM pgbench_history")?;
    let deleted_at = one(&cluster, "prod", "SELECT pg_current_wal_insert_lsn()")?;
    wait_for(
        &cluster,
        &format!(
            "SELECT newest_mark_lsn >= '{deleted_at}' FROM cow.retention WHERE database = 'prod'"
        ),
    )?;
    let forensic = one(
        &cluster,
        "prod",
        &format!("SELECT format('as of %s (WAL %s) in %s ms', clone_point_time, clone_point_lsn, round(elapsed_ms::numeric)) FROM cow.clone('prod', 'forensics', as_of => '{before}')"),
    )?;
    let history_rows = "SELECT count(*) || ' history rows' FROM pgbench_history";
    step(&format!(
        "History retention: cow.set_retention('prod', interval '1 hour') keeps every point of the last hour clonable. After a mistaken DELETE FROM pgbench_history in prod, cow.clone('prod', 'forensics', as_of => <just before it>):
   forensics {forensic}: {}
   prod now: {}
   the window: {}",
        one(&cluster, "forensics", history_rows)?,
        one(&cluster, "prod", history_rows)?,
        one(&cluster, "prod", "SELECT format('from %s, %s marks, %s kB of WAL kept', window_start_time, marks, wal_kept_bytes / 1024) FROM cow.retention")?
    ));
    cluster.psql("postgres", "DROP DATABASE forensics")?;
    one(&cluster, "prod", "SELECT cow.set_retention('prod', NULL)")?;
    let materialized = one(
        &cluster,
        "prod",
        "SELECT format('%s: %s tables, %s MB copied from prod in %s ms', status, tables, round(bytes_copied / 1048576.0, 1), round(elapsed_ms::numeric)) FROM cow.materialize('staging')",
    )?;
    step(&format!(
        "cow.materialize('staging') copies every row staging still reads from prod into its own storage, table by table, while it stays readable and writable; then it is an ordinary database, and its child dev1 is unaffected (it reads nothing of staging):\n   {materialized}\n   its tables: {}\n   cow.clones: {}\n   dev1: {}",
        one(&cluster, "staging", "SELECT string_agg(DISTINCT a.amname, ', ') FROM pg_class c JOIN pg_am a ON a.oid = c.relam WHERE c.relnamespace = 'public'::regnamespace")?,
        one(&cluster, "prod", "SELECT string_agg(clone || ' of ' || source || ': ' || status, '; ' ORDER BY clone) FROM cow.clones")?,
        one(&cluster, "dev1", written)?
    ));

    let refused = match admin.batch_execute("DROP DATABASE prod") {
        Ok(()) => "it was not refused".to_string(),
        Err(e) => Error::from(e).to_string(),
    };
    // From staging, which has the extension (and is an ordinary database now).
    cluster.psql("staging", "SELECT cow.drop_database('prod', force => true)")?;
    step(&format!(
        "DROP DATABASE prod is refused while dev1 still reads it:\n   ERROR: {refused}\n   cow.drop_database('prod', force => true) materializes dev1 and drops prod; staging and dev1 still answer:\n   staging: {}\n   dev1:    {}",
        one(&cluster, "staging", written)?,
        one(&cluster, "dev1", written)?
    ));

    drop(admin);
    drop(cluster);
    step("Stopped the cluster and removed its directory.");
    Ok(())
}

/// Polls a yes/no query in `prod` until it answers yes (30 s at most).
fn wait_for(cluster: &Cluster, sql: &str) -> Result<()> {
    for _ in 0..300 {
        if one(cluster, "prod", sql)? == "t" {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    Err(Error(format!("timed out waiting for: {sql}")))
}

fn one(cluster: &Cluster, db: &str, sql: &str) -> Result<String> {
    Ok(cluster.psql(db, sql)?.trim().to_string())
}

fn step(text: &str) {
    println!("\n-> {text}");
}
