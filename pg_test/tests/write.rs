//! Writing in a clone: every write a heap table takes, a shadowed table
//! takes with the same result, the same waits and the same errors, and the
//! source never changes.
//!
//! The oracle for results is a plain copy of the source
//! (`CREATE DATABASE ... TEMPLATE`) given the same statements: every table
//! of the clone must then hold exactly what the copy holds.

use std::collections::BTreeMap;
use std::thread;
use std::time::{Duration, Instant};

mod common;

use common::{cloned_source, contents, rich_schema, rows, sqlstate};
use pg_test::{start_test_cluster, Cluster};

fn tables(cluster: &Cluster, db: &str) -> Vec<String> {
    rows(
        cluster,
        db,
        "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname IN ('app', 'public') AND c.relkind IN ('r', 'm', 'p') ORDER BY 1",
    )
}

fn all_contents(cluster: &Cluster, db: &str) -> BTreeMap<String, Vec<String>> {
    tables(cluster, db)
        .into_iter()
        .map(|t| {
            let c = contents(cluster, db, &t, "");
            (t, c)
        })
        .collect()
}

const PLAN_SHAPES: [(&str, &str); 4] = [
    ("default", ""),
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

/// Index-driven reads whose answers must agree between clone and copy.
const INDEXED_QUERIES: [&str; 10] = [
    "SELECT id, label, regular FROM app.everything WHERE id BETWEEN 10 AND 90 ORDER BY id",
    "SELECT id FROM app.everything ORDER BY id DESC LIMIT 40",
    "SELECT id, label FROM app.everything WHERE label = 'label 44 w' ORDER BY id",
    "SELECT id FROM app.everything WHERE docb @> '{\"i\": 12}' ORDER BY id",
    "SELECT id FROM app.everything WHERE words @> array['c17'] ORDER BY id",
    "SELECT id FROM app.everything WHERE box_col && box(point(20, 20), point(30, 30)) ORDER BY id",
    "SELECT id FROM app.everything WHERE pt IS NOT NULL ORDER BY pt <-> point(100, -100), id LIMIT 15",
    "SELECT id FROM app.everything WHERE day BETWEEN date '2024-02-01' AND date '2024-03-01' ORDER BY id",
    "SELECT c.id, p.id FROM app.child c JOIN app.parent p ON p.id = c.parent_id ORDER BY 1, 2",
    "SELECT id, at FROM app.events WHERE at >= date '2025-01-01' ORDER BY id",
];

/// The same writes, run in the clone and in the plain copy. Deterministic
/// (no now() or random()), and every kind of write: updates that change
/// indexed columns and ones that do not, TOAST values, deletes, inserts,
/// second writes to rows already copied, FKs both ways with cascades,
/// cross-partition moves, MERGE, ON CONFLICT, COPY FROM, inheritance,
/// unlogged tables, generated columns and triggers (app.touch).
const WRITES: [&str; 22] = [
    "UPDATE app.everything SET label = label || ' w' WHERE id % 4 = 0",
    "UPDATE app.everything SET exact = exact * 2 WHERE id % 6 = 1",
    "UPDATE app.everything SET docb = jsonb_build_object('blob', repeat('z', 20000)), raw = decode(repeat('ef', 30000), 'hex') WHERE id % 50 = 3 OR label LIKE 'big 2%'",
    "DELETE FROM app.everything WHERE id % 9 = 0",
    "INSERT INTO app.everything (label, docb, words, day) SELECT 'clone ' || i, jsonb_build_object('i', i), array['c' || i], date '2024-02-10' + i FROM generate_series(1, 200) i",
    "UPDATE app.everything SET regular = regular + 1000 WHERE id % 4 = 0 OR label LIKE 'clone 1%'",
    "UPDATE app.everything SET pt = point(id, id), box_col = box(point(25, 25), point(26, 26)) WHERE id % 10 = 1",
    "DELETE FROM app.everything WHERE label LIKE 'clone 3%'",
    "INSERT INTO app.parent VALUES (1000), (1001)",
    "INSERT INTO app.child VALUES (5000, 1000), (5001, 4)",
    "DELETE FROM app.parent WHERE id IN (3, 1001)",
    "UPDATE app.child SET parent_id = 1000 WHERE id % 7 = 0",
    "UPDATE app.events SET at = date '2026-03-01' WHERE id IN (5, 6, 7)",
    "UPDATE app.events SET payload = payload || ' again' WHERE id % 10 = 0",
    "MERGE INTO app.child c USING (SELECT g AS id FROM generate_series(25, 40) g) s ON c.id = s.id \
     WHEN MATCHED AND s.id % 2 = 0 THEN DELETE WHEN MATCHED THEN UPDATE SET parent_id = 2 \
     WHEN NOT MATCHED THEN INSERT VALUES (s.id, 5)",
    "INSERT INTO app.parent VALUES (1), (5), (2000) ON CONFLICT (id) DO NOTHING",
    "INSERT INTO app.scratch VALUES (1, 'uno'), (2, 'dos') ON CONFLICT (k) DO UPDATE SET v = excluded.v || '!'",
    "INSERT INTO app.vehicle (id, wheels) VALUES (1, 3) ON CONFLICT (id) DO UPDATE SET wheels = app.vehicle.wheels + excluded.wheels",
    "UPDATE app.car SET seats = seats + 1",
    "COPY app.parent FROM PROGRAM 'seq 3000 3020'",
    "UPDATE app.everything SET label = label || ' x' WHERE id IN (SELECT id FROM app.everything WHERE id % 11 = 2 ORDER BY id FOR UPDATE)",
    "REFRESH MATERIALIZED VIEW app.mood_counts",
];

fn apply(cluster: &Cluster, db: &str) -> Vec<Vec<String>> {
    let mut client = cluster.connect(db).unwrap();
    let mut returned = Vec::new();
    for sql in WRITES {
        client
            .batch_execute(sql)
            .unwrap_or_else(|e| panic!("{db}: {sql}: {e}"));
    }
    // RETURNING gives the same rows.
    for sql in [
        "UPDATE app.everything SET small = 7 WHERE id % 13 = 5 RETURNING id, small, regular, loud",
        "DELETE FROM app.child WHERE id % 5 = 1 RETURNING *",
    ] {
        let mut answer: Vec<String> = client
            .simple_query(sql)
            .unwrap()
            .into_iter()
            .filter_map(|m| match m {
                postgres::SimpleQueryMessage::Row(r) => Some(
                    (0..r.len())
                        .map(|i| r.get(i).unwrap_or("NULL").to_string())
                        .collect::<Vec<_>>()
                        .join("|"),
                ),
                _ => None,
            })
            .collect();
        answer.sort();
        returned.push(answer);
    }
    returned
}

#[test]
fn every_write_gives_what_a_plain_copy_gives_and_the_source_never_changes() {
    let cluster = start_test_cluster(|_| {}).unwrap();
    cluster.psql("postgres", "CREATE DATABASE prod").unwrap();
    cluster.psql("prod", "CREATE EXTENSION cowclone").unwrap();
    cluster.psql_file("prod", &rich_schema()).unwrap();
    let source_before = all_contents(&cluster, "prod");
    assert!(source_before.len() >= 12, "{:?}", source_before.keys());
    cluster
        .psql("postgres", "CREATE DATABASE copy TEMPLATE prod")
        .unwrap();
    cluster
        .psql("prod", "SELECT cow.clone('prod', 'staging')")
        .unwrap();

    let in_clone = apply(&cluster, "staging");
    let in_copy = apply(&cluster, "copy");
    assert_eq!(in_clone, in_copy, "RETURNING answers");
    assert!(in_clone.iter().all(|a| !a.is_empty()));

    let tombstones = rows(
        &cluster,
        "staging",
        "SELECT kind, count(*) FROM cow.tombstone GROUP BY 1 ORDER BY 1",
    );
    assert!(
        tombstones.iter().any(|t| t.starts_with("d|"))
            && tombstones.iter().any(|t| t.starts_with("m|")),
        "{tombstones:?}"
    );

    for table in source_before.keys() {
        let expected = contents(&cluster, "copy", table, "");
        for (shape, settings) in PLAN_SHAPES {
            assert_eq!(
                contents(&cluster, "staging", table, settings),
                expected,
                "{table} under {shape}"
            );
        }
    }
    for query in INDEXED_QUERIES {
        let expected = rows(&cluster, "copy", query);
        assert!(!expected.is_empty(), "{query}");
        for (shape, settings) in PLAN_SHAPES {
            assert_eq!(
                rows(&cluster, "staging", &format!("{settings} {query}")),
                expected,
                "{query} under {shape}"
            );
        }
    }
    // Ordered scans merge the source's and the local part of the index.
    let plan = rows(
        &cluster,
        "staging",
        "SET enable_seqscan = off; SET enable_sort = off; EXPLAIN (COSTS OFF) SELECT id FROM app.everything ORDER BY id DESC LIMIT 40",
    )
    .join("\n");
    assert!(plan.contains("Index"), "{plan}");

    assert_eq!(
        all_contents(&cluster, "prod"),
        source_before,
        "the source is unchanged"
    );

    // Unique keys across both halves.
    let mut clone = cluster.connect("staging").unwrap();
    for (sql, state) in [
        ("INSERT INTO app.parent VALUES (7)", "23505"), // live source row
        ("INSERT INTO app.parent VALUES (1000)", "23505"), // local row
        ("UPDATE app.parent SET id = 9 WHERE id = 7", "23505"), // moving onto a source row
        ("INSERT INTO app.child VALUES (9000, 424242)", "23503"), // FK to nothing
        ("DELETE FROM app.parent WHERE id = 1000", ""), // cascades to local children
        ("UPDATE app.everything SET label = '' WHERE id = 1", "23514"),
        ("INSERT INTO app.parent VALUES (3)", ""), // its source row was deleted
        ("UPDATE app.parent SET id = 3000 WHERE id = 3", "23505"), // a local row
    ] {
        let result = clone.batch_execute(sql);
        match (state, result) {
            ("", Ok(())) => {}
            ("", Err(e)) => panic!("{sql}: {e}"),
            (state, Err(e)) => assert_eq!(sqlstate(&e), state, "{sql}: {e}"),
            (state, Ok(())) => panic!("{sql} succeeded, expected {state}"),
        }
    }
    assert_eq!(
        rows(
            &cluster,
            "staging",
            "SELECT count(*) FROM app.child WHERE parent_id = 1000"
        ),
        ["0"]
    );
    assert_eq!(
        all_contents(&cluster, "prod"),
        source_before,
        "the source is unchanged"
    );
}

/// Runs `sql` on its own connection in a thread; the result comes back
/// through the join handle.
fn in_background(
    cluster: &Cluster,
    db: &str,
    sql: &'static str,
) -> thread::JoinHandle<Result<Vec<String>, String>> {
    let mut client = cluster.connect(db).unwrap();
    thread::spawn(move || {
        client
            .simple_query(sql)
            .map(|messages| {
                messages
                    .into_iter()
                    .filter_map(|m| match m {
                        postgres::SimpleQueryMessage::Row(r) => {
                            Some(r.get(0).unwrap_or("NULL").to_string())
                        }
                        _ => None,
                    })
                    .collect()
            })
            .map_err(|e| format!("{}: {e}", sqlstate(&e)))
    })
}

/// Waits until some session of `db` waits for a lock.
fn until_waiting(cluster: &Cluster, db: &str) {
    let started = Instant::now();
    loop {
        let waiting = rows(
            cluster,
            "postgres",
            &format!("SELECT count(*) FROM pg_stat_activity WHERE datname = '{db}' AND wait_event_type = 'Lock'"),
        );
        if waiting != ["0"] {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "nobody waited for a lock"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn writers_of_one_row_wait_recheck_and_fail_as_heap_writers_do() {
    let cluster = cloned_source(
        "CREATE TABLE t (id int PRIMARY KEY, v int); \
         INSERT INTO t SELECT g, 0 FROM generate_series(1, 100) g; \
         CREATE TABLE child (id int PRIMARY KEY, t_id int REFERENCES t)",
    );
    let mut a = cluster.connect("staging").unwrap();

    // Compatible row locks on an unwritten source row do not wait for each
    // other (two foreign-key checks' FOR KEY SHARE); a conflicting one does.
    a.batch_execute("BEGIN; INSERT INTO child VALUES (1, 9)")
        .unwrap();
    let mut other = cluster.connect("staging").unwrap();
    other
        .batch_execute(
            "SET lock_timeout = '5s'; INSERT INTO child VALUES (2, 9); \
             SELECT * FROM t WHERE id = 9 FOR SHARE",
        )
        .unwrap();
    let error = other
        .batch_execute("SET lock_timeout = '200ms'; SELECT * FROM t WHERE id = 9 FOR UPDATE")
        .unwrap_err();
    assert_eq!(sqlstate(&error), "55P03", "{error}");
    a.batch_execute("COMMIT").unwrap();
    other
        .batch_execute("RESET lock_timeout; UPDATE t SET v = 0 WHERE id = 9")
        .unwrap();

    // READ COMMITTED: the second writer waits, then updates the newest version.
    a.batch_execute("BEGIN; UPDATE t SET v = v + 1 WHERE id = 1")
        .unwrap();
    let b = in_background(
        &cluster,
        "staging",
        "UPDATE t SET v = v + 10 WHERE id = 1 RETURNING v",
    );
    until_waiting(&cluster, "staging");
    a.batch_execute("COMMIT").unwrap();
    assert_eq!(b.join().unwrap(), Ok(vec!["11".to_string()]));

    // REPEATABLE READ: a row changed since the snapshot is a serialization failure.
    a.batch_execute("BEGIN; UPDATE t SET v = v + 1 WHERE id = 2")
        .unwrap();
    let b = in_background(
        &cluster,
        "staging",
        "BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM t; UPDATE t SET v = 5 WHERE id = 2; COMMIT",
    );
    until_waiting(&cluster, "staging");
    a.batch_execute("COMMIT").unwrap();
    let failure = b.join().unwrap().unwrap_err();
    assert!(failure.starts_with("40001"), "{failure}");

    // ... and SERIALIZABLE too; a rolled-back first writer lets it through.
    a.batch_execute("BEGIN; DELETE FROM t WHERE id = 3")
        .unwrap();
    let b = in_background(
        &cluster,
        "staging",
        "BEGIN ISOLATION LEVEL SERIALIZABLE; SELECT count(*) FROM t; UPDATE t SET v = 5 WHERE id = 3 RETURNING v; COMMIT",
    );
    until_waiting(&cluster, "staging");
    a.batch_execute("ROLLBACK").unwrap();
    assert_eq!(
        b.join().unwrap(),
        Ok(vec!["100".to_string(), "5".to_string()])
    );

    // A committed delete: READ COMMITTED finds nothing left to update.
    a.batch_execute("BEGIN; DELETE FROM t WHERE id = 4")
        .unwrap();
    let b = in_background(
        &cluster,
        "staging",
        "UPDATE t SET v = 9 WHERE id = 4 RETURNING v",
    );
    until_waiting(&cluster, "staging");
    a.batch_execute("COMMIT").unwrap();
    assert_eq!(b.join().unwrap(), Ok(vec![]));

    // Row locks: NOWAIT fails with 55P03, SKIP LOCKED skips, a plain lock waits.
    a.batch_execute("BEGIN; SELECT * FROM t WHERE id = 5 FOR UPDATE")
        .unwrap();
    let mut c = cluster.connect("staging").unwrap();
    let error = c
        .batch_execute("SELECT * FROM t WHERE id = 5 FOR UPDATE NOWAIT")
        .unwrap_err();
    assert_eq!(sqlstate(&error), "55P03", "{error}");
    assert_eq!(
        rows(
            &cluster,
            "staging",
            "SELECT count(*) FROM (SELECT * FROM t WHERE id IN (5, 6) FOR UPDATE SKIP LOCKED) s"
        ),
        ["1"]
    );
    let b = in_background(
        &cluster,
        "staging",
        "UPDATE t SET v = v + 1 WHERE id = 5 RETURNING v",
    );
    until_waiting(&cluster, "staging");
    a.batch_execute("UPDATE t SET v = 50 WHERE id = 5; COMMIT")
        .unwrap();
    assert_eq!(b.join().unwrap(), Ok(vec!["51".to_string()]));

    // A unique insert waits for a deleter of the source row with its key:
    // the deleter rolls back, so the insert fails; then one that commits.
    a.batch_execute("BEGIN; DELETE FROM t WHERE id = 7")
        .unwrap();
    let b = in_background(&cluster, "staging", "INSERT INTO t VALUES (7, 70)");
    until_waiting(&cluster, "staging");
    a.batch_execute("ROLLBACK").unwrap();
    let failure = b.join().unwrap().unwrap_err();
    assert!(failure.starts_with("23505"), "{failure}");
    a.batch_execute("BEGIN; DELETE FROM t WHERE id = 7")
        .unwrap();
    let b = in_background(
        &cluster,
        "staging",
        "INSERT INTO t VALUES (7, 70) RETURNING v",
    );
    until_waiting(&cluster, "staging");
    a.batch_execute("COMMIT").unwrap();
    assert_eq!(b.join().unwrap(), Ok(vec!["70".to_string()]));

    // SERIALIZABLE write skew over source rows read by index: one of the
    // two fails, as with heap.
    let skew = "SET enable_seqscan = off; SET enable_bitmapscan = off; \
                BEGIN ISOLATION LEVEL SERIALIZABLE; SELECT sum(v) FROM t WHERE id IN (10, 11);";
    a.batch_execute(skew).unwrap();
    c.batch_execute(skew).unwrap();
    a.batch_execute("UPDATE t SET v = v + 1 WHERE id = 10")
        .unwrap();
    let second = c.batch_execute("UPDATE t SET v = v + 1 WHERE id = 11");
    let first_commit = a.batch_execute("COMMIT");
    let second_commit = second.and_then(|()| c.batch_execute("COMMIT"));
    let failures: Vec<String> = [first_commit, second_commit]
        .into_iter()
        .filter_map(|r| r.err().map(|e| sqlstate(&e)))
        .collect();
    assert_eq!(failures, ["40001"], "exactly one of the two fails");
    let _ = c.batch_execute("ROLLBACK");

    assert_eq!(
        rows(
            &cluster,
            "staging",
            "SELECT string_agg(format('%s=%s', id, v), ',' ORDER BY id) FROM t WHERE id <= 7"
        ),
        ["1=11,2=1,3=5,5=51,6=0,7=70"]
    );
    assert_eq!(
        rows(&cluster, "prod", "SELECT count(*), sum(v) FROM t"),
        ["100|0"]
    );
}

fn pgbench(cluster: &Cluster, db: &str, args: &[&str]) -> String {
    let output = cluster
        .client_command("pgbench", db)
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "pgbench {args:?}: {text}");
    text
}

/// The TPC-B invariant: account, branch and teller balances each add up to
/// the sum of the history's deltas.
const TPCB_BALANCES: &str = "SELECT (SELECT sum(abalance) FROM pgbench_accounts), \
     (SELECT sum(bbalance) FROM pgbench_branches), (SELECT sum(tbalance) FROM pgbench_tellers), \
     (SELECT sum(delta) FROM pgbench_history), (SELECT count(*) FROM pgbench_history)";

fn source_digest(cluster: &Cluster, db: &str) -> Vec<String> {
    rows(
        cluster,
        db,
        "SELECT 'accounts ' || md5(string_agg(t::text, ',' ORDER BY aid)) FROM pgbench_accounts t \
         UNION ALL SELECT 'branches ' || md5(string_agg(t::text, ',' ORDER BY bid)) FROM pgbench_branches t \
         UNION ALL SELECT 'tellers ' || md5(string_agg(t::text, ',' ORDER BY tid)) FROM pgbench_tellers t \
         UNION ALL SELECT 'history ' || count(*) FROM pgbench_history",
    )
}

#[test]
fn tpc_b_in_a_clone_fails_nothing_and_keeps_its_invariant() {
    let cluster = start_test_cluster(|_| {}).unwrap();
    cluster.psql("postgres", "CREATE DATABASE prod").unwrap();
    cluster.psql("prod", "CREATE EXTENSION cowclone").unwrap();
    pgbench(&cluster, "prod", &["-i", "-s", "20", "-q"]);
    let before = source_digest(&cluster, "prod");
    cluster
        .psql("prod", "SELECT cow.clone('prod', 'staging')")
        .unwrap();

    let report = pgbench(&cluster, "staging", &["-c", "4", "-j", "2", "-T", "60"]);
    let failed = report
        .lines()
        .find(|l| l.contains("number of failed transactions"))
        .unwrap_or_else(|| panic!("{report}"));
    assert!(failed.contains(": 0 "), "{failed}");
    let processed: i64 = report
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|n| n.split('/').next()?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{report}"));
    assert!(processed > 100, "{report}");

    let balances = rows(&cluster, "staging", TPCB_BALANCES);
    let fields: Vec<&str> = balances[0].split('|').collect();
    assert_eq!(fields[0], fields[3], "{balances:?}");
    assert_eq!(fields[1], fields[3], "{balances:?}");
    assert_eq!(fields[2], fields[3], "{balances:?}");
    assert_eq!(
        fields[4],
        processed.to_string(),
        "one history row per transaction"
    );
    // Still 2,000,000 accounts, each once, through every plan.
    for settings in ["", "SET enable_seqscan = off; SET enable_bitmapscan = off;"] {
        assert_eq!(
            rows(
                &cluster,
                "staging",
                &format!("{settings} SELECT count(*), count(DISTINCT aid) FROM pgbench_accounts")
            ),
            ["2000000|2000000"]
        );
    }
    assert_eq!(
        source_digest(&cluster, "prod"),
        before,
        "the source is unchanged"
    );

    // The clone's own indexes and tombstones are sound.
    cluster
        .psql("staging", "CREATE EXTENSION IF NOT EXISTS amcheck")
        .unwrap();
    cluster
        .psql(
            "staging",
            "SELECT bt_index_check('cow.tombstone_source', true)",
        )
        .unwrap();
}

#[test]
fn maintenance_and_ddl_in_a_clone_touch_only_the_clone() {
    let cluster = start_test_cluster(|_| {}).unwrap();
    cluster.psql("postgres", "CREATE DATABASE prod").unwrap();
    cluster
        .psql(
            "prod",
            "CREATE EXTENSION cowclone; \
             CREATE TABLE t (id int PRIMARY KEY, v text, n int) WITH (autovacuum_enabled = off); \
             INSERT INTO t SELECT g, 'v' || g, g FROM generate_series(1, 5000) g; \
             CREATE TABLE u (id int PRIMARY KEY, v text); \
             INSERT INTO u SELECT g, 'u' || g FROM generate_series(1, 1000) g; \
             CREATE TABLE w (id int PRIMARY KEY, v text); \
             INSERT INTO w SELECT g, 'w' || g FROM generate_series(1, 1000) g",
        )
        .unwrap();
    let source = |c: &Cluster| {
        rows(
            c,
            "prod",
            "SELECT (SELECT md5(string_agg(t::text, ',' ORDER BY id)) FROM t), \
             (SELECT md5(string_agg(u::text, ',' ORDER BY id)) FROM u), \
             (SELECT md5(string_agg(w::text, ',' ORDER BY id)) FROM w)",
        )
    };
    let before = source(&cluster);
    cluster
        .psql("prod", "SELECT cow.clone('prod', 'staging')")
        .unwrap();
    let run = |sql: &str| cluster.psql("staging", sql).unwrap();

    // VACUUM reclaims dead local rows, not source ones; ANALYZE counts what
    // the clone sees.
    run("UPDATE t SET n = n + 1 WHERE id <= 2000");
    run("UPDATE t SET n = n + 1 WHERE id <= 2000");
    run("DELETE FROM t WHERE id > 4500");
    run("VACUUM t");
    run("ANALYZE t");
    assert_eq!(
        rows(
            &cluster,
            "staging",
            "SELECT reltuples::bigint FROM pg_class WHERE relname = 't'"
        ),
        ["4500"]
    );

    // A new index covers source and local rows; a unique one sees each row once.
    run("CREATE INDEX t_n ON t (n)");
    run("CREATE UNIQUE INDEX t_v ON t (v)");
    run("CREATE INDEX CONCURRENTLY t_nv ON t (n, v)");
    let by_seq = rows(
        &cluster,
        "staging",
        "SET enable_indexscan = off; SET enable_bitmapscan = off; SELECT count(*), sum(n) FROM t WHERE n BETWEEN 100 AND 3000",
    );
    for settings in [
        "SET enable_seqscan = off; SET enable_bitmapscan = off;",
        "SET enable_seqscan = off; SET enable_indexscan = off;",
    ] {
        assert_eq!(
            rows(
                &cluster,
                "staging",
                &format!("{settings} SELECT count(*), sum(n) FROM t WHERE n BETWEEN 100 AND 3000")
            ),
            by_seq
        );
    }
    let error = cluster
        .connect("staging")
        .unwrap()
        .batch_execute("INSERT INTO t VALUES (9999, 'v12', 0)")
        .unwrap_err();
    assert_eq!(sqlstate(&error), "23505", "{error}");
    run("CREATE EXTENSION amcheck");
    run("SELECT bt_index_check('t_n', true), bt_index_check('t_v', true), bt_index_check('t_nv', true)");

    // An expression index over source and local rows.
    run("CREATE INDEX t_lower_v ON t (lower(v))");
    assert_eq!(
        rows(
            &cluster,
            "staging",
            "SET enable_seqscan = off; SET enable_bitmapscan = off; SELECT id, n FROM t WHERE lower(v) IN ('v7', 'v1500', 'v4000') ORDER BY id"
        ),
        ["7|9", "1500|1502", "4000|4000"]
    );

    // Columns come and go without a rewrite; a rewrite makes the table local.
    run("ALTER TABLE t ADD COLUMN extra int DEFAULT 7");
    run("ALTER TABLE t DROP COLUMN v");
    assert_eq!(
        rows(&cluster, "staging", "SELECT count(*), sum(extra) FROM t"),
        ["4500|31500"]
    );
    let node_before = rows(&cluster, "staging", "SELECT pg_relation_filenode('u')");
    run("UPDATE u SET v = 'changed' WHERE id <= 10");
    run("ALTER TABLE u ALTER COLUMN id TYPE bigint");
    assert_ne!(
        rows(&cluster, "staging", "SELECT pg_relation_filenode('u')"),
        node_before
    );
    assert_eq!(
        rows(
            &cluster,
            "staging",
            "SELECT count(*), count(*) FILTER (WHERE v = 'changed') FROM u"
        ),
        ["1000|10"]
    );
    run("UPDATE u SET v = 'again' WHERE id = 500");
    run("SELECT bt_index_check('u_pkey', true)");

    // TRUNCATE empties the clone's table; REINDEX rebuilds an index whole.
    run("TRUNCATE w");
    run("INSERT INTO w VALUES (1, 'fresh')");
    assert_eq!(rows(&cluster, "staging", "SELECT count(*) FROM w"), ["1"]);
    run("REINDEX INDEX t_pkey");
    assert_eq!(
        rows(
            &cluster,
            "staging",
            "SET enable_seqscan = off; SET enable_bitmapscan = off; SELECT count(*) FROM t WHERE id BETWEEN 1 AND 5000"
        ),
        ["4500"]
    );

    assert_eq!(source(&cluster), before, "the source is unchanged");
    assert_eq!(rows(&cluster, "prod", "SELECT count(*) FROM t"), ["5000"]);
}

#[test]
fn exclusion_constraints_and_triggers_see_both_halves() {
    let cluster = start_test_cluster(|_| {}).unwrap();
    cluster.psql("postgres", "CREATE DATABASE prod").unwrap();
    cluster
        .psql(
            "prod",
            "CREATE EXTENSION cowclone; \
             CREATE TABLE booking (id int PRIMARY KEY, room int, during int4range, \
                 EXCLUDE USING gist (during WITH &&)); \
             INSERT INTO booking SELECT g, g % 5, int4range(g * 10, g * 10 + 5) FROM generate_series(1, 200) g; \
             CREATE TABLE audit (op text, id int, at_level text); \
             CREATE FUNCTION log_row() RETURNS trigger LANGUAGE plpgsql AS $$ \
             BEGIN \
                 INSERT INTO audit VALUES (TG_OP, coalesce(NEW.id, OLD.id), TG_WHEN || ' ROW'); \
                 RETURN coalesce(NEW, OLD); \
             END $$; \
             CREATE FUNCTION log_statement() RETURNS trigger LANGUAGE plpgsql AS $$ \
             BEGIN \
                 INSERT INTO audit VALUES (TG_OP, NULL, TG_WHEN || ' STATEMENT'); \
                 RETURN NULL; \
             END $$; \
             CREATE TRIGGER r_before BEFORE UPDATE OR DELETE ON booking FOR EACH ROW EXECUTE FUNCTION log_row(); \
             CREATE TRIGGER r_after AFTER INSERT OR UPDATE OR DELETE ON booking FOR EACH ROW EXECUTE FUNCTION log_row(); \
             CREATE TRIGGER s_after AFTER UPDATE ON booking FOR EACH STATEMENT EXECUTE FUNCTION log_statement()",
        )
        .unwrap();
    // Cloned from another database: the extension's own tables are still
    // the clone's own (plain heap), not shadowed.
    cluster
        .psql("postgres", "CREATE EXTENSION cowclone")
        .unwrap();
    cluster
        .psql("postgres", "SELECT cow.clone('prod', 'staging')")
        .unwrap();
    assert_eq!(
        rows(
            &cluster,
            "staging",
            "SELECT amname FROM pg_class c JOIN pg_am a ON a.oid = c.relam WHERE c.oid = 'cow.tombstone'::regclass"
        ),
        ["heap"]
    );
    let mut clone = cluster.connect("staging").unwrap();
    // A row matched twice by one UPDATE is updated once, though its BEFORE
    // trigger's own writes advance the command counter in between.
    clone
        .batch_execute(
            "UPDATE booking b SET room = room + 1 FROM (VALUES (10), (10)) v(id) WHERE b.id = v.id",
        )
        .unwrap();
    assert_eq!(
        rows(
            &cluster,
            "staging",
            "SELECT room FROM booking WHERE id = 10"
        ),
        ["1"]
    );
    clone.batch_execute("DELETE FROM audit").unwrap();
    // Overlapping a live source row, then a local one: 23P01.
    let error = clone
        .batch_execute("INSERT INTO booking VALUES (1000, 1, int4range(12, 14))")
        .unwrap_err();
    assert_eq!(sqlstate(&error), "23P01", "{error}");
    clone
        .batch_execute("INSERT INTO booking VALUES (1001, 1, int4range(5000, 5010))")
        .unwrap();
    let error = clone
        .batch_execute("INSERT INTO booking VALUES (1002, 1, int4range(5005, 5006))")
        .unwrap_err();
    assert_eq!(sqlstate(&error), "23P01", "{error}");
    // Freed by moving or deleting the source row.
    clone
        .batch_execute(
            "UPDATE booking SET during = int4range(7000, 7005) WHERE id = 1; \
             DELETE FROM booking WHERE id = 2; \
             INSERT INTO booking VALUES (1003, 1, int4range(11, 14)), (1004, 1, int4range(21, 24))",
        )
        .unwrap();
    assert_eq!(
        rows(
            &cluster,
            "staging",
            "SELECT op || ':' || coalesce(id::text, '-') || ':' || at_level FROM audit ORDER BY 1"
        ),
        [
            "DELETE:2:AFTER ROW",
            "DELETE:2:BEFORE ROW",
            "INSERT:1001:AFTER ROW",
            "INSERT:1003:AFTER ROW",
            "INSERT:1004:AFTER ROW",
            "UPDATE:-:AFTER STATEMENT",
            "UPDATE:1:AFTER ROW",
            "UPDATE:1:BEFORE ROW",
        ]
    );
    assert_eq!(
        rows(
            &cluster,
            "staging",
            "SET enable_seqscan = off; SELECT string_agg(id::text, ',' ORDER BY id) FROM booking WHERE during && int4range(0, 30)"
        ),
        ["1003,1004"]
    );
    assert_eq!(
        rows(
            &cluster,
            "prod",
            "SELECT count(*) FROM booking WHERE id IN (1, 2)"
        ),
        ["2"]
    );
    assert_eq!(rows(&cluster, "prod", "SELECT count(*) FROM audit"), ["0"]);
}

#[test]
fn a_crash_while_writing_in_a_clone_loses_only_uncommitted_work() {
    let mut cluster = start_test_cluster(|_| {}).unwrap();
    cluster.psql("postgres", "CREATE DATABASE prod").unwrap();
    cluster.psql("prod", "CREATE EXTENSION cowclone").unwrap();
    pgbench(&cluster, "prod", &["-i", "-s", "2", "-q"]);
    let before = source_digest(&cluster, "prod");
    cluster
        .psql("prod", "SELECT cow.clone('prod', 'staging')")
        .unwrap();
    // Later runs pass -n: pgbench otherwise empties pgbench_history first,
    // which breaks the invariant checked below.
    pgbench(&cluster, "staging", &["-c", "2", "-t", "300"]);
    let mut load = cluster
        .client_command("pgbench", "staging")
        .args(["-n", "-c", "4", "-j", "2", "-T", "30"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    thread::sleep(Duration::from_secs(3));
    cluster.crash().unwrap();
    let _ = load.wait();
    cluster.start().unwrap();

    let balances = rows(&cluster, "staging", TPCB_BALANCES);
    let fields: Vec<&str> = balances[0].split('|').collect();
    assert_eq!(fields[0], fields[3], "{balances:?}");
    assert_eq!(fields[1], fields[3], "{balances:?}");
    assert_eq!(fields[2], fields[3], "{balances:?}");
    assert!(fields[4].parse::<i64>().unwrap() >= 600, "{balances:?}");
    assert_eq!(
        rows(
            &cluster,
            "staging",
            "SET enable_seqscan = off; SET enable_bitmapscan = off; SELECT count(*), count(DISTINCT aid) FROM pgbench_accounts WHERE aid > 0"
        ),
        ["200000|200000"]
    );
    cluster.psql("staging", "CREATE EXTENSION amcheck").unwrap();
    cluster
        .psql(
            "staging",
            "SELECT bt_index_check('cow.tombstone_source', true)",
        )
        .unwrap();
    assert_eq!(source_digest(&cluster, "prod"), before);
    // Writing goes on after the restart.
    pgbench(&cluster, "staging", &["-n", "-c", "2", "-t", "100"]);
}

#[test]
fn savepoints_and_cursors_write_source_rows_as_heap_does() {
    let cluster = cloned_source(
        "CREATE TABLE t (id int PRIMARY KEY, v int); \
         INSERT INTO t SELECT g, g * 10 FROM generate_series(1, 50) g",
    );
    let mut clone = cluster.connect("staging").unwrap();
    clone
        .batch_execute(
            "BEGIN; \
             SAVEPOINT a; UPDATE t SET v = -1 WHERE id = 20; DELETE FROM t WHERE id = 21; ROLLBACK TO SAVEPOINT a; \
             UPDATE t SET v = v + 1 WHERE id = 20; \
             DECLARE c CURSOR FOR SELECT id FROM t WHERE id BETWEEN 30 AND 32 ORDER BY id FOR UPDATE; \
             FETCH 1 FROM c; UPDATE t SET v = 999 WHERE CURRENT OF c; \
             FETCH 1 FROM c; DELETE FROM t WHERE CURRENT OF c; \
             DECLARE d CURSOR FOR SELECT id FROM t WHERE id = 40; \
             FETCH 1 FROM d; UPDATE t SET v = 1 WHERE id = 40; UPDATE t SET v = v + 1 WHERE CURRENT OF d; \
             COMMIT",
        )
        .unwrap();
    assert_eq!(
        rows(
            &cluster,
            "staging",
            "SELECT string_agg(format('%s=%s', id, v), ',' ORDER BY id) FROM t WHERE id IN (20, 21, 30, 31, 32, 40)"
        ),
        ["20=201,21=210,30=999,32=320,40=2"]
    );
    assert_eq!(
        rows(&cluster, "prod", "SELECT count(*), sum(v) FROM t"),
        ["50|12750"]
    );
}

/// Up to 17 an ON CONFLICT statement shows its `cow_btree` arbiters to
/// PostgreSQL as btree for the statement. Afterwards the clone plans and
/// reads through them as before, also when the statement inserted nothing
/// (the planner asks a btree for its height, read from the local part) and
/// when its transaction failed.
#[test]
fn on_conflict_leaves_later_statements_planning_as_before() {
    let cluster = cloned_source(
        "CREATE TABLE t (id int PRIMARY KEY, v text); \
         INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 100) g; ANALYZE t",
    );
    let mut clone = cluster.connect("staging").unwrap();
    let lookup = |clone: &mut postgres::Client, id: i32| -> Vec<String> {
        clone
            .batch_execute("SET enable_seqscan = off; SET enable_bitmapscan = off")
            .unwrap();
        let plan: Vec<String> = clone
            .query(
                &format!("EXPLAIN (COSTS OFF) SELECT v FROM t WHERE id = {id}"),
                &[],
            )
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert!(plan[0].contains("Index Scan using t_pkey"), "{plan:?}");
        clone
            .query(&format!("SELECT v FROM t WHERE id = {id}"), &[])
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    };

    // Every row conflicts: nothing is inserted.
    let inserted = clone
        .execute(
            "INSERT INTO t VALUES (1, 'new') ON CONFLICT DO NOTHING",
            &[],
        )
        .unwrap();
    assert_eq!(inserted, 0);
    assert_eq!(lookup(&mut clone, 1), ["v1"]);
    assert_eq!(
        rows(
            &cluster,
            "staging",
            "SELECT a.amname FROM pg_class c JOIN pg_am a ON a.oid = c.relam WHERE c.relname = 't_pkey'"
        ),
        ["cow_btree"]
    );

    // A failed transaction after an upsert: rolled back, later plans unchanged.
    clone
        .batch_execute(
            "BEGIN; INSERT INTO t VALUES (3, 'upserted') ON CONFLICT (id) DO UPDATE SET v = excluded.v",
        )
        .unwrap();
    let failure = clone
        .batch_execute("INSERT INTO t VALUES (1 / 0, 'x') ON CONFLICT DO NOTHING")
        .unwrap_err();
    assert_eq!(sqlstate(&failure), "22012");
    clone.batch_execute("ROLLBACK").unwrap();
    assert_eq!(lookup(&mut clone, 3), ["v3"]);

    // A new session sees the same, and upserts still work.
    let mut other = cluster.connect("staging").unwrap();
    assert_eq!(lookup(&mut other, 2), ["v2"]);
    other
        .batch_execute(
            "INSERT INTO t VALUES (2, 'upserted') ON CONFLICT (id) DO UPDATE SET v = excluded.v",
        )
        .unwrap();
    assert_eq!(lookup(&mut other, 2), ["upserted"]);
    assert_eq!(lookup(&mut clone, 2), ["upserted"]);
}
