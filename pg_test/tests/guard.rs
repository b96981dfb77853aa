//! The source guard: while a clone exists, its source refuses every command
//! that would drop or rewrite storage the clone reads, and nothing else.

mod common;

use common::{rows, sqlstate};
use pg_test::{start_test_cluster, Cluster};

fn cluster_with_clone() -> Cluster {
    let cluster = start_test_cluster(|_| {}).unwrap();
    cluster.psql("postgres", "CREATE DATABASE prod").unwrap();
    cluster
        .psql(
            "prod",
            "CREATE EXTENSION cowclone; \
             CREATE ROLE owner_role; \
             CREATE TABLE t (id int PRIMARY KEY, v int, note text); \
             INSERT INTO t SELECT g, g, repeat('x', 3000) FROM generate_series(1, 1000) g; \
             CREATE INDEX t_v ON t (v); \
             CREATE MATERIALIZED VIEW m AS SELECT id FROM t WHERE id < 10; \
             CREATE SCHEMA side; CREATE TABLE side.s (i int); \
             CREATE TABLE owned (i int); ALTER TABLE owned OWNER TO owner_role;",
        )
        .unwrap();
    cluster
        .psql("prod", "SELECT cow.clone('prod', 'staging')")
        .unwrap();
    cluster
}

/// Every command that would drop or rewrite storage the clone reads; the
/// drops come last because the second half of the test runs them for real.
const REFUSED: [&str; 16] = [
    "TRUNCATE t",
    "VACUUM FULL t",
    "CLUSTER t USING t_pkey",
    "REINDEX TABLE t",
    "REINDEX INDEX t_v",
    "ALTER TABLE t ALTER COLUMN v TYPE bigint",
    "ALTER TABLE t SET UNLOGGED",
    "REINDEX SCHEMA public",
    "REINDEX INDEX CONCURRENTLY t_v",
    "REFRESH MATERIALIZED VIEW m",
    "ALTER TABLE t ADD COLUMN stamp timestamptz DEFAULT clock_timestamp()",
    "DROP INDEX t_v",
    "DROP MATERIALIZED VIEW m",
    "DROP SCHEMA side CASCADE",
    "DROP OWNED BY owner_role",
    "DROP TABLE t CASCADE",
];

/// The clone answers as the source did at the clone point, through its
/// table, its TOAST, both indexes and the materialized view.
fn clone_still_answers(cluster: &Cluster) {
    for settings in [
        "",
        "SET enable_seqscan = off;",
        "SET enable_seqscan = off; SET enable_bitmapscan = off;",
    ] {
        assert_eq!(
            rows(
                cluster,
                "staging",
                &format!("{settings} SELECT count(*), sum(v), sum(length(note)) FROM t WHERE v > 0 AND id > 0")
            ),
            ["1000|500500|3000000"],
            "{settings}"
        );
    }
    assert_eq!(
        rows(
            cluster,
            "staging",
            "SELECT string_agg(id::text, ',' ORDER BY id) FROM m"
        ),
        ["1,2,3,4,5,6,7,8,9"]
    );
}

#[test]
fn storage_a_clone_reads_cannot_be_dropped_or_rewritten() {
    let cluster = cluster_with_clone();
    let catalog = "SELECT oid, relname, relfilenode FROM pg_class WHERE relname IN ('t', 't_v', 'm', 's', 'owned') ORDER BY 1";
    let before = rows(&cluster, "prod", catalog);
    let mut client = cluster.connect("prod").unwrap();
    for sql in REFUSED {
        let Err(error) = client.batch_execute(sql) else {
            panic!("{sql} was not refused");
        };
        assert_eq!(sqlstate(&error), "2BP01", "{sql}: {error}");
        let db = error.as_db_error().unwrap();
        assert!(
            db.message().contains("clone \"staging\" still reads it"),
            "{sql}: {}",
            db.message()
        );
        assert!(
            db.hint()
                .unwrap_or_default()
                .contains("DROP DATABASE staging"),
            "{sql}"
        );
    }
    assert_eq!(
        rows(&cluster, "prod", catalog),
        before,
        "every refused command was rolled back"
    );
    assert_eq!(
        rows(&cluster, "prod", "SELECT count(*), sum(v) FROM t"),
        ["1000|500500"]
    );
    clone_still_answers(&cluster);

    // The source itself cannot go either.
    let mut admin = cluster.connect("postgres").unwrap();
    for sql in ["DROP DATABASE prod", "DROP DATABASE prod WITH (FORCE)"] {
        drop(client);
        let error = admin.batch_execute(sql).unwrap_err();
        assert_eq!(sqlstate(&error), "2BP01", "{sql}: {error}");
        assert!(
            error
                .as_db_error()
                .unwrap()
                .message()
                .contains("\"staging\""),
            "{error}"
        );
        client = cluster.connect("prod").unwrap();
    }
    clone_still_answers(&cluster);

    // Once the clone is gone, the same commands work.
    admin.batch_execute("DROP DATABASE staging").unwrap();
    for sql in REFUSED {
        client
            .batch_execute(sql)
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    drop(client);
    admin.batch_execute("DROP DATABASE prod").unwrap();
}

#[test]
fn everything_else_keeps_working_in_the_source() {
    let cluster = cluster_with_clone();
    let mut client = cluster.connect("prod").unwrap();
    for sql in [
        "INSERT INTO t VALUES (1001, 1001, 'new')",
        "UPDATE t SET v = v + 1 WHERE id <= 10",
        "DELETE FROM t WHERE id = 1000",
        "CREATE TABLE fresh (i int PRIMARY KEY)",
        "INSERT INTO fresh SELECT generate_series(1, 100)",
        "CREATE INDEX fresh_i ON fresh (i)",
        "REINDEX TABLE fresh",
        "TRUNCATE fresh",
        "VACUUM FULL fresh",
        "DROP TABLE fresh",
        "CREATE INDEX t_note ON t (note)",
        "DROP INDEX t_note",
        "ALTER TABLE t ADD COLUMN extra int",
        "ALTER TABLE t DROP COLUMN extra",
        "COMMENT ON TABLE t IS 'still here'",
    ] {
        client
            .batch_execute(sql)
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    client.batch_execute("VACUUM t").unwrap();
    client.batch_execute("ANALYZE t").unwrap();
    assert_eq!(rows(&cluster, "prod", "SELECT count(*) FROM t"), ["1000"]);
    clone_still_answers(&cluster);
    // DDL inside the clone only touches the clone's own files.
    let mut clone = cluster.connect("staging").unwrap();
    clone.batch_execute("DROP TABLE side.s").unwrap();
    assert_eq!(rows(&cluster, "prod", "SELECT count(*) FROM side.s"), ["0"]);
}
