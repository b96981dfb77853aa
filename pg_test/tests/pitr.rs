//! Clones as of a point in time (issue #19): a source with history
//! retention can be cloned as of any WAL position or instant of its window,
//! and the clone holds exactly the transactions that committed before it.

mod common;

use std::collections::BTreeMap;
use std::thread;
use std::time::Duration;

use common::{rows, sqlstate, vacuum_counts, wait_until};
use pg_test::{start_test_cluster, Cluster};

/// A cluster marking histories every second, with `prod` (cowclone
/// installed, `setup` run) under a retention of an hour whose window has
/// started.
fn retained_prod(setup: &str) -> Cluster {
    let cluster = start_test_cluster(|c| {
        c.settings.push("cow.retention_mark_interval = 1".into());
        c.settings.push("max_prepared_transactions = 4".into());
    })
    .unwrap();
    cluster
        .psql("postgres", "CREATE EXTENSION cowclone")
        .unwrap();
    cluster.psql("postgres", "CREATE DATABASE prod").unwrap();
    cluster
        .psql("prod", &format!("CREATE EXTENSION cowclone; {setup}"))
        .unwrap();
    assert_eq!(
        rows(
            &cluster,
            "postgres",
            "SELECT cow.set_retention('prod', interval '1 hour')"
        ),
        ["t"]
    );
    wait_for_window(&cluster);
    cluster
}

fn wait_for_window(cluster: &Cluster) {
    wait_until("the window's first mark", Duration::from_secs(30), || {
        rows(
            cluster,
            "postgres",
            "SELECT window_start_lsn IS NOT NULL FROM cow.retention WHERE database = 'prod'",
        ) == ["t"]
    });
}

/// Waits until the holder has marked the history after everything so far,
/// so that points just taken lie inside the window.
fn wait_for_mark_after_now(cluster: &Cluster) {
    let now = rows(cluster, "postgres", "SELECT pg_current_wal_insert_lsn()");
    wait_until("a mark after now", Duration::from_secs(30), || {
        rows(
            cluster,
            "postgres",
            &format!(
                "SELECT newest_mark_lsn >= '{}' FROM cow.retention WHERE database = 'prod'",
                now[0]
            ),
        ) == ["t"]
    });
}

#[derive(Clone, Debug)]
enum Point {
    Lsn(String),
    Time(String),
}

impl Point {
    fn argument(&self) -> String {
        match self {
            Point::Lsn(l) => format!("as_of_lsn => '{l}'"),
            Point::Time(t) => format!("as_of => '{t}'"),
        }
    }
}

/// What the replay of the workload's log says the source held.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Model {
    ledger: BTreeMap<i32, String>,
    balances: BTreeMap<i32, i64>,
}

impl Model {
    fn ledger_rows(&self) -> Vec<String> {
        self.ledger
            .iter()
            .map(|(n, note)| format!("{n}|{note}"))
            .collect()
    }
    fn balance_rows(&self) -> Vec<String> {
        self.balances
            .iter()
            .map(|(id, bal)| format!("{id}|{bal}"))
            .collect()
    }
}

/// Three plan shapes over the same rows.
const PLANS: [&str; 3] = [
    "SET enable_indexscan = off; SET enable_bitmapscan = off;",
    "SET enable_seqscan = off; SET enable_bitmapscan = off;",
    "SET enable_seqscan = off; SET enable_indexscan = off;",
];

fn assert_clone_is(cluster: &Cluster, clone: &str, model: &Model, what: &str) {
    for plan in PLANS {
        assert_eq!(
            rows(
                cluster,
                clone,
                &format!("{plan} SELECT n, note FROM ledger WHERE n > 0 ORDER BY n")
            ),
            model.ledger_rows(),
            "{what}: ledger under {plan}"
        );
        assert_eq!(
            rows(
                cluster,
                clone,
                &format!("{plan} SELECT id, bal FROM acct WHERE id >= 0 ORDER BY id")
            ),
            model.balance_rows(),
            "{what}: acct under {plan}"
        );
    }
}

fn lsn_and_time(client: &mut postgres::Client) -> (String, String) {
    let row = client
        .query_one(
            "SELECT pg_current_wal_insert_lsn()::text, clock_timestamp()::text",
            &[],
        )
        .unwrap();
    (row.get(0), row.get(1))
}

/// The workload: numbered transactions, each inserting its number and
/// moving balances; some roll back, some keep or roll back a subtransaction;
/// a long transaction spans many points; a prepared one commits later;
/// VACUUM runs in between. After each commit (and inside some transactions,
/// before their commit) the WAL position and time are logged with the
/// state the log says the source then held.
fn run_workload(cluster: &Cluster) -> Vec<(Point, Model, String)> {
    let mut main = cluster.connect("prod").unwrap();
    let mut long = cluster.connect("prod").unwrap();
    let mut prepared = cluster.connect("prod").unwrap();
    let mut probe = cluster.connect("prod").unwrap();
    let mut model = Model::default();
    for id in 0..20 {
        model.balances.insert(id, 0);
    }
    model.balances.insert(100, 0);
    let mut log = Vec::new();
    let record = |client: &mut postgres::Client, model: &Model, log: &mut Vec<_>, label: String| {
        let (lsn, time) = lsn_and_time(client);
        log.push((Point::Lsn(lsn), model.clone(), label.clone()));
        log.push((Point::Time(time), model.clone(), label));
    };
    for n in 1..=60 {
        if n == 5 {
            long.batch_execute(
                "BEGIN; INSERT INTO ledger VALUES (900005, 'long'); \
                 UPDATE acct SET bal = bal + 1000 WHERE id = 100",
            )
            .unwrap();
        }
        if n == 10 {
            prepared
                .batch_execute(
                    "BEGIN; INSERT INTO ledger VALUES (800010, 'prepared'); \
                     PREPARE TRANSACTION 'p10'",
                )
                .unwrap();
        }
        let mut sql = format!(
            "BEGIN; INSERT INTO ledger VALUES ({n}, 'main'); \
             UPDATE acct SET bal = bal + {n} WHERE id = {};",
            n % 20
        );
        if n % 5 == 1 {
            sql += &format!(
                "SAVEPOINT s; INSERT INTO ledger VALUES ({}, 'sub'); ROLLBACK TO s;",
                n + 100_000
            );
        }
        if n % 5 == 2 {
            sql += &format!(
                "SAVEPOINT s; INSERT INTO ledger VALUES ({}, 'sub'); \
                 UPDATE acct SET bal = bal + 1 WHERE id = {}; RELEASE s;",
                n + 200_000,
                (n + 1) % 20
            );
        }
        main.batch_execute(&sql).unwrap();
        if n % 3 == 0 {
            // A point inside the transaction: before its commit.
            record(&mut main, &model, &mut log, format!("inside {n}"));
        }
        if n % 7 == 3 {
            main.batch_execute("ROLLBACK").unwrap();
        } else {
            main.batch_execute("COMMIT").unwrap();
            model.ledger.insert(n, "main".into());
            *model.balances.get_mut(&(n % 20)).unwrap() += i64::from(n);
            if n % 5 == 2 {
                model.ledger.insert(n + 200_000, "sub".into());
                *model.balances.get_mut(&((n + 1) % 20)).unwrap() += 1;
            }
        }
        record(&mut main, &model, &mut log, format!("after {n}"));
        if n == 30 {
            prepared.batch_execute("COMMIT PREPARED 'p10'").unwrap();
            model.ledger.insert(800010, "prepared".into());
            record(
                &mut prepared,
                &model,
                &mut log,
                "after the prepared one".into(),
            );
        }
        if n == 40 {
            long.batch_execute("COMMIT").unwrap();
            model.ledger.insert(900005, "long".into());
            *model.balances.get_mut(&100).unwrap() += 1000;
            record(&mut long, &model, &mut log, "after the long one".into());
        }
        if n % 10 == 0 {
            probe.batch_execute("VACUUM acct, ledger").unwrap();
        }
        thread::sleep(Duration::from_millis(40));
    }
    log
}

const WORKLOAD_TABLES: &str = "CREATE TABLE ledger (n int PRIMARY KEY, note text); \
     CREATE TABLE acct (id int PRIMARY KEY, bal bigint NOT NULL); \
     INSERT INTO acct SELECT g, 0 FROM generate_series(0, 19) g; \
     INSERT INTO acct VALUES (100, 0);";

#[test]
fn twenty_points_hold_exactly_the_transactions_committed_before_them() {
    let cluster = retained_prod(WORKLOAD_TABLES);
    let log = run_workload(&cluster);
    wait_for_mark_after_now(&cluster);
    // 20 points over the window, both forms, several between the same two
    // commits (a point inside a transaction and the one after the commit
    // before it), including points while the long and the prepared
    // transaction were open and after each committed.
    let between: Vec<usize> = (0..log.len())
        .filter(|&i| log[i].2 == "after 29" || log[i].2 == "inside 30")
        .collect();
    assert_eq!(between.len(), 4, "both forms after commit 29 and inside 30");
    let others: Vec<usize> = (0..log.len()).filter(|i| !between.contains(i)).collect();
    let step = others.len() / 16;
    let mut chosen: Vec<usize> = (0..16).map(|i| others[i * step + (i % 2)]).collect();
    chosen.extend(&between);
    chosen.sort_unstable();
    chosen.dedup();
    assert!(chosen.len() >= 20, "{} points", chosen.len());
    for (k, &i) in chosen.iter().enumerate() {
        let (point, model, label) = &log[i];
        let clone = format!("pit_{k}");
        let made = rows(
            &cluster,
            "postgres",
            &format!(
                "SELECT clone_point_lsn FROM cow.clone('prod', '{clone}', {})",
                point.argument()
            ),
        );
        if let Point::Lsn(lsn) = point {
            assert_eq!(
                &made[..],
                std::slice::from_ref(lsn),
                "the clone reports the point asked"
            );
        }
        assert_clone_is(
            &cluster,
            &clone,
            model,
            &format!("{clone} as of {point:?} ({label})"),
        );
        assert_eq!(
            rows(
                &cluster,
                "postgres",
                &format!(
                    "SELECT clone_point_lsn::text = '{}', clone_point_time < created_at \
                     FROM cow.clones WHERE clone = '{clone}'",
                    made[0]
                )
            ),
            ["t|t"],
            "cow.clones shows {clone}'s point apart from its creation"
        );
    }
    // The clones are ordinary clones: writable, and the source's VACUUM
    // keeps what they read.
    cluster
        .psql("pit_3", "UPDATE acct SET bal = -1 WHERE id = 1")
        .unwrap();
    cluster
        .psql("prod", "UPDATE acct SET bal = bal + 1")
        .unwrap();
    cluster.psql("prod", "VACUUM acct, ledger").unwrap();
    let mut changed = log[chosen[3]].1.clone();
    changed.balances.insert(1, -1);
    assert_clone_is(
        &cluster,
        "pit_3",
        &changed,
        "pit_3 after its write and the source's VACUUM",
    );
    assert_clone_is(
        &cluster,
        "pit_7",
        &log[chosen[7]].1,
        "pit_7 after the source's VACUUM",
    );
    // A clone of a past point materializes like any clone, into its point's rows.
    assert_eq!(
        rows(
            &cluster,
            "postgres",
            "SELECT status FROM cow.materialize('pit_7')"
        ),
        ["materialized"]
    );
    assert_clone_is(&cluster, "pit_7", &log[chosen[7]].1, "pit_7 materialized");
}

fn err(cluster: &Cluster, db: &str, sql: &str) -> postgres::Error {
    cluster
        .connect(db)
        .unwrap()
        .batch_execute(sql)
        .expect_err(sql)
}

#[test]
fn the_catalog_is_the_points_and_rewritten_storage_is_refused() {
    let cluster = retained_prod(
        "CREATE TABLE kept (a int PRIMARY KEY, c text); \
         INSERT INTO kept SELECT g, 'c' || g FROM generate_series(1, 50) g; \
         CREATE SEQUENCE seq; SELECT nextval('seq') FROM generate_series(1, 5);",
    );
    let point = |what: &str| {
        let p = rows(&cluster, "prod", "SELECT pg_current_wal_insert_lsn()");
        thread::sleep(Duration::from_millis(20));
        println!("{what}: {}", p[0]);
        p[0].clone()
    };
    // A session's temporary table, alive at p0 and gone later: a clone gets
    // no storage for it, so its going refuses nothing.
    let mut session = cluster.connect("prod").unwrap();
    session
        .batch_execute("CREATE TEMP TABLE scratch (x int); INSERT INTO scratch VALUES (1)")
        .unwrap();
    let p0 = point("before DDL");
    drop(session);
    cluster
        .psql(
            "prod",
            "CREATE TABLE born (x int); INSERT INTO born VALUES (1); \
             SELECT nextval('seq') FROM generate_series(1, 5);",
        )
        .unwrap();
    let p1 = point("born created");
    cluster
        .psql(
            "prod",
            "ALTER TABLE kept ADD COLUMN b int DEFAULT 7; ALTER TABLE kept RENAME COLUMN a TO a2; \
             ALTER TABLE kept DROP COLUMN c; INSERT INTO kept VALUES (51, 8);",
        )
        .unwrap();
    let p2 = point("kept altered");
    cluster.psql("prod", "DROP TABLE born").unwrap();
    let p3 = point("born dropped");
    wait_for_mark_after_now(&cluster);

    let clone = |name: &str, lsn: &str| {
        cluster.psql(
            "postgres",
            &format!("SELECT cow.clone('prod', '{name}', as_of_lsn => '{lsn}')"),
        )
    };
    wait_until("the temporary table to go", Duration::from_secs(30), || {
        rows(
            &cluster,
            "prod",
            "SELECT count(*) FROM pg_class WHERE relname = 'scratch'",
        ) == ["0"]
    });
    clone("at_p0", &p0).unwrap();
    assert_eq!(
        rows(
            &cluster,
            "at_p0",
            "SELECT count(*) FROM pg_class WHERE relname = 'born'"
        ),
        ["0"],
        "a table created after the point is absent"
    );
    assert_eq!(
        rows(
            &cluster,
            "at_p0",
            "SELECT a, c FROM kept WHERE a IN (1, 50) ORDER BY a"
        ),
        ["1|c1", "50|c50"],
        "columns as they were, a dropped one with its data"
    );
    assert_eq!(rows(&cluster, "at_p0", "SELECT count(*) FROM kept"), ["50"]);
    // Sequences start from today's value, which is never lower.
    assert_eq!(rows(&cluster, "at_p0", "SELECT nextval('seq')"), ["11"]);
    // `born` existed at p1 and p2, and its storage is gone.
    for (name, lsn) in [("at_p1", &p1), ("at_p2", &p2)] {
        let e = err(
            &cluster,
            "postgres",
            &format!("SELECT cow.clone('prod', '{name}', as_of_lsn => '{lsn}')"),
        );
        assert_eq!(sqlstate(&e), "55000", "{name}: {e}");
        let db = e.as_db_error().unwrap();
        assert!(
            db.message().contains("was dropped or rewritten since")
                && db.detail().unwrap_or_default().contains("\"born\"")
                && db.hint().unwrap_or_default().starts_with("Points from"),
            "{name}: {db:?}"
        );
    }
    assert_eq!(
        rows(
            &cluster,
            "postgres",
            "SELECT count(*) FROM pg_database WHERE datname IN ('at_p1', 'at_p2')"
        ),
        ["0"],
        "a refused clone leaves nothing"
    );
    clone("at_p3", &p3).unwrap();
    assert_eq!(
        rows(
            &cluster,
            "at_p3",
            "SELECT a2, b FROM kept WHERE a2 IN (1, 51) ORDER BY a2"
        ),
        ["1|7", "51|8"]
    );
    assert_eq!(
        rows(
            &cluster,
            "at_p3",
            "SELECT count(*) FROM pg_attribute WHERE attrelid = 'kept'::regclass AND attname = 'c'"
        ),
        ["0"]
    );
    assert_eq!(
        rows(
            &cluster,
            "at_p3",
            "SELECT count(*) FROM pg_class WHERE relname = 'born'"
        ),
        ["0"]
    );
    // A rewrite after the point: the clone is refused with the earliest
    // point that works; the hint's point does work. The clones of `kept`
    // must go first (the source guard refuses the rewrite while they read it).
    for c in ["at_p0", "at_p3"] {
        cluster
            .psql("postgres", &format!("DROP DATABASE {c}"))
            .unwrap();
    }
    let p4 = point("before VACUUM FULL");
    cluster.psql("prod", "VACUUM FULL kept").unwrap();
    wait_for_mark_after_now(&cluster);
    let e = err(
        &cluster,
        "postgres",
        &format!("SELECT cow.clone('prod', 'at_p4', as_of_lsn => '{p4}')"),
    );
    assert_eq!(sqlstate(&e), "55000", "{e}");
    let db = e.as_db_error().unwrap();
    assert!(db.detail().unwrap().contains("\"kept\""), "{db:?}");
    let hint = db.hint().unwrap().to_string();
    let earliest = hint
        .strip_prefix("Points from ")
        .and_then(|h| h.split(' ').next())
        .unwrap_or_else(|| panic!("hint {hint}"))
        .to_string();
    clone("at_rewrite", &earliest).unwrap();
    assert_eq!(
        rows(&cluster, "at_rewrite", "SELECT count(*), sum(b) FROM kept"),
        ["51|358"]
    );
}

#[test]
fn points_outside_the_window_and_bad_requests_are_refused() {
    let cluster = retained_prod("CREATE TABLE t (i int); INSERT INTO t VALUES (1);");
    let cases: &[(&str, &str, &str)] = &[
        (
            "postgres",
            "SELECT cow.clone('prod', 'x', as_of => now() + interval '1 hour')",
            "22023",
        ),
        (
            "postgres",
            "SELECT cow.clone('prod', 'x', as_of => now() - interval '1 day')",
            "55000",
        ),
        (
            "postgres",
            "SELECT cow.clone('prod', 'x', as_of_lsn => '0/10')",
            "55000",
        ),
        (
            "postgres",
            "SELECT cow.clone('prod', 'x', as_of_lsn => 'FFFFFFFF/0')",
            "22023",
        ),
        (
            "postgres",
            "SELECT cow.clone('prod', 'x', as_of => now(), as_of_lsn => '0/10')",
            "22023",
        ),
        (
            "postgres",
            "SELECT cow.clone_database('postgres', 'x', pg_current_wal_insert_lsn())",
            "55000",
        ),
        (
            "postgres",
            "SELECT cow.clone(NULL, 'x', as_of => now())",
            "22004",
        ),
        (
            "postgres",
            "SELECT cow.set_retention(NULL, interval '1 hour')",
            "22004",
        ),
        (
            "postgres",
            "SELECT cow.set_retention('nope', interval '1 hour')",
            "3D000",
        ),
        (
            "postgres",
            "SELECT cow.set_retention('prod', interval '-1 hour')",
            "22023",
        ),
    ];
    for (db, sql, state) in cases {
        let e = err(&cluster, db, sql);
        assert_eq!(sqlstate(&e), *state, "{sql}: {e}");
    }
    let before = err(
        &cluster,
        "postgres",
        "SELECT cow.clone('prod', 'x', as_of => now() - interval '1 day')",
    );
    let hint = before.as_db_error().unwrap().hint().unwrap().to_string();
    assert!(
        hint.starts_with("The earliest point that can be cloned is "),
        "{hint}"
    );
    // Only the owner (or a superuser) sets a database's retention.
    cluster
        .psql("postgres", "CREATE ROLE stranger LOGIN CREATEDB")
        .unwrap();
    let e = cluster
        .connect_as("stranger", "postgres")
        .unwrap()
        .batch_execute("SELECT cow.set_retention('prod', interval '1 hour')")
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42501");
    // A clone has no history of its own yet.
    cluster
        .psql("postgres", "SELECT cow.clone('prod', 'plain')")
        .unwrap();
    let e = err(
        &cluster,
        "postgres",
        "SELECT cow.set_retention('plain', interval '1 hour')",
    );
    assert_eq!(sqlstate(&e), "0A000");
    assert_eq!(
        rows(
            &cluster,
            "postgres",
            "SELECT count(*) FROM pg_database WHERE datname = 'x'"
        ),
        ["0"]
    );
    // A clone as of a point inside the window works from the design's name too.
    let lsn = rows(&cluster, "prod", "SELECT pg_current_wal_insert_lsn()");
    wait_for_mark_after_now(&cluster);
    cluster
        .psql(
            "postgres",
            &format!("SELECT cow.clone_database('prod', 'by_name', '{}')", lsn[0]),
        )
        .unwrap();
    assert_eq!(rows(&cluster, "by_name", "SELECT i FROM t"), ["1"]);
    // Switching retention off lets go of its WAL slot and marks; the pin
    // stays for the clones.
    assert_eq!(
        rows(
            &cluster,
            "postgres",
            "SELECT cow.set_retention('prod', NULL)"
        ),
        ["f"]
    );
    assert_eq!(
        rows(&cluster, "postgres", "SELECT count(*) FROM cow.retention"),
        ["0"]
    );
    wait_until("the history slot to go", Duration::from_secs(30), || {
        rows(
            &cluster,
            "postgres",
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'cowclone_history_%'",
        ) == ["0"]
    });
    let e = err(
        &cluster,
        "postgres",
        &format!("SELECT cow.clone('prod', 'y', as_of_lsn => '{}')", lsn[0]),
    );
    assert_eq!(sqlstate(&e), "55000");
    assert_eq!(rows(&cluster, "by_name", "SELECT i FROM t"), ["1"]);
}

#[test]
fn the_history_survives_restart_and_crash_and_pins_its_source_alone() {
    let mut cluster = retained_prod(WORKLOAD_TABLES);
    cluster.psql("postgres", "CREATE DATABASE other").unwrap();
    cluster
        .psql(
            "other",
            "CREATE TABLE o (i int); INSERT INTO o SELECT generate_series(1, 100)",
        )
        .unwrap();
    let log = run_workload(&cluster);
    wait_for_mark_after_now(&cluster);
    // Other databases pay nothing for the window; the source keeps the
    // versions the window's points see.
    cluster.psql("other", "UPDATE o SET i = i + 1").unwrap();
    assert_eq!(vacuum_counts(&cluster, "other", "o"), (100, 0));
    cluster
        .psql("prod", "UPDATE acct SET bal = bal + 1")
        .unwrap();
    let (_, not_removable) = vacuum_counts(&cluster, "prod", "acct");
    assert!(not_removable > 0, "the source's window keeps dead versions");

    cluster.stop().unwrap();
    cluster.start().unwrap();
    let (point, model, _) = &log[log.len() / 3];
    cluster
        .psql(
            "postgres",
            &format!(
                "SELECT cow.clone('prod', 'after_restart', {})",
                point.argument()
            ),
        )
        .unwrap();
    assert_clone_is(&cluster, "after_restart", model, "after a restart");

    cluster.crash().unwrap();
    cluster.start().unwrap();
    let (point, model, _) = &log[log.len() / 2 + 1];
    cluster
        .psql(
            "postgres",
            &format!(
                "SELECT cow.clone('prod', 'after_crash', {})",
                point.argument()
            ),
        )
        .unwrap();
    assert_clone_is(&cluster, "after_crash", model, "after a crash");
    assert_clone_is(
        &cluster,
        "after_restart",
        &log[log.len() / 3].1,
        "the first clone after the crash",
    );
    // The launcher goes on marking after both, and after it is terminated
    // (the postmaster starts it again).
    wait_for_mark_after_now(&cluster);
    assert_eq!(
        rows(
            &cluster,
            "postgres",
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE backend_type = 'cowclone launcher'"
        ),
        ["t"]
    );
    wait_for_mark_after_now(&cluster);
}

#[test]
fn history_cut_short_by_max_slot_wal_keep_size_is_refused_never_guessed() {
    let cluster = start_test_cluster(|c| {
        c.settings.push("cow.retention_mark_interval = 1".into());
        c.settings.push("max_slot_wal_keep_size = 16MB".into());
        c.settings.push("max_wal_size = 64MB".into());
    })
    .unwrap();
    cluster
        .psql("postgres", "CREATE EXTENSION cowclone")
        .unwrap();
    cluster.psql("postgres", "CREATE DATABASE prod").unwrap();
    cluster
        .psql(
            "prod",
            "CREATE EXTENSION cowclone; CREATE TABLE t (i int); INSERT INTO t VALUES (1)",
        )
        .unwrap();
    cluster
        .psql(
            "postgres",
            "SELECT cow.set_retention('prod', interval '1 hour')",
        )
        .unwrap();
    wait_for_window(&cluster);
    let lost = rows(&cluster, "prod", "SELECT pg_current_wal_insert_lsn()");
    cluster.psql("prod", "INSERT INTO t VALUES (2)").unwrap();
    wait_for_mark_after_now(&cluster);
    // More WAL than max_slot_wal_keep_size lets the slot keep, then a
    // checkpoint: PostgreSQL invalidates the history slot.
    for _ in 0..5 {
        cluster
            .psql(
                "prod",
                "CREATE TABLE filler AS SELECT g, repeat('x', 500) FROM generate_series(1, 20000) g; DROP TABLE filler; SELECT pg_switch_wal()",
            )
            .unwrap();
    }
    cluster.psql("postgres", "CHECKPOINT").unwrap();
    wait_until(
        "the history slot to be invalidated and made again",
        Duration::from_secs(30),
        || {
            rows(
                &cluster,
                "postgres",
                &format!("SELECT window_start_lsn > '{}' FROM cow.retention", lost[0]),
            ) == ["t"]
        },
    );
    assert!(
        cluster.log().contains("was lost"),
        "the loss of the history is logged"
    );
    let e = err(
        &cluster,
        "postgres",
        &format!(
            "SELECT cow.clone('prod', 'gone', as_of_lsn => '{}')",
            lost[0]
        ),
    );
    assert_eq!(sqlstate(&e), "55000", "{e}");
    // The new window works.
    let point = rows(&cluster, "prod", "SELECT pg_current_wal_insert_lsn()");
    cluster.psql("prod", "INSERT INTO t VALUES (3)").unwrap();
    wait_for_mark_after_now(&cluster);
    cluster
        .psql(
            "postgres",
            &format!(
                "SELECT cow.clone('prod', 'kept', as_of_lsn => '{}')",
                point[0]
            ),
        )
        .unwrap();
    assert_eq!(
        rows(&cluster, "kept", "SELECT i FROM t ORDER BY i"),
        ["1", "2"]
    );
}

#[test]
fn a_point_in_time_clone_reaches_a_standby_and_a_promoted_one_starts_its_window_again() {
    let cluster = retained_prod("CREATE TABLE t (i int PRIMARY KEY); INSERT INTO t VALUES (1);");
    let point = rows(&cluster, "prod", "SELECT pg_current_wal_insert_lsn()");
    cluster.psql("prod", "INSERT INTO t VALUES (2)").unwrap();
    wait_for_mark_after_now(&cluster);
    let mut config = pg_test::ClusterConfig::for_tests().unwrap();
    config
        .settings
        .push("cow.retention_mark_interval = 1".into());
    // A standby needs at least the primary's max_prepared_transactions.
    config.settings.push("max_prepared_transactions = 4".into());
    let mut standby = cluster.base_backup(config, true).unwrap();
    standby.start().unwrap();
    cluster
        .psql(
            "postgres",
            &format!(
                "SELECT cow.clone('prod', 'then', as_of_lsn => '{}')",
                point[0]
            ),
        )
        .unwrap();
    cluster.wait_for_replay(&standby).unwrap();
    for plan in PLANS {
        assert_eq!(
            rows(
                &standby,
                "then",
                &format!("{plan} SELECT i FROM t WHERE i > 0 ORDER BY i")
            ),
            ["1"],
            "the standby under {plan}"
        );
    }
    // A standby records no history and makes no clones.
    assert_eq!(
        rows(
            &standby,
            "postgres",
            "SELECT database, window_start_lsn IS NULL FROM cow.retention"
        ),
        ["prod|t"]
    );
    for sql in [
        "SELECT cow.set_retention('prod', NULL)".to_string(),
        format!("SELECT cow.clone('prod', 'x', as_of_lsn => '{}')", point[0]),
    ] {
        let e = standby
            .connect("postgres")
            .unwrap()
            .batch_execute(&sql)
            .unwrap_err();
        assert_eq!(sqlstate(&e), "25006", "{sql}");
    }
    // Promoted, it keeps retention on and starts a window of its own.
    standby.promote().unwrap();
    wait_until(
        "the promoted server's first mark",
        Duration::from_secs(30),
        || {
            rows(
                &standby,
                "postgres",
                &format!(
                    "SELECT window_start_lsn > '{}' FROM cow.retention",
                    point[0]
                ),
            ) == ["t"]
        },
    );
    let e = standby
        .connect("postgres")
        .unwrap()
        .batch_execute(&format!(
            "SELECT cow.clone('prod', 'x', as_of_lsn => '{}')",
            point[0]
        ))
        .unwrap_err();
    assert_eq!(
        sqlstate(&e),
        "55000",
        "a point before the promoted server's window"
    );
    let after = rows(&standby, "prod", "SELECT pg_current_wal_insert_lsn()");
    standby.psql("prod", "INSERT INTO t VALUES (3)").unwrap();
    wait_until("a mark after the point", Duration::from_secs(30), || {
        rows(
            &standby,
            "postgres",
            &format!(
                "SELECT newest_mark_lsn >= '{}' FROM cow.retention",
                after[0]
            ),
        ) == ["t"]
    });
    standby
        .psql(
            "postgres",
            &format!(
                "SELECT cow.clone('prod', 'later', as_of_lsn => '{}')",
                after[0]
            ),
        )
        .unwrap();
    assert_eq!(
        rows(&standby, "later", "SELECT i FROM t ORDER BY i"),
        ["1", "2"]
    );
    assert_eq!(rows(&standby, "then", "SELECT i FROM t ORDER BY i"), ["1"]);
}

#[test]
fn without_a_holder_the_launcher_keeps_marking_and_moves_the_pin_up() {
    // The cowclone launcher and the logical replication launcher: no room
    // for a holder.
    let cluster = start_test_cluster(|c| {
        c.settings.push("cow.retention_mark_interval = 1".into());
        c.settings.push("max_worker_processes = 2".into());
        c.settings.push("max_parallel_workers = 0".into());
    })
    .unwrap();
    cluster
        .psql("postgres", "CREATE EXTENSION cowclone")
        .unwrap();
    cluster.psql("postgres", "CREATE DATABASE prod").unwrap();
    cluster
        .psql(
            "prod",
            "CREATE EXTENSION cowclone; CREATE TABLE t (i int); INSERT INTO t VALUES (1)",
        )
        .unwrap();
    cluster
        .psql(
            "postgres",
            "SELECT cow.set_retention('prod', interval '2 seconds')",
        )
        .unwrap();
    wait_for_window(&cluster);
    let slot_xmin = || {
        rows(
            &cluster,
            "postgres",
            "SELECT xmin::text::bigint FROM pg_replication_slots WHERE slot_name LIKE 'cowclone_source_%'",
        )[0]
        .parse::<i64>()
        .unwrap()
    };
    assert_eq!(
        rows(
            &cluster,
            "postgres",
            "SELECT scope, holder_pid IS NULL FROM cow.pins"
        ),
        ["cluster-wide|t"],
        "no holder could start"
    );
    let before = slot_xmin();
    let point = rows(&cluster, "prod", "SELECT pg_current_wal_insert_lsn()");
    for i in 2..=20 {
        cluster
            .psql("prod", &format!("INSERT INTO t VALUES ({i})"))
            .unwrap();
    }
    wait_for_mark_after_now(&cluster);
    cluster
        .psql(
            "postgres",
            &format!(
                "SELECT cow.clone('prod', 'past', as_of_lsn => '{}')",
                point[0]
            ),
        )
        .unwrap();
    assert_eq!(rows(&cluster, "past", "SELECT i FROM t"), ["1"]);
    cluster.psql("postgres", "DROP DATABASE past").unwrap();
    // The window slides past the inserts: the slot's pin follows it.
    wait_until("the slot's pin to move up", Duration::from_secs(30), || {
        slot_xmin() >= before + 19
    });
}
