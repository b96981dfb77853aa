//! Reading through to the source: every query in a clone answers exactly as
//! the source did at the clone point, whatever plan PostgreSQL picks and
//! whatever the source does afterwards.

use std::collections::BTreeMap;

mod common;

use common::{
    app_tables as tables, contents, rich_schema, rows, run_each, sqlstate, INDEXED_QUERIES,
};
use pg_test::{start_test_cluster, Cluster};

/// Plan settings under which every query must give the same rows.
const PLAN_SHAPES: [(&str, &str); 5] = [
    ("default", ""),
    ("no seqscan", "SET enable_seqscan = off;"),
    (
        "index scans only",
        "SET enable_seqscan = off; SET enable_bitmapscan = off; SET enable_indexonlyscan = off;",
    ),
    (
        "bitmap scans only",
        "SET enable_seqscan = off; SET enable_indexscan = off; SET enable_indexonlyscan = off;",
    ),
    (
        "index-only scans preferred",
        "SET enable_seqscan = off; SET enable_bitmapscan = off;",
    ),
];

/// Every table, matview and partitioned table of the source's `app` schema.
fn query_rows(cluster: &Cluster, db: &str, settings: &str, sql: &str) -> Vec<String> {
    rows(cluster, db, &format!("{settings} {sql}"))
}

fn plan(cluster: &Cluster, db: &str, settings: &str, sql: &str) -> String {
    rows(
        cluster,
        db,
        &format!("{settings} EXPLAIN (COSTS OFF) {sql}"),
    )
    .join("\n")
}

/// Churns the source hard after the clone point: deletes, updates (HOT and
/// not, TOASTed values too), inserts, VACUUM in between and after.
const CHURN: &str = "
    DELETE FROM app.everything WHERE id % 5 = 0;
    UPDATE app.everything SET label = label || ' changed' WHERE id % 3 = 0;
    UPDATE app.everything SET exact = exact + 1 WHERE id % 7 = 0;
    INSERT INTO app.everything (label, docb, words) SELECT 'new ' || i, jsonb_build_object('i', i), array['w' || i]
        FROM generate_series(1, 300) i;
    UPDATE app.everything SET docb = jsonb_build_object('blob', repeat('y', 30000)),
        raw = decode(repeat('cd', 40000), 'hex') WHERE label LIKE 'big %';
    VACUUM app.everything;
    DELETE FROM app.events WHERE id % 2 = 0;
    INSERT INTO app.events SELECT i, date '2024-06-01' + i, 'late ' || i FROM generate_series(1000, 1100) i;
    UPDATE app.child SET parent_id = 2 WHERE id < 20;
    DELETE FROM app.car WHERE seats = 2;
    UPDATE app.scratch SET v = 'uno';
    UPDATE app.everything SET flag = NOT flag, pt = point(0, 0) WHERE id % 2 = 1;
    VACUUM;
    UPDATE app.everything SET regular = regular + 100;
    VACUUM;
";

#[test]
fn every_table_and_every_plan_answers_as_the_source_did_at_the_clone_point() {
    let cluster = start_test_cluster(|_| {}).unwrap();
    cluster.psql("postgres", "CREATE DATABASE prod").unwrap();
    cluster.psql("prod", "CREATE EXTENSION cowclone").unwrap();
    cluster.psql_file("prod", &rich_schema()).unwrap();

    let tables = tables(&cluster, "prod");
    assert!(tables.len() >= 12, "{tables:?}");
    let recorded: BTreeMap<&String, Vec<String>> = tables
        .iter()
        .map(|t| (t, contents(&cluster, "prod", t, "")))
        .collect();
    let answers: Vec<Vec<String>> = INDEXED_QUERIES
        .iter()
        .map(|q| query_rows(&cluster, "prod", "", q))
        .collect();
    assert!(
        answers.iter().all(|a| !a.is_empty()),
        "every indexed query finds rows in the source: {answers:?}"
    );

    cluster
        .psql("prod", "SELECT cow.clone('prod', 'staging')")
        .unwrap();
    run_each(&cluster, "prod", CHURN);
    for table in [
        "app.everything",
        "app.events",
        "app.events_2024",
        "app.child",
        "app.car",
        "app.vehicle",
        "app.scratch",
    ] {
        assert_ne!(
            contents(&cluster, "prod", table, ""),
            recorded[&table.to_string()],
            "the churn changed {table} in the source"
        );
    }

    for (shape, settings) in PLAN_SHAPES {
        for table in &tables {
            assert_eq!(
                contents(&cluster, "staging", table, settings),
                recorded[table],
                "{table} in the clone ({shape})"
            );
        }
        for (query, answer) in INDEXED_QUERIES.iter().zip(&answers) {
            assert_eq!(
                &query_rows(&cluster, "staging", settings, query),
                answer,
                "{query} in the clone ({shape})"
            );
        }
    }

    // The toggles really change plans: each scan kind is used somewhere.
    let plans: String = PLAN_SHAPES
        .iter()
        .flat_map(|(_, settings)| {
            INDEXED_QUERIES
                .iter()
                .map(|q| plan(&cluster, "staging", settings, q))
        })
        .collect::<Vec<_>>()
        .join("\n");
    for node in [
        "Seq Scan",
        "Index Scan",
        "Index Only Scan",
        "Bitmap Heap Scan",
    ] {
        assert!(plans.contains(node), "no {node} in the clone's plans");
    }
    for am in ["btree", "hash", "gin", "gist", "spgist", "brin"] {
        let index_names = rows(
            &cluster,
            "staging",
            &format!(
                "SELECT c.relname FROM pg_class c JOIN pg_am a ON a.oid = c.relam \
                 WHERE a.amname = 'cow_{am}' AND c.relnamespace = 'app'::regnamespace"
            ),
        );
        assert!(
            index_names.iter().any(|name| plans.contains(name.as_str())),
            "no plan used a {am} index ({index_names:?})"
        );
    }
}

#[test]
fn rows_the_clone_point_sees_survive_deletion_and_vacuum_in_the_source() {
    let cluster = start_test_cluster(|_| {}).unwrap();
    cluster.psql("postgres", "CREATE DATABASE prod").unwrap();
    run_each(
        &cluster,
        "prod",
        "CREATE EXTENSION cowclone; \
         CREATE TABLE t (i int PRIMARY KEY, pad text) WITH (autovacuum_enabled = off); \
         INSERT INTO t SELECT i, repeat('x', 100) FROM generate_series(1, 1000) i; \
         DELETE FROM t WHERE i <= 100; VACUUM t;",
    );
    cluster
        .psql("prod", "SELECT cow.clone('prod', 'staging')")
        .unwrap();
    run_each(
        &cluster,
        "prod",
        "DELETE FROM t WHERE i <= 300; VACUUM t; INSERT INTO t SELECT i, 'new' FROM generate_series(1, 50) i; VACUUM t;",
    );
    let expected: Vec<String> = (101..=1000).map(|i| i.to_string()).collect();
    for settings in ["", "SET enable_seqscan = off; SET enable_bitmapscan = off;"] {
        assert_eq!(
            rows(
                &cluster,
                "staging",
                &format!("{settings} SELECT i FROM t ORDER BY i")
            ),
            expected,
            "{settings}"
        );
        assert_eq!(
            rows(
                &cluster,
                "staging",
                &format!("{settings} SELECT count(*), min(i) FROM t WHERE i BETWEEN 1 AND 400")
            ),
            ["300|101"],
            "{settings}"
        );
    }
    // Source rows carry TIDs in the source TID space.
    let first = rows(&cluster, "staging", "SELECT ctid FROM t WHERE i = 101");
    assert!(first[0].starts_with("(214748364"), "{first:?}");
    assert_eq!(
        rows(
            &cluster,
            "staging",
            &format!("SELECT i FROM t WHERE ctid = '{}'", first[0])
        ),
        ["101"]
    );
    assert_eq!(
        rows(
            &cluster,
            "staging",
            "SELECT count(*) FROM t WHERE ctid = '(0,1)'"
        ),
        ["0"],
        "the local heap is empty"
    );
}

#[test]
fn cursors_samples_analyze_explain_large_objects_and_parallel_plans_work() {
    let cluster = start_test_cluster(|_| {}).unwrap();
    cluster.psql("postgres", "CREATE DATABASE prod").unwrap();
    cluster
        .psql(
            "prod",
            "CREATE EXTENSION cowclone; \
             CREATE TABLE t (i int PRIMARY KEY, pad text); \
             INSERT INTO t SELECT i, repeat('x', 200) FROM generate_series(1, 20000) i; \
             SELECT lo_from_bytea(4242, 'a large object'); ANALYZE t;",
        )
        .unwrap();
    cluster
        .psql("prod", "SELECT cow.clone('prod', 'staging')")
        .unwrap();

    // The same statements answer the same in the source (unchanged since the clone point) and the clone.
    let cursor = "BEGIN; DECLARE c SCROLL CURSOR FOR SELECT i FROM t; \
        FETCH 3 FROM c; FETCH BACKWARD 2 FROM c; FETCH LAST FROM c; FETCH BACKWARD 3 FROM c; \
        FETCH ABSOLUTE 7000 FROM c; FETCH RELATIVE -2 FROM c; MOVE LAST IN c; FETCH NEXT FROM c; \
        FETCH PRIOR FROM c; COMMIT;";
    let samples = "SELECT count(*), sum(i) FROM t TABLESAMPLE SYSTEM (30) REPEATABLE (7); \
        SELECT count(*), sum(i) FROM t TABLESAMPLE BERNOULLI (10) REPEATABLE (3);";
    let tid_range =
        "SELECT count(*) FROM t WHERE ctid >= '(2147483648,0)' AND ctid < '(2147483700,0)'";
    assert_eq!(
        rows(&cluster, "staging", cursor),
        rows(&cluster, "prod", cursor)
    );
    let in_source = rows(&cluster, "prod", samples);
    assert_eq!(rows(&cluster, "staging", samples), in_source);
    assert_ne!(in_source[0], "0|", "the sample found rows");
    let in_range = rows(&cluster, "staging", tid_range);
    let per_page = rows(
        &cluster,
        "prod",
        "SELECT count(*) FROM t WHERE ctid < '(52,0)'",
    );
    assert_eq!(
        in_range, per_page,
        "TID ranges address the source TID space"
    );

    // A merge join marks and restores its inner index scan.
    let merge = "SET enable_hashjoin = off; SET enable_nestloop = off; SET enable_seqscan = off; \
        SET enable_sort = off; SELECT count(*), sum(a.i) FROM t a JOIN t b ON a.i = b.i - 1";
    let merge_plan = rows(
        &cluster,
        "staging",
        &merge.replace("SELECT count", "EXPLAIN SELECT count"),
    )
    .join("\n");
    assert!(merge_plan.contains("Merge Join"), "{merge_plan}");
    assert_eq!(
        rows(&cluster, "staging", merge),
        rows(&cluster, "prod", merge)
    );

    // ANALYZE in the clone measures the rows the clone sees.
    cluster.psql("staging", "ANALYZE t").unwrap();
    assert_eq!(
        rows(
            &cluster,
            "staging",
            "SELECT reltuples::int, relpages > 0 FROM pg_class WHERE relname = 't'"
        ),
        ["20000|t"]
    );
    assert_eq!(
        rows(
            &cluster,
            "staging",
            "SELECT count(*) > 0 FROM pg_stats WHERE tablename = 't' AND attname = 'i'"
        ),
        ["t"]
    );

    let explained = rows(
        &cluster,
        "staging",
        "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) SELECT * FROM t WHERE i < 100",
    )
    .join("\n");
    assert!(explained.contains("actual rows=99"), "{explained}");
    // An index scan reports its searches (18+) through the wrapper scan,
    // which hands its instrumentation to the scan of the source's index.
    let explained = rows(
        &cluster,
        "staging",
        "SET enable_seqscan = off; SET enable_bitmapscan = off; \
         EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) SELECT * FROM t WHERE i = 42",
    )
    .join("\n");
    assert!(explained.contains("Index Scan using t_pkey"), "{explained}");
    assert!(explained.contains("actual rows=1"), "{explained}");
    if cluster.pg.major >= 18 {
        assert!(explained.contains("Index Searches: 1"), "{explained}");
    }

    // Large objects live in a catalog, which the clone copied as of the clone point.
    cluster.psql("prod", "SELECT lo_unlink(4242)").unwrap();
    assert_eq!(
        rows(
            &cluster,
            "staging",
            "SELECT convert_from(lo_get(4242), 'UTF8')"
        ),
        ["a large object"]
    );

    // Parallel plans leave shadowed tables to a single process, with the same answer.
    let parallel = "SET parallel_setup_cost = 0; SET parallel_tuple_cost = 0; \
        SET min_parallel_table_scan_size = 0; SET max_parallel_workers_per_gather = 2;";
    let plan = rows(
        &cluster,
        "staging",
        &format!("{parallel} EXPLAIN (COSTS OFF) SELECT count(*) FROM t"),
    )
    .join("\n");
    assert!(!plan.contains("Parallel"), "{plan}");
    assert_eq!(
        rows(
            &cluster,
            "staging",
            &format!("{parallel} SELECT count(*), sum(i) FROM t")
        ),
        ["20000|200010000"]
    );
}

#[test]
fn rewrites_of_shadowed_tables_refuse_and_reads_leave_the_source_untouched() {
    let cluster = start_test_cluster(|_| {}).unwrap();
    cluster.psql("postgres", "CREATE DATABASE prod").unwrap();
    cluster
        .psql(
            "prod",
            "CREATE EXTENSION cowclone; CREATE EXTENSION pageinspect; \
             CREATE TABLE t (i int PRIMARY KEY, v text) WITH (autovacuum_enabled = off); \
             INSERT INTO t SELECT i, 'v' FROM generate_series(1, 2000) i; \
             DELETE FROM t WHERE i % 4 = 0;",
        )
        .unwrap();
    // Rows dead to everyone (deleted before the clone point, never read
    // since): any read in the source would prune them.
    cluster
        .psql("prod", "SELECT cow.clone('prod', 'staging')")
        .unwrap();
    cluster
        .psql("prod", "UPDATE t SET v = 'w' WHERE i % 2 = 0")
        .unwrap();
    let line_pointers = "SELECT string_agg(format('%s:%s:%s:%s:%s', p, lp, lp_flags, t_xmax, t_ctid), ',') \
        FROM generate_series(0, pg_relation_size('t') / 8192 - 1) p, heap_page_items(get_raw_page('t', p::int))";
    let before = rows(&cluster, "prod", line_pointers);

    for settings in ["", "SET enable_seqscan = off;"] {
        assert_eq!(
            rows(
                &cluster,
                "staging",
                &format!("{settings} SELECT count(*), count(*) FILTER (WHERE v = 'v') FROM t WHERE i > 0")
            ),
            ["1500|1500"]
        );
    }
    assert_eq!(
        rows(&cluster, "prod", line_pointers),
        before,
        "reading in the clone pruned nothing in the source"
    );

    let mut clone = cluster.connect("staging").unwrap();
    // Rewriting a shadowed table in place would judge source rows for every
    // snapshot still open in the clone: refused (writes are tested in write.rs).
    for sql in ["VACUUM FULL t", "CLUSTER t USING t_pkey"] {
        let error = clone.batch_execute(sql).unwrap_err();
        assert_eq!(sqlstate(&error), "0A000", "{sql}: {error}");
    }
    assert_eq!(
        rows(&cluster, "staging", "SELECT count(*) FROM t"),
        ["1500"]
    );
    assert_eq!(
        rows(
            &cluster,
            "prod",
            "SELECT count(*), count(*) FILTER (WHERE v = 'w') FROM t"
        ),
        ["1500|500"]
    );
}

#[test]
fn a_dump_of_a_clone_restores_into_a_plain_database_that_works_like_heap() {
    let cluster = start_test_cluster(|_| {}).unwrap();
    cluster.psql("postgres", "CREATE DATABASE prod").unwrap();
    cluster.psql("prod", "CREATE EXTENSION cowclone").unwrap();
    cluster.psql_file("prod", &rich_schema()).unwrap();
    let tables = tables(&cluster, "prod");
    cluster
        .psql("prod", "SELECT cow.clone('prod', 'staging')")
        .unwrap();

    // pg_dump reads every row through the clone; the dump names cowclone's
    // access methods, and restoring it elsewhere gives plain heap behaviour.
    let dump = cluster.dir.join("staging.dump");
    let dumped = cluster
        .client_command("pg_dump", "staging")
        .args(["-Fc", "-f"])
        .arg(&dump)
        .output()
        .unwrap();
    assert!(
        dumped.status.success(),
        "{}",
        String::from_utf8_lossy(&dumped.stderr)
    );
    cluster
        .psql("postgres", "CREATE DATABASE restored")
        .unwrap();
    let restored = cluster
        .client_command("pg_restore", "restored")
        .args(["--exit-on-error", "-d", "restored"])
        .arg(&dump)
        .output()
        .unwrap();
    assert!(
        restored.status.success(),
        "{}",
        String::from_utf8_lossy(&restored.stderr)
    );
    assert_eq!(
        rows(
            &cluster,
            "restored",
            "SELECT a.amname FROM pg_class c JOIN pg_am a ON a.oid = c.relam WHERE c.oid = 'app.everything'::regclass"
        ),
        ["cow"]
    );
    for table in &tables {
        assert_eq!(
            contents(&cluster, "restored", table, ""),
            contents(&cluster, "prod", table, ""),
            "{table} restored from the clone's dump"
        );
    }
    // Writes, index builds (parallel too), rewrites and vacuum work as on heap.
    run_each(
        &cluster,
        "restored",
        "UPDATE app.everything SET small = -1 WHERE id < 50; \
         DELETE FROM app.everything WHERE id % 10 = 0; \
         INSERT INTO app.everything (label) VALUES ('after restore'); \
         INSERT INTO app.parent VALUES (100) ON CONFLICT (id) DO NOTHING; \
         SELECT * FROM app.child WHERE id = 2 FOR UPDATE; \
         CREATE INDEX everything_small ON app.everything (small); \
         CREATE INDEX CONCURRENTLY everything_exact ON app.everything (exact); \
         VACUUM app.everything; VACUUM FULL app.child; CLUSTER app.parent USING parent_pkey; \
         TRUNCATE app.scratch; REFRESH MATERIALIZED VIEW app.mood_counts; ANALYZE;",
    );
    // A parallel index build (workers scan the table through heapam too).
    cluster
        .psql(
            "restored",
            "SET min_parallel_table_scan_size = 0; SET max_parallel_maintenance_workers = 2; \
             SET parallel_setup_cost = 0; CREATE INDEX everything_big ON app.everything (big)",
        )
        .unwrap();
    let expected = rows(
        &cluster,
        "prod",
        "SELECT count(*) - count(*) FILTER (WHERE id % 10 = 0) + 1, \
         count(*) FILTER (WHERE id < 50 AND id % 10 <> 0) FROM app.everything",
    );
    for settings in ["", "SET enable_seqscan = off;"] {
        assert_eq!(
            rows(
                &cluster,
                "restored",
                &format!("{settings} SELECT count(*), count(*) FILTER (WHERE small = -1) FROM app.everything")
            ),
            expected,
            "{settings}"
        );
    }
    cluster
        .psql("restored", "CREATE EXTENSION IF NOT EXISTS amcheck")
        .unwrap();
    assert_eq!(
        rows(
            &cluster,
            "restored",
            "SELECT count(bt_index_check(i.indexrelid, true)) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid \
             WHERE c.relam = 403 AND i.indrelid = 'app.everything'::regclass"
        ),
        ["6"]
    );
}

#[test]
fn tables_created_in_a_clone_with_cowclones_access_methods_are_plain_heaps() {
    let cluster = start_test_cluster(|_| {}).unwrap();
    cluster.psql("postgres", "CREATE DATABASE prod").unwrap();
    cluster.psql("prod", "CREATE EXTENSION cowclone").unwrap();
    cluster
        .psql("prod", "SELECT cow.clone('prod', 'staging')")
        .unwrap();
    run_each(
        &cluster,
        "staging",
        "CREATE TABLE mine (i int PRIMARY KEY, v text) USING cow; \
         CREATE INDEX mine_v ON mine USING cow_btree (v); \
         INSERT INTO mine SELECT i, 'v' || i FROM generate_series(1, 5000) i; \
         UPDATE mine SET v = 'changed' WHERE i <= 10; DELETE FROM mine WHERE i > 4000; \
         VACUUM mine; ANALYZE mine",
    );
    for settings in ["", "SET enable_seqscan = off; SET enable_bitmapscan = off;"] {
        assert_eq!(
            rows(
                &cluster,
                "staging",
                &format!("{settings} SELECT count(*) FROM mine WHERE v = 'changed'")
            ),
            ["10"]
        );
        assert_eq!(
            rows(
                &cluster,
                "staging",
                &format!("{settings} SELECT count(*) FROM mine WHERE i > 0")
            ),
            ["4000"]
        );
    }
    let error = cluster
        .connect("staging")
        .unwrap()
        .batch_execute("INSERT INTO mine VALUES (1, 'duplicate')")
        .unwrap_err();
    assert_eq!(sqlstate(&error), "23505", "{error}");
}

#[test]
fn catalog_only_ddl_on_a_shadowed_table_changes_the_clone_alone() {
    let cluster = start_test_cluster(|_| {}).unwrap();
    cluster.psql("postgres", "CREATE DATABASE prod").unwrap();
    cluster
        .psql(
            "prod",
            "CREATE EXTENSION cowclone; CREATE TABLE t (i int PRIMARY KEY, gone text, v text); \
             INSERT INTO t SELECT i, 'x', 'v' || i FROM generate_series(1, 300) i",
        )
        .unwrap();
    cluster
        .psql("prod", "SELECT cow.clone('prod', 'staging')")
        .unwrap();
    run_each(
        &cluster,
        "staging",
        "ALTER TABLE t ADD COLUMN note text DEFAULT 'new'; ALTER TABLE t DROP COLUMN gone; \
         ALTER TABLE t RENAME COLUMN v TO value; CREATE VIEW t_view AS SELECT i, value, note FROM t",
    );
    for settings in ["", "SET enable_seqscan = off;"] {
        assert_eq!(
            rows(
                &cluster,
                "staging",
                &format!(
                    "{settings} SELECT i, value, note FROM t_view WHERE i IN (1, 300) ORDER BY i"
                )
            ),
            ["1|v1|new", "300|v300|new"]
        );
    }
    assert_eq!(
        rows(&cluster, "prod", "SELECT * FROM t WHERE i = 1"),
        ["1|x|v1"],
        "the source is untouched"
    );
}
