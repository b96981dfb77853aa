//! Clones of clones (issue #20): a chain prod → c1 → … → c8 answers at
//! every level exactly as a chain of `CREATE DATABASE ... TEMPLATE` copies
//! given the same writes at the same moments, under every plan shape; the
//! depth limit; a parent materialized or dropped under its children; a
//! crash in the middle of the chain; a parent cloned while it is written.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use common::{
    assert_footprint_returns_to, assert_tpcb_invariant, catalog_checks_pass, footprint,
    rich_schema, rows, run_each, sqlstate, tpcb_sums, wait_until, INDEXED_QUERIES,
};
use pg_test::{start_test_cluster, Cluster, ClusterConfig};
use postgres::SimpleQueryMessage;

const SHAPES: [(&str, &str); 4] = [
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

/// Queries an index can answer alone (index-only scans where the visibility
/// map allows, index scans otherwise).
const KEY_QUERIES: [&str; 5] = [
    "SELECT aid FROM pgbench_accounts WHERE aid % 3 = 0 ORDER BY aid",
    "SELECT tid FROM pgbench_tellers ORDER BY tid",
    "SELECT id FROM app.everything ORDER BY id",
    "SELECT id FROM app.child ORDER BY id",
    "SELECT count(*) FROM app.everything WHERE id > 10",
];

/// A cluster with cowclone in `postgres` and in `prod`, which holds what
/// `setup` runs (SQL files) and pgbench's tables.
fn prod_with(setup: &[std::path::PathBuf]) -> Cluster {
    let cluster = start_test_cluster(|_| {}).unwrap();
    cluster
        .psql("postgres", "CREATE EXTENSION cowclone")
        .unwrap();
    cluster.psql("postgres", "CREATE DATABASE prod").unwrap();
    cluster.psql("prod", "CREATE EXTENSION cowclone").unwrap();
    for file in setup {
        cluster.psql_file("prod", file).unwrap();
    }
    pgbench_init(&cluster, "prod");
    cluster
}

fn pgbench_init(cluster: &Cluster, db: &str) {
    let init = cluster
        .client_command("pgbench", db)
        .args(["-i", "-q", "-s", "1"])
        .output()
        .unwrap();
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
}

/// Every table of the database a test compares: the rich schema's (those a
/// level created itself too) and pgbench's.
fn tables(cluster: &Cluster, db: &str) -> Vec<String> {
    rows(
        cluster,
        db,
        "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE (n.nspname = 'app' OR c.relname LIKE 'pgbench%') AND c.relkind IN ('r', 'm', 'p') ORDER BY 1",
    )
}

/// What a database answers: its tables, every table's full contents and the
/// index-driven queries of the read oracle, under each plan shape. All on
/// one connection, as text.
fn answers(cluster: &Cluster, db: &str) -> Vec<(String, Vec<String>)> {
    let tables = tables(cluster, db);
    let mut client = cluster.connect(db).unwrap();
    let mut out = vec![("tables".to_string(), tables.clone())];
    let queries: Vec<String> = tables
        .iter()
        .map(|t| format!("SELECT t::text FROM {t} t ORDER BY 1"))
        .chain(KEY_QUERIES.iter().map(|q| q.to_string()))
        // A KNN query's LIMIT may cut between rows at the same distance.
        .chain(
            INDEXED_QUERIES
                .iter()
                .filter(|q| !q.contains("LIMIT"))
                .map(|q| q.to_string()),
        )
        .collect();
    for (shape, settings) in SHAPES {
        client
            .batch_execute(&format!("RESET ALL; {settings}"))
            .unwrap();
        for q in &queries {
            let result: Vec<String> = client
                .simple_query(q)
                .unwrap_or_else(|e| panic!("{db}, {shape}: {q}: {e}"))
                .into_iter()
                .filter_map(|m| match m {
                    SimpleQueryMessage::Row(r) => Some(
                        (0..r.len())
                            .map(|i| r.get(i).unwrap_or("<null>"))
                            .collect::<Vec<_>>()
                            .join("|"),
                    ),
                    _ => None,
                })
                .collect();
            out.push((format!("{shape}: {q}"), result));
        }
    }
    out
}

/// Asserts two databases answer alike, naming what differs.
fn assert_same_answers(cluster: &Cluster, got_db: &str, want_db: &str, what: &str) {
    let got = answers(cluster, got_db);
    let want = answers(cluster, want_db);
    assert_eq!(
        got.len(),
        want.len(),
        "{what}: {got_db} vs {want_db}: shapes differ"
    );
    let differing: Vec<String> = got
        .iter()
        .zip(&want)
        .filter(|((_, g), (_, w))| g != w)
        .map(|((q, g), (_, w))| {
            let only_got: Vec<&String> = g.iter().filter(|r| !w.contains(r)).take(2).collect();
            let only_want: Vec<&String> = w.iter().filter(|r| !g.contains(r)).take(2).collect();
            format!(
                "{q}: {} rows, expected {}; only got {only_got:?}; only expected {only_want:?}",
                g.len(),
                w.len()
            )
        })
        .collect();
    assert!(
        differing.is_empty(),
        "{what}: {got_db} differs from {want_db}: {differing:#?}"
    );
}

/// The writes each level gets before its child is made: updates, deletes,
/// inserts, a DDL change, a table of its own, and at some levels a rewrite,
/// a new index, or writes to a table an ancestor created.
fn writes_before_child(level: usize) -> String {
    let mut sql = format!(
        "UPDATE app.everything SET label = 'level {level} ' || id WHERE id % 8 = {m8};
         DELETE FROM app.everything WHERE id % 29 = {level};
         INSERT INTO app.everything (label, regular, words) SELECT 'new {level} ' || g, g, array['w' || g] FROM generate_series(1, 25) g;
         UPDATE pgbench_accounts SET abalance = abalance + {level} WHERE aid % 17 = {level};
         INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES ({level}, 1, {level}, {level}, '2026-01-01');
         UPDATE app.child SET parent_id = 1 + ({level} % 10) WHERE id % 6 = {m6};
         ALTER TABLE app.everything ADD COLUMN level_{level} int DEFAULT {level};
         CREATE TABLE app.own_{level} (id int PRIMARY KEY, what text);
         INSERT INTO app.own_{level} SELECT g, 'own {level}' FROM generate_series(1, 300) g;
         UPDATE app.scratch SET v = 'level {level}';
         VACUUM app.everything;
         VACUUM pgbench_accounts;",
        m8 = level % 8,
        m6 = level % 6,
    );
    match level {
        2 => sql += "UPDATE app.own_1 SET what = 'changed at 2' WHERE id % 2 = 0; VACUUM app.own_1;",
        3 => sql += "TRUNCATE app.events; INSERT INTO app.events SELECT i, date '2024-07-01' + i, 'after truncate' FROM generate_series(1, 40) i;",
        4 => sql += "DELETE FROM app.own_3 WHERE id < 100; VACUUM FULL app.own_2;",
        5 => sql += "CREATE INDEX everything_regular ON app.everything (regular); REFRESH MATERIALIZED VIEW app.mood_counts;",
        6 => sql += "ALTER TABLE app.vehicle ALTER COLUMN wheels TYPE bigint; UPDATE app.vehicle SET wheels = wheels * 100;",
        7 => sql += "SELECT setval('app.ticket_seq', 5000); INSERT INTO app.everything (label) VALUES ('ticketed');",
        _ => {}
    }
    sql
}

/// The writes each level gets after its child is made: DML, and DDL that
/// drops or rewrites storage the child was copied from (its own table
/// rewritten, a table it shadows truncated), which the parent may do: the
/// child reads none of it.
fn writes_after_child(level: usize) -> String {
    format!(
        "UPDATE app.everything SET small = {level} WHERE id % 5 = {m5};
         DELETE FROM pgbench_accounts WHERE aid % 101 = {level};
         INSERT INTO app.own_{level} SELECT g, 'after the child' FROM generate_series(1000, 1010) g;
         UPDATE app.own_{level} SET what = 'moved' WHERE id <= 5;
         ALTER TABLE app.own_{level} ADD COLUMN after_child int DEFAULT {level};
         CREATE INDEX ON app.own_{level} (what);
         VACUUM FULL app.own_{level};
         TRUNCATE pgbench_history;
         VACUUM app.everything;",
        m5 = level % 5,
    )
}

/// Churn in the root between levels: its pin must keep what the chain
/// reads, and nothing else.
fn churn_in_prod(level: usize) -> String {
    format!(
        "UPDATE pgbench_accounts SET abalance = abalance - 1 WHERE aid % 7 = {m7};
         DELETE FROM app.everything WHERE id % 31 = {level};
         INSERT INTO app.everything (label) SELECT 'prod later ' || g FROM generate_series(1, 10) g;
         VACUUM pgbench_accounts;
         VACUUM app.everything;",
        m7 = level % 7,
    )
}

/// Heaps and btree indexes of `db` that are plain (a level's own tables,
/// copied into each child; after materialization, all of them): amcheck's
/// problems.
fn plain_relation_problems(cluster: &Cluster, db: &str) -> Vec<String> {
    cluster
        .psql(db, "CREATE EXTENSION IF NOT EXISTS amcheck")
        .unwrap();
    cluster
        .psql(
            db,
            "SELECT count(bt_index_parent_check(c.oid, true)) FROM pg_class c \
             WHERE c.relkind = 'i' AND c.relam = 403 AND c.oid >= 16384 AND c.relpersistence = 'p'",
        )
        .unwrap();
    rows(
        cluster,
        db,
        "SELECT s.relname || ': ' || v.msg FROM (SELECT c.oid, c.relname FROM pg_class c \
         WHERE c.relkind IN ('r', 'm', 't') AND c.relam = 2 AND c.oid >= 16384 AND c.relpersistence <> 't' OFFSET 0) s, \
         LATERAL verify_heapam(s.oid) v",
    )
}

fn clone_of(cluster: &Cluster, parent: &str, child: &str) {
    cluster
        .psql(
            "postgres",
            &format!("SELECT cow.clone('{parent}', '{child}')"),
        )
        .unwrap();
}

fn template_copy(cluster: &Cluster, parent: &str, child: &str) {
    cluster
        .psql(
            "postgres",
            &format!("CREATE DATABASE {child} TEMPLATE {parent} STRATEGY wal_log"),
        )
        .unwrap();
}

/// The oracle chain. Each level cN is cloned from c(N-1) at the moment its
/// twin tN is copied from t(N-1) with `CREATE DATABASE ... TEMPLATE`; both
/// get the same writes before and after their child is made, and the root
/// is churned and vacuumed between levels. Then every level equals its
/// twin; the chain's lineage is whole; c9 is refused and leaves nothing; c4
/// is materialized while c5..c8 are read, and c1 dropped, and every level
/// still equals its twin; c8 materialized is depth 0 again and clones.
#[test]
fn a_chain_of_eight_clones_answers_like_a_chain_of_template_copies() {
    let cluster = prod_with(&[rich_schema()]);
    clone_of(&cluster, "prod", "c1");
    template_copy(&cluster, "prod", "t1");
    for level in 1..=8 {
        let (clone, twin) = (format!("c{level}"), format!("t{level}"));
        run_each(&cluster, &clone, &writes_before_child(level));
        run_each(&cluster, &twin, &writes_before_child(level));
        if level < 8 {
            clone_of(&cluster, &clone, &format!("c{}", level + 1));
            template_copy(&cluster, &twin, &format!("t{}", level + 1));
            run_each(&cluster, &clone, &writes_after_child(level));
            run_each(&cluster, &twin, &writes_after_child(level));
        }
        run_each(&cluster, "prod", &churn_in_prod(level));
    }
    for level in 1..=8 {
        assert_same_answers(
            &cluster,
            &format!("c{level}"),
            &format!("t{level}"),
            "the chain",
        );
        assert_eq!(
            plain_relation_problems(&cluster, &format!("c{level}")),
            Vec::<String>::new(),
            "c{level}'s own relations"
        );
    }
    catalog_checks_pass(&cluster, "c8");

    // The whole chain, oldest first; cow.clones shows depth and parent.
    let lineage = rows(
        &cluster,
        "postgres",
        "SELECT level, database, status, clone_point_lsn IS NOT NULL FROM cow.lineage('c8')",
    );
    let mut expected = vec!["0|prod|source|f".to_string()];
    expected.extend((1..=8).map(|l| format!("{l}|c{l}|shadowed|t")));
    assert_eq!(lineage, expected);
    let clones = rows(
        &cluster,
        "postgres",
        "SELECT clone, source, depth, parent FROM cow.clones ORDER BY depth",
    );
    let mut expected = vec!["c1|prod|1|prod".to_string()];
    expected.extend((2..=8).map(|l| format!("c{l}|prod|{l}|c{}", l - 1)));
    assert_eq!(clones, expected);
    // Each level's clone point is later than its parent's.
    assert_eq!(
        rows(
            &cluster,
            "postgres",
            "SELECT bool_and(c.clone_point_lsn > p.clone_point_lsn) FROM cow.clones c \
             JOIN cow.clones p ON p.clone_oid = c.parent_oid",
        ),
        ["t"]
    );

    // c9: the depth limit, and nothing left behind.
    let before = footprint(&cluster);
    let error = cluster
        .connect("postgres")
        .unwrap()
        .batch_execute("SELECT cow.clone('c8', 'c9')")
        .unwrap_err();
    assert_eq!(sqlstate(&error), "54000", "{error}");
    let db_error = error.as_db_error().unwrap();
    assert!(
        db_error.message().contains("clone depth exceeded"),
        "{error}"
    );
    assert!(
        db_error
            .hint()
            .unwrap_or("")
            .contains("cow.materialize('c8')"),
        "{error}"
    );
    assert_footprint_returns_to(&cluster, &before, "a refused c9");

    // Materialize c4 while c5..c8 are read without pause: the children
    // need nothing of it. Then drop c1, a parent with children.
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (5..=8)
        .map(|level| {
            let stop = stop.clone();
            let mut client = cluster.connect(&format!("c{level}")).unwrap();
            thread::spawn(move || {
                let mut reads = 0;
                while !stop.load(Ordering::Relaxed) {
                    client
                        .simple_query(
                            "SELECT count(*), sum(abalance) FROM pgbench_accounts; \
                             SELECT count(*) FROM app.everything WHERE id < 50",
                        )
                        .unwrap();
                    reads += 1;
                }
                reads
            })
        })
        .collect();
    assert_eq!(
        rows(
            &cluster,
            "postgres",
            "SELECT status FROM cow.materialize('c4')"
        ),
        ["materialized"]
    );
    stop.store(true, Ordering::Relaxed);
    for reader in readers {
        assert!(reader.join().unwrap() > 0);
    }
    cluster.psql("postgres", "DROP DATABASE c1").unwrap();
    cluster.psql("postgres", "DROP DATABASE t1").unwrap();
    for level in 2..=8 {
        assert_same_answers(
            &cluster,
            &format!("c{level}"),
            &format!("t{level}"),
            "after c4 was materialized and c1 dropped",
        );
    }
    assert_eq!(
        rows(
            &cluster,
            "postgres",
            "SELECT level, database, status FROM cow.lineage('c6')",
        ),
        [
            "0|prod|source",
            "1|c1|dropped",
            "2|c2|shadowed",
            "3|c3|shadowed",
            "4|c4|materialized",
            "5|c5|shadowed",
            "6|c6|shadowed"
        ]
    );

    // c8 materialized is an ordinary database again: cloning it works, at
    // depth 1, and the materialized copy passes amcheck.
    assert_eq!(
        rows(
            &cluster,
            "postgres",
            "SELECT status FROM cow.materialize('c8')"
        ),
        ["materialized"]
    );
    assert_eq!(
        plain_relation_problems(&cluster, "c8"),
        Vec::<String>::new()
    );
    clone_of(&cluster, "c8", "c9");
    assert_eq!(
        rows(
            &cluster,
            "postgres",
            "SELECT source, depth, parent FROM cow.clones WHERE clone = 'c9'"
        ),
        ["c8|1|c8"]
    );
    assert_same_answers(&cluster, "c9", "t8", "a clone of materialized c8");
    assert_same_answers(&cluster, "c8", "t8", "c8 materialized");
}

fn pgbench_for(cluster: &Cluster, db: &str, seconds: u32) -> std::process::Child {
    cluster
        .client_command("pgbench", db)
        .args(["-n", "-c", "4", "-T", &seconds.to_string()])
        .stdout(std::process::Stdio::null())
        // client_command names the database with -d, which pgbench also
        // reads as --debug.
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

/// A chain prod → c1 → c2 → c3 → c4 with writes at each level; TPC-B runs
/// in c3 when the server is killed with SIGKILL. After the restart c3
/// holds TPC-B's invariant and materializes to relations amcheck passes,
/// and every other level is exactly as before.
#[test]
fn a_crash_during_tpcb_in_the_middle_of_a_chain_leaves_every_level_consistent() {
    let mut cluster = prod_with(&[]);
    let mut parent = "prod".to_string();
    for level in 1..=4 {
        let clone = format!("c{level}");
        clone_of(&cluster, &parent, &clone);
        run_each(
            &cluster,
            &clone,
            &format!(
                "UPDATE pgbench_accounts SET filler = 'level {level}' WHERE aid % 10 = {level};
                 CREATE TABLE own_{level} AS SELECT g AS id FROM generate_series(1, 1000) g;
                 CREATE INDEX ON own_{level} (id)"
            ),
        );
        parent = clone;
    }
    let others = ["c1", "c2", "c4"];
    let before: Vec<Vec<(String, Vec<String>)>> = others
        .iter()
        .map(|db| answers_of_pgbench(&cluster, db))
        .collect();

    let bench = pgbench_for(&cluster, "c3", 60);
    wait_until("TPC-B commits in c3", Duration::from_secs(30), || {
        rows(&cluster, "c3", "SELECT count(*) > 200 FROM pgbench_history") == ["t"]
    });
    cluster.crash().unwrap();
    let _ = bench.wait_with_output();
    cluster.start().unwrap();

    assert_tpcb_invariant(&cluster, "c3");
    for (db, before) in others.iter().zip(&before) {
        assert_eq!(
            &answers_of_pgbench(&cluster, db),
            before,
            "{db} after the crash"
        );
    }
    catalog_checks_pass(&cluster, "c3");
    assert_eq!(
        rows(
            &cluster,
            "postgres",
            "SELECT status FROM cow.materialize('c3')"
        ),
        ["materialized"]
    );
    assert_tpcb_invariant(&cluster, "c3");
    assert_eq!(
        plain_relation_problems(&cluster, "c3"),
        Vec::<String>::new()
    );
    // c4, cut from c3 before the crash, still reads as it did.
    assert_eq!(answers_of_pgbench(&cluster, "c4"), before[2]);
    // Dropping the root with FORCE materializes the whole chain first.
    let c4 = answers_of_pgbench(&cluster, "c4");
    cluster
        .psql(
            "postgres",
            "SELECT cow.drop_database('prod', force => true)",
        )
        .unwrap();
    assert_eq!(
        rows(
            &cluster,
            "postgres",
            "SELECT string_agg(clone || ' ' || status, ', ' ORDER BY clone) FROM cow.clones"
        ),
        ["c1 materialized, c2 materialized, c3 materialized, c4 materialized"]
    );
    assert_eq!(answers_of_pgbench(&cluster, "c4"), c4);
    assert_eq!(answers_of_pgbench(&cluster, "c1"), before[0]);
}

/// pgbench's tables and each level's own table, in full, under a
/// sequential and an index plan.
fn answers_of_pgbench(cluster: &Cluster, db: &str) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    for settings in [
        "SET enable_indexscan = off; SET enable_bitmapscan = off;",
        "SET enable_seqscan = off;",
    ] {
        for table in rows(
            cluster,
            db,
            "SELECT relname FROM pg_class WHERE relkind = 'r' AND (relname LIKE 'pgbench%' OR relname LIKE 'own_%') ORDER BY 1",
        ) {
            out.push((
                format!("{settings} {table}"),
                rows(cluster, db, &format!("{settings} SELECT t::text FROM {table} t ORDER BY 1")),
            ));
        }
    }
    out
}

/// A parent cloned while TPC-B writes it: each clone holds a whole set of
/// transactions (TPC-B's invariant), and its own writes never reach the
/// parent. A clone made while a transaction in the parent holds
/// uncommitted writes does not wait for it and does not see them.
/// The refusals: a clone of a clone as of a past point, a parent being
/// materialized.
#[test]
fn a_parent_cloned_under_tpcb_gives_consistent_children() {
    let cluster = prod_with(&[]);
    clone_of(&cluster, "prod", "staging");

    let bench = pgbench_for(&cluster, "staging", 15);
    wait_until("TPC-B commits in staging", Duration::from_secs(30), || {
        rows(
            &cluster,
            "staging",
            "SELECT count(*) > 100 FROM pgbench_history",
        ) == ["t"]
    });
    for n in 1..=4 {
        let child = format!("dev{n}");
        clone_of(&cluster, "staging", &child);
        assert_tpcb_invariant(&cluster, &child);
        cluster
            .psql(
                &child,
                "UPDATE pgbench_branches SET bbalance = bbalance + 1000000",
            )
            .unwrap();
        thread::sleep(Duration::from_millis(300));
    }
    let report = bench.wait_with_output().unwrap();
    assert!(report.status.success());
    assert_tpcb_invariant(&cluster, "staging");
    for n in 1..=4 {
        let sums = tpcb_sums(&cluster, &format!("dev{n}"));
        let values: Vec<i64> = sums[0].split('|').map(|v| v.parse().unwrap()).collect();
        assert_eq!(
            values[2],
            values[0] + 1_000_000,
            "dev{n}'s own write: {sums:?}"
        );
    }

    // A transaction open in the parent with uncommitted writes: the clone
    // does not wait for it, and is as of its point, before that commit.
    let before_write = rows(
        &cluster,
        "staging",
        "SELECT tbalance FROM pgbench_tellers WHERE tid = 1",
    );
    let mut writer = cluster.connect("staging").unwrap();
    writer
        .batch_execute("BEGIN; UPDATE pgbench_tellers SET tbalance = 424242 WHERE tid = 1")
        .unwrap();
    clone_of(&cluster, "staging", "during_a_write");
    writer.batch_execute("COMMIT").unwrap();
    assert_eq!(
        rows(
            &cluster,
            "during_a_write",
            "SELECT tbalance FROM pgbench_tellers WHERE tid = 1"
        ),
        before_write
    );
    assert_eq!(
        rows(
            &cluster,
            "staging",
            "SELECT tbalance FROM pgbench_tellers WHERE tid = 1"
        ),
        ["424242"]
    );

    // A parent being materialized is refused (or, if its job already
    // ended, cloned as the ordinary database it then is).
    let mut admin = cluster.connect("postgres").unwrap();
    admin
        .batch_execute("SELECT cow.materialize('dev1', wait => false)")
        .unwrap();
    match admin.batch_execute("SELECT cow.clone('dev1', 'of_a_materializing')") {
        Ok(()) => admin
            .batch_execute("DROP DATABASE of_a_materializing")
            .unwrap(),
        Err(error) => assert_eq!(sqlstate(&error), "55000", "{error}"),
    }
    wait_until("dev1 materialized", Duration::from_secs(60), || {
        rows(
            &cluster,
            "postgres",
            "SELECT status FROM cow.clones WHERE clone = 'dev1'",
        ) == ["materialized"]
    });
    // A clone of a clone as of a past point: refused, leaving nothing.
    let before = footprint(&cluster);
    let error = admin
        .batch_execute("SELECT cow.clone('staging', 'past', as_of => now() - interval '1 second')")
        .unwrap_err();
    assert_eq!(sqlstate(&error), "0A000", "{error}");
    assert_footprint_returns_to(
        &cluster,
        &before,
        "a refused clone of a clone as of the past",
    );
}

/// A chain made on a primary reaches a streaming standby through WAL (one
/// level is in the base backup, the others come by WAL only): every level
/// answers there exactly as on the primary, with the same lineage. Once
/// promoted, the standby writes at the bottom of the chain and clones it.
#[test]
fn a_standby_replays_a_chain_and_answers_as_the_primary() {
    let primary = prod_with(&[]);
    let level_writes = |level: usize| {
        format!(
            "UPDATE pgbench_accounts SET filler = 'level {level}' WHERE aid % 9 = {level};
             DELETE FROM pgbench_accounts WHERE aid % 97 = {level};
             CREATE TABLE own_{level} AS SELECT g AS id FROM generate_series(1, 500) g;
             CREATE INDEX ON own_{level} (id)"
        )
    };
    clone_of(&primary, "prod", "c1");
    run_each(&primary, "c1", &level_writes(1));
    let mut standby = primary
        .base_backup(ClusterConfig::for_tests().unwrap(), true)
        .unwrap();
    standby.start().unwrap();
    for level in 2..=3 {
        clone_of(&primary, &format!("c{}", level - 1), &format!("c{level}"));
        run_each(&primary, &format!("c{level}"), &level_writes(level));
    }
    run_each(
        &primary,
        "prod",
        "UPDATE pgbench_accounts SET abalance = abalance - 1 WHERE aid % 7 = 1; VACUUM pgbench_accounts",
    );
    primary.wait_for_replay(&standby).unwrap();
    for db in ["c1", "c2", "c3"] {
        assert_eq!(
            answers_of_pgbench(&standby, db),
            answers_of_pgbench(&primary, db),
            "{db} on the standby"
        );
    }
    let lineage = "SELECT level, database, status, clone_point_lsn FROM cow.lineage('c3')";
    assert_eq!(
        rows(&standby, "postgres", lineage),
        rows(&primary, "postgres", lineage)
    );

    standby.promote().unwrap();
    let before = answers_of_pgbench(&standby, "c3");
    standby
        .psql(
            "c3",
            "UPDATE pgbench_accounts SET abalance = 7 WHERE aid <= 100",
        )
        .unwrap();
    clone_of(&standby, "c3", "c4");
    assert_eq!(
        answers_of_pgbench(&standby, "c4"),
        answers_of_pgbench(&standby, "c3")
    );
    assert_ne!(answers_of_pgbench(&standby, "c4"), before);
    assert_eq!(
        rows(
            &standby,
            "postgres",
            "SELECT depth, parent FROM cow.clones WHERE clone = 'c4'"
        ),
        ["4|c3"]
    );
}
