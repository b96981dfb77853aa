//! Helpers shared by the integration tests.
#![allow(dead_code)] // each test binary uses a different subset

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use pg_test::extension::workspace_root;
use pg_test::Cluster;

/// A test cluster whose database `prod` has cowclone and whatever `setup`
/// makes, cloned as `staging`.
pub fn cloned_source(setup: &str) -> Cluster {
    let cluster = pg_test::start_test_cluster(|_| {}).unwrap();
    cluster.psql("postgres", "CREATE DATABASE prod").unwrap();
    cluster
        .psql("prod", &format!("CREATE EXTENSION cowclone; {setup}"))
        .unwrap();
    cluster
        .psql("prod", "SELECT cow.clone('prod', 'staging')")
        .unwrap();
    cluster
}

/// Queries that reach each index kind of the rich schema.
pub const INDEXED_QUERIES: [&str; 16] = [
    "SELECT c.id, p.id FROM app.child c JOIN app.parent p ON p.id = c.parent_id ORDER BY 1",
    "SELECT a.id, b.label FROM app.everything a JOIN app.everything b ON a.id = b.id WHERE a.id < 300 ORDER BY a.id",
    "SELECT id, label FROM app.everything WHERE id BETWEEN 10 AND 60 ORDER BY id",
    "SELECT id FROM app.everything WHERE id < 200 ORDER BY id DESC",
    "SELECT id, label FROM app.everything WHERE uid = md5('7')::uuid",
    "SELECT id FROM app.everything WHERE label = 'label 42'",
    "SELECT id FROM app.everything WHERE docb @> '{\"i\": 5}' ORDER BY id",
    "SELECT id FROM app.everything WHERE words @> array['w17'] ORDER BY id",
    "SELECT id FROM app.everything WHERE box_col && box(point(10, 10), point(20, 20)) ORDER BY id",
    "SELECT id FROM app.everything WHERE window_r @> timestamptz '2024-01-03 00:00+00' ORDER BY id",
    "SELECT id FROM app.everything WHERE pt <@ box(point(0, -50), point(50, 0)) ORDER BY id",
    "SELECT id FROM app.everything ORDER BY pt <-> point(30, -30) LIMIT 5",
    "SELECT id FROM app.everything WHERE day BETWEEN '2024-02-01' AND '2024-03-01' ORDER BY id",
    "SELECT id FROM app.everything WHERE lower(label) = 'label 44' AND flag",
    "SELECT id FROM app.everything WHERE search @@ to_tsquery('english', 'number & 77') ORDER BY id",
    "SELECT id, at FROM app.events WHERE at BETWEEN '2024-06-10' AND '2024-06-20' ORDER BY id",
];

/// The tables (plain, partitioned, materialized views) of the rich schema.
pub fn app_tables(cluster: &Cluster, db: &str) -> Vec<String> {
    rows(
        cluster,
        db,
        "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = 'app' AND c.relkind IN ('r', 'm', 'p') ORDER BY 1",
    )
}

/// Runs statements one by one (VACUUM cannot run in psql -c's single transaction).
pub fn run_each(cluster: &Cluster, db: &str, statements: &str) {
    for statement in statements
        .split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        cluster.psql(db, statement).unwrap();
    }
}

pub fn rows(cluster: &Cluster, db: &str, sql: &str) -> Vec<String> {
    cluster
        .psql(db, sql)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

/// The schema with one column of each common type, every index kind,
/// partitions, inheritance, TOAST values and more, that several tests clone.
pub fn rich_schema() -> PathBuf {
    workspace_root().join("pg_test/sql/rich_schema.sql")
}

/// A table's full contents, each row as text, sorted (the order of rows is
/// not part of a table's contents).
pub fn contents(cluster: &Cluster, db: &str, table: &str, settings: &str) -> Vec<String> {
    rows(
        cluster,
        db,
        &format!("{settings} SELECT t::text FROM {table} t ORDER BY 1"),
    )
}

/// The dump of a clone differs from its source's only in the access
/// methods shadowed relations use, and in pg_dump's random \restrict key.
pub fn normalized_dump(cluster: &Cluster, db: &str) -> String {
    let dump = cluster.schema_dump(db).unwrap();
    dump.lines()
        .filter(|l| !l.starts_with("\\restrict") && !l.starts_with("\\unrestrict"))
        .map(|l| {
            let mut line = l.replace(
                "SET default_table_access_method = cow;",
                "SET default_table_access_method = heap;",
            );
            for am in ["btree", "hash", "gist", "gin", "spgist", "brin"] {
                line = line.replace(&format!("USING cow_{am} "), &format!("USING {am} "));
            }
            line
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Everything a clone leaves in a cluster, to prove a failure left nothing.
#[derive(Debug, PartialEq, Eq)]
pub struct Footprint {
    pub databases: Vec<String>,
    pub slots: Vec<String>,
    pub state_files: BTreeSet<String>,
    /// Clone records (security labels of provider cowclone).
    pub records: Vec<String>,
    pub database_dirs: BTreeSet<String>,
}

pub fn footprint(cluster: &Cluster) -> Footprint {
    let list_dir = |dir: &Path| -> BTreeSet<String> {
        std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .collect()
            })
            .unwrap_or_default()
    };
    Footprint {
        databases: rows(
            cluster,
            "postgres",
            "SELECT datname FROM pg_database ORDER BY 1",
        ),
        slots: rows(
            cluster,
            "postgres",
            "SELECT slot_name FROM pg_replication_slots ORDER BY 1",
        ),
        state_files: list_dir(&cluster.data_dir().join("pg_cowclone")),
        records: rows(
            cluster,
            "postgres",
            "SELECT objoid FROM pg_shseclabel WHERE provider = 'cowclone' ORDER BY 1",
        ),
        database_dirs: list_dir(&cluster.data_dir().join("base")),
    }
}

/// Waits until the cluster's footprint is `before` again and asserts it: a
/// dropped clone's pin is let go by its source's holder, woken when the
/// drop commits, so a moment after `DROP DATABASE` returns.
pub fn assert_footprint_returns_to(cluster: &Cluster, before: &Footprint, what: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while footprint(cluster) != *before && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(footprint(cluster), *before, "{what}");
}

pub fn sqlstate(error: &postgres::Error) -> String {
    error
        .as_db_error()
        .map(|e| e.code().code().to_string())
        .unwrap_or_else(|| format!("not a server error: {error}"))
}

pub fn catalog_checks_pass(cluster: &Cluster, db: &str) {
    cluster
        .psql(db, "CREATE EXTENSION IF NOT EXISTS amcheck")
        .unwrap();
    // Every catalog btree, checked with its heap (heapallindexed), and every catalog heap.
    let checked = cluster
        .psql(
            db,
            "SELECT count(bt_index_parent_check(oid, true)) FROM (SELECT c.oid FROM pg_class c \
             WHERE c.relkind = 'i' AND c.oid < 16384 AND c.relam = 403 AND c.relpersistence = 'p' OFFSET 0) s",
        )
        .unwrap();
    assert!(
        checked.trim().parse::<i64>().unwrap() > 100,
        "checked {checked} catalog indexes"
    );
    let problems = rows(
        cluster,
        db,
        "SELECT s.relname || ': ' || v.msg FROM (SELECT c.oid, c.relname FROM pg_class c \
         WHERE c.relkind IN ('r', 't') AND c.oid < 16384 AND c.relpersistence = 'p' OFFSET 0) s, \
         LATERAL verify_heapam(s.oid) v",
    );
    assert!(problems.is_empty(), "verify_heapam on {db}: {problems:?}");
}

/// Polls `done` every 100 ms until it holds, failing after `timeout`.
pub fn wait_until(what: &str, timeout: std::time::Duration, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + timeout;
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Waits until `source`'s pin is held by its holder, and returns the
/// holder's pid (asked in `source`, which has the extension).
pub fn holder_of(cluster: &Cluster, source: &str) -> String {
    let query = format!(
        "SELECT holder_pid FROM cow.pins WHERE source = '{source}' AND scope = 'source-only'"
    );
    let mut pid = String::new();
    wait_until(
        &format!("the pin holder of {source}"),
        std::time::Duration::from_secs(30),
        || {
            pid = cluster
                .psql(source, &query)
                .map(|o| o.trim().to_string())
                .unwrap_or_default();
            !pid.is_empty()
        },
    );
    pid
}

/// VACUUM (VERBOSE) of one table: (removed, dead but not yet removable) of
/// the table itself (its TOAST table, reported after it, is left out).
pub fn vacuum_counts(cluster: &Cluster, db: &str, table: &str) -> (u64, u64) {
    let counts = cluster.vacuum_verbose(db, table).unwrap();
    *counts
        .first()
        .unwrap_or_else(|| panic!("no tuple counts in VACUUM VERBOSE of {table}"))
}

/// TPC-B's invariant: every transaction adds its delta to one account, one
/// teller, one branch and the history.
pub fn tpcb_sums(cluster: &Cluster, db: &str) -> Vec<String> {
    rows(
        cluster,
        db,
        "SELECT (SELECT sum(abalance) FROM pgbench_accounts), (SELECT sum(tbalance) FROM pgbench_tellers), \
         (SELECT sum(bbalance) FROM pgbench_branches), (SELECT coalesce(sum(delta), 0) FROM pgbench_history)",
    )
}

pub fn assert_tpcb_invariant(cluster: &Cluster, db: &str) {
    let sums = tpcb_sums(cluster, db);
    let values: Vec<&str> = sums[0].split('|').collect();
    assert!(
        values.iter().all(|v| *v == values[0]),
        "TPC-B sums in {db}: {sums:?}"
    );
}
