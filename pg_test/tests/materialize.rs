//! Materializing a clone (issue #18): it copies every row it still reads
//! from its source into its own storage, table by table, while it is read
//! and written, and ends as an ordinary database that no longer needs its
//! source.

mod common;

use std::io::Write;
use std::process::Stdio;
use std::thread;
use std::time::{Duration, Instant};

use common::{
    app_tables, assert_tpcb_invariant, contents, rich_schema, rows, sqlstate, tpcb_sums,
    wait_until, INDEXED_QUERIES,
};
use pg_test::{start_test_cluster, Cluster};

/// Relations of `db` still using one of cowclone's access methods.
fn cow_relations(cluster: &Cluster, db: &str) -> Vec<String> {
    rows(
        cluster,
        db,
        "SELECT c.relname || ' ' || a.amname FROM pg_class c JOIN pg_am a ON a.oid = c.relam \
         WHERE a.amname LIKE 'cow%' ORDER BY 1",
    )
}

/// amcheck on every btree index (with heapallindexed) and every heap of
/// `db`'s user relations: the problems found.
fn amcheck_problems(cluster: &Cluster, db: &str) -> Vec<String> {
    cluster
        .psql(db, "CREATE EXTENSION IF NOT EXISTS amcheck")
        .unwrap();
    let checked = rows(
        cluster,
        db,
        "SELECT count(bt_index_parent_check(c.oid, true)) FROM pg_class c \
         WHERE c.relkind = 'i' AND c.relam = 403 AND c.oid >= 16384 AND c.relpersistence <> 't'",
    );
    assert_ne!(checked, ["0"], "no btree index checked in {db}");
    rows(
        cluster,
        db,
        "SELECT s.relname || ': ' || v.msg FROM (SELECT c.oid, c.relname FROM pg_class c \
         WHERE c.relkind IN ('r', 'm', 't') AND c.oid >= 16384 AND c.relpersistence <> 't' OFFSET 0) s, \
         LATERAL verify_heapam(s.oid) v",
    )
}

/// Every application table's full contents, under a sequential plan.
fn all_contents(cluster: &Cluster, db: &str, tables: &[String]) -> Vec<(String, Vec<String>)> {
    tables
        .iter()
        .map(|t| {
            (
                t.clone(),
                contents(
                    cluster,
                    db,
                    t,
                    "SET enable_indexscan = off; SET enable_bitmapscan = off;",
                ),
            )
        })
        .collect()
}

/// Asserts two recordings of table contents are equal, naming the tables
/// that differ and a few of the rows each side has alone.
fn assert_same_contents(got: &[(String, Vec<String>)], want: &[(String, Vec<String>)], what: &str) {
    let mut problems = Vec::new();
    for ((table, g), (_, w)) in got.iter().zip(want) {
        if g != w {
            let only_got: Vec<&String> = g.iter().filter(|r| !w.contains(r)).take(3).collect();
            let only_want: Vec<&String> = w.iter().filter(|r| !g.contains(r)).take(3).collect();
            problems.push(format!(
                "{table}: {} rows, expected {}; only got {only_got:?}; only expected {only_want:?}",
                g.len(),
                w.len()
            ));
        }
    }
    assert!(
        problems.is_empty() && got.len() == want.len(),
        "{what}: {problems:#?}"
    );
}

/// Asserts the indexed queries answer the same, naming those that do not.
fn assert_same_answers(got: &[Vec<String>], want: &[Vec<String>], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    let differing: Vec<String> = got
        .iter()
        .zip(want)
        .enumerate()
        // A KNN query's LIMIT may cut between rows at the same distance,
        // in any order: those are compared by their distances (below).
        .filter(|(i, (g, w))| {
            let per_plan = INDEXED_QUERIES.len() + 1;
            let knn_ids = INDEXED_QUERIES
                .get(i % per_plan)
                .is_some_and(|q| q.contains("LIMIT"));
            g != w && !knn_ids
        })
        .map(|(i, (g, w))| {
            let per_plan = INDEXED_QUERIES.len() + 1;
            let query = INDEXED_QUERIES
                .get(i % per_plan)
                .copied()
                .unwrap_or("KNN distances");
            format!(
                "plan {} query {query:?}: got {} rows, expected {}",
                i / per_plan,
                g.len(),
                w.len()
            )
        })
        .collect();
    assert!(differing.is_empty(), "{what}: {differing:#?}");
}

/// A test cluster with cowclone in `postgres` (where the tests call it
/// from) and in database `prod`, where `setup` runs after it.
fn cluster_with_prod(setup: &str) -> Cluster {
    let cluster = start_test_cluster(|_| {}).unwrap();
    cluster
        .psql("postgres", "CREATE EXTENSION cowclone")
        .unwrap();
    cluster.psql("postgres", "CREATE DATABASE prod").unwrap();
    cluster
        .psql("prod", &format!("CREATE EXTENSION cowclone; {setup}"))
        .unwrap();
    cluster
}

/// The status `cow.clones` shows for `clone` (asked in `postgres`).
fn status_of(cluster: &Cluster, clone: &str) -> Vec<String> {
    rows(
        cluster,
        "postgres",
        &format!("SELECT status FROM cow.clones WHERE clone = '{clone}'"),
    )
}

fn wait_until_materialized(cluster: &Cluster, clone: &str, what: &str, timeout: Duration) {
    wait_until(what, timeout, || {
        status_of(cluster, clone) == ["materialized"]
    });
}

/// Sets `cow.materialize_rate_limit` (MB/s; None: the default) and reloads.
fn set_rate_limit(cluster: &Cluster, mb_per_s: Option<u32>) {
    let set = match mb_per_s {
        Some(rate) => format!("ALTER SYSTEM SET cow.materialize_rate_limit = {rate}"),
        None => "ALTER SYSTEM RESET cow.materialize_rate_limit".to_string(),
    };
    cluster.psql("postgres", &set).unwrap();
    cluster.psql("postgres", "SELECT pg_reload_conf()").unwrap();
}

/// The rich schema's indexed queries under an index plan and a bitmap plan.
fn indexed_answers(cluster: &Cluster, db: &str) -> Vec<Vec<String>> {
    let mut answers = Vec::new();
    for settings in [
        "SET enable_seqscan = off; SET enable_bitmapscan = off;",
        "SET enable_seqscan = off; SET enable_indexscan = off;",
        "SET enable_indexscan = off; SET enable_bitmapscan = off;",
    ] {
        for q in INDEXED_QUERIES {
            answers.push(rows(cluster, db, &format!("{settings} {q}")));
        }
        answers.push(rows(
            cluster,
            db,
            &format!("{settings} SELECT round((pt <-> point(30, -30))::numeric, 9) FROM app.everything ORDER BY pt <-> point(30, -30) LIMIT 5"),
        ));
    }
    answers
}

fn pgbench(cluster: &Cluster, db: &str, args: &[&str]) -> std::process::Child {
    cluster
        .client_command("pgbench", db)
        .args(args)
        .stdout(Stdio::piped())
        // client_command names the database with -d, which pgbench also
        // reads as --debug: its trace would fill an unread pipe.
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn finished_cleanly(child: std::process::Child) -> String {
    let output = child.wait_with_output().unwrap();
    let report = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "pgbench failed: {report}");
    report
}

fn source_with_rich_schema() -> Cluster {
    let cluster = cluster_with_prod("");
    cluster.psql_file("prod", &rich_schema()).unwrap();
    let init = cluster
        .client_command("pgbench", "prod")
        .args(["-i", "-q", "-s", "2"])
        .output()
        .unwrap();
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    cluster
        .psql(
            "prod",
            "CREATE TABLE app.blobs (id int PRIMARY KEY, lo oid); \
             INSERT INTO app.blobs SELECT g, lo_from_bytea(0, convert_to(repeat('blob ' || g, 2000), 'UTF8')) \
             FROM generate_series(1, 3) g;",
        )
        .unwrap();
    cluster
}

/// The oracle: a rich schema, cloned, churned on both sides, then
/// materialized while pgbench runs in the clone and the source is churned
/// and vacuumed. Afterwards the clone holds exactly what it held plus what
/// pgbench did, uses only plain access methods, passes amcheck, survives
/// its source's drop, and its dump restores.
#[test]
fn a_clone_materialized_under_load_keeps_every_row() {
    let cluster = source_with_rich_schema();
    let mut apps = app_tables(&cluster, "prod");
    apps.push("app.blobs".into());
    cluster
        .psql("prod", "SELECT cow.clone('prod', 'staging')")
        .unwrap();
    // The source moves on; the clone writes rows, DDL and an index of its own.
    cluster
        .psql(
            "prod",
            "UPDATE app.everything SET label = 'moved on' WHERE id % 3 = 0; DELETE FROM app.child WHERE id % 4 = 0; \
             INSERT INTO app.parent SELECT g FROM generate_series(100000, 100100) g;",
        )
        .unwrap();
    cluster
        .psql(
            "staging",
            "UPDATE app.everything SET label = 'clone ' || id WHERE id % 5 = 0; \
             DELETE FROM app.everything WHERE id % 7 = 0; \
             UPDATE app.events SET payload = payload || '!' WHERE id % 2 = 0; \
             INSERT INTO app.parent SELECT g FROM generate_series(200000, 200050) g; \
             ALTER TABLE app.parent ADD COLUMN note text DEFAULT 'n'; \
             CREATE INDEX everything_label_clone ON app.everything (label); \
             CREATE TABLE app.clone_only AS SELECT g AS id FROM generate_series(1, 100) g; \
             SELECT lo_put((SELECT lo FROM app.blobs WHERE id = 1), 0, 'CHANGED');",
        )
        .unwrap();
    apps.push("app.clone_only".into());
    let before = all_contents(&cluster, "staging", &apps);
    let blobs_query = "SELECT id, md5(lo_get(lo)) FROM app.blobs ORDER BY id";
    let blobs = rows(&cluster, "staging", blobs_query);
    let indexed_before = indexed_answers(&cluster, "staging");
    let accounts_before = rows(
        &cluster,
        "staging",
        "SELECT count(*), sum(aid) FROM pgbench_accounts",
    );
    assert_tpcb_invariant(&cluster, "staging");

    let load = pgbench(
        &cluster,
        "staging",
        &["-c", "4", "-j", "2", "-T", "15", "-n"],
    );
    let mut source = cluster.connect("prod").unwrap();
    let churn = thread::spawn(move || {
        let started = Instant::now();
        let mut rounds = 0;
        while started.elapsed() < Duration::from_secs(10) {
            source
                .batch_execute("UPDATE app.everything SET flag = NOT flag WHERE id % 11 = 0; UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid % 97 = 0")
                .unwrap();
            source.batch_execute("VACUUM app.everything").unwrap();
            source.batch_execute("VACUUM pgbench_accounts").unwrap();
            rounds += 1;
        }
        rounds
    });
    thread::sleep(Duration::from_secs(2));
    let outcome = rows(
        &cluster,
        "postgres",
        "SELECT status, tables > 0 FROM cow.materialize('staging')",
    );
    assert_eq!(outcome, ["materialized|t"]);
    let duplicates = rows(
        &cluster,
        "staging",
        "SELECT aid, ctid, xmin, xmax, abalance FROM pgbench_accounts WHERE aid IN \
         (SELECT aid FROM pgbench_accounts GROUP BY aid HAVING count(*) > 1) ORDER BY aid",
    );
    assert!(duplicates.is_empty(), "duplicated accounts: {duplicates:?}");
    let report = finished_cleanly(load);
    assert!(
        report.contains("number of failed transactions: 0"),
        "{report}"
    );
    assert!(churn.join().unwrap() > 0);

    // Exactly the recording plus what pgbench did.
    assert_same_contents(
        &all_contents(&cluster, "staging", &apps),
        &before,
        "after materialize",
    );
    assert_same_answers(
        &indexed_answers(&cluster, "staging"),
        &indexed_before,
        "after materialize",
    );
    assert_eq!(
        rows(
            &cluster,
            "staging",
            "SELECT count(*), sum(aid) FROM pgbench_accounts"
        ),
        accounts_before
    );
    assert_tpcb_invariant(&cluster, "staging");
    assert_eq!(rows(&cluster, "staging", blobs_query), blobs);
    assert!(
        cow_relations(&cluster, "staging").is_empty(),
        "{:?}",
        cow_relations(&cluster, "staging")
    );
    assert_eq!(
        rows(&cluster, "staging", "SELECT count(*) FROM cow.tombstone"),
        ["0"]
    );
    assert_eq!(amcheck_problems(&cluster, "staging"), Vec::<String>::new());
    assert_eq!(
        rows(
            &cluster,
            "postgres",
            "SELECT clone, source, status FROM cow.clones"
        ),
        ["staging|prod|materialized"]
    );
    let tpcb_after = tpcb_sums(&cluster, "staging");

    // It no longer needs its source: the pin goes, the source can be
    // dropped and copied, and the clone still answers the same.
    wait_until("the source's pin to go", Duration::from_secs(30), || {
        rows(
            &cluster,
            "postgres",
            "SELECT count(*) FROM pg_replication_slots",
        )
        .first()
        .map(String::as_str)
            == Some("0")
    });
    cluster
        .psql(
            "postgres",
            "CREATE DATABASE copy_of_staging TEMPLATE staging",
        )
        .unwrap();
    cluster.psql("postgres", "DROP DATABASE prod").unwrap();
    assert_eq!(all_contents(&cluster, "staging", &apps), before);
    assert_eq!(tpcb_sums(&cluster, "staging"), tpcb_after);
    assert_eq!(
        rows(
            &cluster,
            "staging",
            "SELECT level, database, status FROM cow.lineage('staging')"
        ),
        ["0|prod|dropped", "1|staging|materialized"]
    );
    assert_eq!(all_contents(&cluster, "copy_of_staging", &apps), before);

    // Its dump names no cowclone access method and restores exactly.
    cluster
        .psql("postgres", "CREATE ROLE app_reader")
        .unwrap_or_default();
    cluster
        .psql("postgres", "CREATE DATABASE restored")
        .unwrap();
    let dump = cluster
        .client_command("pg_dump", "staging")
        .arg("--no-owner")
        .output()
        .unwrap();
    assert!(
        dump.status.success(),
        "{}",
        String::from_utf8_lossy(&dump.stderr)
    );
    let sql = String::from_utf8(dump.stdout).unwrap();
    assert!(
        !sql.contains("USING cow") && !sql.contains("access_method = cow"),
        "the dump names no cowclone access method"
    );
    let mut restore = cluster
        .client_command("psql", "restored")
        .args(["-q", "-v", "ON_ERROR_STOP=1", "-X"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    restore
        .stdin
        .take()
        .unwrap()
        .write_all(sql.as_bytes())
        .unwrap();
    let restored = restore.wait_with_output().unwrap();
    assert!(
        restored.status.success(),
        "{}",
        String::from_utf8_lossy(&restored.stderr)
    );
    // A materialized view's contents are recomputed by the restore.
    let not_views = |t: &String| t != "app.mood_counts";
    let tables: Vec<String> = apps.iter().filter(|t| not_views(t)).cloned().collect();
    let expected: Vec<_> = before.into_iter().filter(|(t, _)| not_views(t)).collect();
    assert_eq!(all_contents(&cluster, "restored", &tables), expected);
    assert_eq!(rows(&cluster, "restored", blobs_query), blobs);
}

/// Kill -9 of the whole server in the middle of a table, during a table's
/// switch, between tables and during the last step: the launcher resumes the
/// job after the restart, the table interrupted is redone, and the clone
/// ends exact, with no relation half switched.
#[test]
fn a_materialization_killed_at_any_point_resumes_and_ends_exact() {
    let mut cluster = source_with_rich_schema();
    let mut apps = app_tables(&cluster, "prod");
    apps.push("app.blobs".into());
    for (i, point) in [
        "materialize_mid_table",
        "materialize_switch",
        "materialize_between_tables",
        "materialize_finish",
    ]
    .iter()
    .enumerate()
    {
        let clone = format!("staging_{i}");
        cluster
            .psql("prod", &format!("SELECT cow.clone('prod', '{clone}')"))
            .unwrap();
        cluster
            .psql(&clone, "UPDATE app.everything SET label = 'written' WHERE id % 6 = 0; DELETE FROM pgbench_accounts WHERE aid % 9 = 0")
            .unwrap();
        // The crash empties unlogged tables, in the source too: the clone
        // then reads them empty, as PostgreSQL promises of unlogged tables.
        let mut before = all_contents(&cluster, &clone, &apps);
        for (table, rows) in before.iter_mut() {
            if table == "app.scratch" {
                rows.clear();
            }
        }
        let accounts = contents(&cluster, &clone, "pgbench_accounts", "");
        cluster
            .psql(
                "postgres",
                &format!("ALTER SYSTEM SET cow.debug_failpoint = 'pause:{point}'"),
            )
            .unwrap();
        cluster.psql("postgres", "SELECT pg_reload_conf()").unwrap();
        let log_before = cluster.log().len();
        cluster
            .psql(
                "postgres",
                &format!("SELECT status FROM cow.materialize('{clone}', wait => false)"),
            )
            .unwrap();
        let marker = format!("paused at failpoint \"{point}\"");
        wait_until(&marker, Duration::from_secs(60), || {
            cluster.log()[log_before..].contains(&marker)
        });
        // The pause happens inside the worker: nobody is waiting on it.
        assert_eq!(status_of(&cluster, &clone), ["materializing"]);
        cluster.crash().unwrap();
        let auto = cluster.data_dir().join("postgresql.auto.conf");
        let kept: String = std::fs::read_to_string(&auto)
            .unwrap()
            .lines()
            .filter(|l| !l.contains("debug_failpoint"))
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(&auto, kept).unwrap();
        cluster.start().unwrap();
        wait_until_materialized(
            &cluster,
            &clone,
            &format!("{clone} materialized after the restart"),
            Duration::from_secs(120),
        );
        assert_same_contents(&all_contents(&cluster, &clone, &apps), &before, point);
        assert_eq!(
            contents(&cluster, &clone, "pgbench_accounts", ""),
            accounts,
            "{point}"
        );
        assert!(
            cow_relations(&cluster, &clone).is_empty(),
            "{point}: {:?}",
            cow_relations(&cluster, &clone)
        );
        assert_eq!(
            amcheck_problems(&cluster, &clone),
            Vec::<String>::new(),
            "{point}"
        );
        let witness = cluster.data_dir().join("base").join(
            rows(
                &cluster,
                "postgres",
                &format!("SELECT oid FROM pg_database WHERE datname = '{clone}'"),
            )
            .remove(0),
        );
        wait_until("the witness to go", Duration::from_secs(10), || {
            !witness.join("cowclone_clone").exists()
        });
    }
    // The source has no clone left: it drops as any database.
    wait_until("the source's pin to go", Duration::from_secs(30), || {
        rows(
            &cluster,
            "postgres",
            "SELECT count(*) FROM pg_replication_slots",
        ) == ["0"]
    });
    cluster.psql("postgres", "DROP DATABASE prod").unwrap();
}

/// A job queued without waiting runs in the background with no session
/// open, at the rate `cow.materialize_rate_limit` sets; a cancelled job
/// leaves a clone that still answers exactly, and can be run again.
#[test]
fn a_queued_materialization_runs_alone_at_its_rate_and_can_be_cancelled() {
    let cluster = cluster_with_prod(
        "CREATE TABLE big (id int PRIMARY KEY, pad text); \
             INSERT INTO big SELECT g, repeat(md5(g::text), 6) FROM generate_series(1, 250000) g; \
             CREATE TABLE small AS SELECT g AS id FROM generate_series(1, 1000) g;",
    );
    cluster.psql("prod", "VACUUM ANALYZE").unwrap();
    let big_mb: f64 = rows(
        &cluster,
        "prod",
        "SELECT pg_relation_size('big') / 1048576.0",
    )[0]
    .parse()
    .unwrap();
    assert!(big_mb > 40.0, "big is {big_mb} MB");
    cluster
        .psql("prod", "SELECT cow.clone('prod', 'paced')")
        .unwrap();
    cluster
        .psql("prod", "SELECT cow.clone('prod', 'cancelled')")
        .unwrap();
    let expected = contents(&cluster, "prod", "big", "");

    set_rate_limit(&cluster, Some(20));
    assert_eq!(
        rows(
            &cluster,
            "postgres",
            "SELECT status FROM cow.materialize('paced', wait => false)"
        ),
        ["queued"]
    );
    // Samples of (time, bytes copied) while the big table is copied.
    let mut samples: Vec<(Instant, f64)> = Vec::new();
    wait_until(
        "the paced materialization",
        Duration::from_secs(120),
        || {
            let progress = rows(
            &cluster,
            "postgres",
            "SELECT phase, coalesce(relation, ''), bytes_done FROM cow.materialize_progress WHERE clone = 'paced'",
        );
            if let Some(row) = progress.first() {
                let fields: Vec<&str> = row.split('|').collect();
                if fields[0] == "copying" && fields[1] == "big" {
                    samples.push((Instant::now(), fields[2].parse().unwrap()));
                }
            }
            status_of(&cluster, "paced") == ["materialized"]
        },
    );
    let inner: Vec<&(Instant, f64)> = samples
        .iter()
        .filter(|(_, b)| *b > 0.2 * big_mb * 1048576.0 && *b < 0.8 * big_mb * 1048576.0)
        .collect();
    assert!(inner.len() >= 5, "too few samples: {}", samples.len());
    let (first, last) = (inner[0], inner[inner.len() - 1]);
    let rate = (last.1 - first.1) / 1048576.0 / last.0.duration_since(first.0).as_secs_f64();
    assert!(
        (17.0..=23.0).contains(&rate),
        "measured {rate:.1} MB/s at a limit of 20"
    );
    assert_eq!(contents(&cluster, "paced", "big", ""), expected);
    assert!(cow_relations(&cluster, "paced").is_empty());

    // Cancel a slow one in the middle of its big table.
    set_rate_limit(&cluster, Some(4));
    cluster
        .psql(
            "cancelled",
            "UPDATE big SET pad = 'clone' WHERE id % 10 = 0",
        )
        .unwrap();
    let written = contents(&cluster, "cancelled", "big", "");
    cluster
        .psql(
            "postgres",
            "SELECT cow.materialize('cancelled', wait => false)",
        )
        .unwrap();
    wait_until("the copy of big to start", Duration::from_secs(60), || {
        rows(&cluster, "postgres", "SELECT relation = 'big' AND blocks_done > 100 FROM cow.materialize_progress WHERE clone = 'cancelled'")
            == ["t"]
    });
    assert_eq!(
        rows(
            &cluster,
            "postgres",
            "SELECT cow.cancel_materialize('cancelled')"
        ),
        ["t"]
    );
    assert_eq!(status_of(&cluster, "cancelled"), ["shadowed"]);
    assert_eq!(
        rows(
            &cluster,
            "postgres",
            "SELECT phase FROM cow.materialize_progress WHERE clone = 'cancelled'"
        ),
        ["cancelled"]
    );
    assert_eq!(contents(&cluster, "cancelled", "big", ""), written);
    // Cancelled while copying big: big (and its index) still read the source.
    let still_cow = cow_relations(&cluster, "cancelled");
    assert!(
        still_cow.iter().any(|r| r.starts_with("big ")),
        "{still_cow:?}"
    );
    set_rate_limit(&cluster, None);
    assert_eq!(
        rows(
            &cluster,
            "postgres",
            "SELECT status FROM cow.materialize('cancelled')"
        ),
        ["materialized"]
    );
    assert_eq!(contents(&cluster, "cancelled", "big", ""), written);
}

/// A transaction whose snapshot predates a table's switch cannot see the
/// copied rows: it is refused (40001), never answered from the clone's own
/// rows alone; the materialization waits for it before it ends.
#[test]
fn a_snapshot_older_than_a_switch_is_refused() {
    let cluster = cluster_with_prod(
        "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 1000); \
             CREATE TABLE other (id int); INSERT INTO other VALUES (1);",
    );
    cluster
        .psql("prod", "SELECT cow.clone('prod', 'staging')")
        .unwrap();
    let mut old = cluster.connect("staging").unwrap();
    // Its snapshot is taken by a catalog query: it holds no lock on the
    // clone's tables, whose switches go ahead.
    old.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM pg_class")
        .unwrap();
    cluster
        .psql(
            "postgres",
            "SELECT cow.materialize('staging', wait => false)",
        )
        .unwrap();
    wait_until("every table switched", Duration::from_secs(60), || {
        rows(
            &cluster,
            "postgres",
            "SELECT phase FROM cow.materialize_progress WHERE clone = 'staging'",
        ) == ["waiting for older snapshots"]
    });
    let refused = old.query("SELECT count(*) FROM t", &[]).unwrap_err();
    assert_eq!(sqlstate(&refused), "40001", "{refused}");
    old.batch_execute("ROLLBACK").unwrap();
    wait_until_materialized(
        &cluster,
        "staging",
        "the materialization to end",
        Duration::from_secs(60),
    );
    assert_eq!(
        rows(&cluster, "staging", "SELECT count(*), sum(id) FROM t"),
        ["1000|500500"]
    );
}

/// DROP DATABASE of a source with clones is refused with a hint to
/// cow.drop_database(..., force => true), which materializes every clone
/// first; PostgreSQL's own WITH (FORCE) keeps its meaning and stays refused.
#[test]
fn force_drops_a_source_after_materializing_its_clones() {
    let cluster = cluster_with_prod(
        "CREATE TABLE t (id int PRIMARY KEY, s text); \
             INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 5000) g;",
    );
    let expected = contents(&cluster, "prod", "t", "");
    for clone in ["one", "two"] {
        cluster
            .psql("prod", &format!("SELECT cow.clone('prod', '{clone}')"))
            .unwrap();
    }
    let mut client = cluster.connect("postgres").unwrap();
    for drop in ["DROP DATABASE prod", "DROP DATABASE prod WITH (FORCE)"] {
        let refused = client.batch_execute(drop).unwrap_err();
        assert_eq!(sqlstate(&refused), "2BP01");
        let hint = refused
            .as_db_error()
            .and_then(|e| e.hint())
            .unwrap_or_default()
            .to_string();
        assert!(
            hint.contains("cow.drop_database('prod', force => true)"),
            "{hint}"
        );
    }
    let refused = client
        .batch_execute("SELECT cow.drop_database('prod')")
        .unwrap_err();
    assert_eq!(sqlstate(&refused), "2BP01");
    let in_block = client
        .batch_execute("BEGIN; SELECT cow.drop_database('prod', force => true)")
        .unwrap_err();
    assert_eq!(sqlstate(&in_block), "25001");
    client.batch_execute("ROLLBACK").unwrap();
    client
        .batch_execute("SELECT cow.drop_database('prod', force => true)")
        .unwrap();
    assert!(rows(
        &cluster,
        "postgres",
        "SELECT 1 FROM pg_database WHERE datname = 'prod'"
    )
    .is_empty());
    for clone in ["one", "two"] {
        assert_eq!(contents(&cluster, clone, "t", ""), expected, "{clone}");
        assert!(cow_relations(&cluster, clone).is_empty());
    }
    assert_eq!(
        rows(
            &cluster,
            "postgres",
            "SELECT clone, status FROM cow.clones ORDER BY 1"
        ),
        ["one|materialized", "two|materialized"]
    );
}

/// What cannot be materialized is refused with its SQLSTATE, and a
/// materialized database is told so.
#[test]
fn materialize_refuses_what_it_cannot_do() {
    let cluster = cluster_with_prod("CREATE TABLE t (id int)");
    cluster
        .psql("prod", "SELECT cow.clone('prod', 'staging')")
        .unwrap();
    cluster
        .psql("postgres", "CREATE ROLE stranger LOGIN")
        .unwrap();
    let mut client = cluster.connect("postgres").unwrap();
    for (sql, state) in [
        ("SELECT cow.materialize('nope')", "3D000"),
        ("SELECT cow.materialize('prod')", "55000"),
        ("SELECT cow.materialize(NULL)", "22004"),
        ("SELECT cow.cancel_materialize(NULL)", "22004"),
        ("SELECT cow.cancel_materialize('nope')", "3D000"),
        ("SELECT cow.drop_database(NULL)", "22004"),
        ("SELECT cow.drop_database('nope')", "3D000"),
        ("SELECT cow.drop_database('nope', force => true)", "3D000"),
    ] {
        let e = client.batch_execute(sql).unwrap_err();
        assert_eq!(sqlstate(&e), state, "{sql}: {e}");
    }
    let e = client
        .batch_execute("BEGIN; SELECT cow.materialize('staging')")
        .unwrap_err();
    assert_eq!(sqlstate(&e), "25001");
    client.batch_execute("ROLLBACK").unwrap();
    let mut stranger = cluster.connect_as("stranger", "postgres").unwrap();
    let e = stranger
        .batch_execute("SELECT cow.materialize('staging')")
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42501");
    let e = stranger
        .batch_execute("SELECT cow.cancel_materialize('staging')")
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42501");
    // FORCE materializes clones the caller must own too.
    let e = stranger
        .batch_execute("SELECT cow.drop_database('prod', force => true)")
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42501");
    assert_eq!(status_of(&cluster, "staging"), ["shadowed"]);
    assert_eq!(
        rows(
            &cluster,
            "postgres",
            "SELECT cow.cancel_materialize('staging')"
        ),
        ["f"]
    );
    assert_eq!(
        rows(
            &cluster,
            "postgres",
            "SELECT status FROM cow.materialize('staging')"
        ),
        ["materialized"]
    );
    assert_eq!(
        rows(
            &cluster,
            "postgres",
            "SELECT status FROM cow.materialize('staging')"
        ),
        ["materialized"]
    );
}

/// Everything a materialization writes reaches a streaming standby through
/// WAL (page copies, deleters, catalog changes, the witness's removal): the
/// standby answers the same in the materialized database, which has no
/// witness there, and the standby's slot for the source goes.
#[test]
fn a_standby_follows_a_materialization() {
    let primary = source_with_rich_schema();
    let mut apps = app_tables(&primary, "prod");
    apps.retain(|t| t != "app.scratch"); // unlogged: empty on a standby
    primary
        .psql("prod", "SELECT cow.clone('prod', 'staging')")
        .unwrap();
    primary
        .psql(
            "staging",
            "UPDATE app.everything SET label = 'clone ' || id WHERE id % 5 = 0; DELETE FROM pgbench_accounts WHERE aid % 7 = 0",
        )
        .unwrap();
    let config = pg_test::cluster::ClusterConfig::for_tests().unwrap();
    let mut standby = primary.base_backup(config, true).unwrap();
    standby.start().unwrap();
    primary.wait_for_replay(&standby).unwrap();
    // A write while the materialization runs, so a deleter is applied by
    // the passes (generic WAL) and not only when a page is copied.
    set_rate_limit(&primary, Some(10));
    primary
        .psql(
            "postgres",
            "SELECT cow.materialize('staging', wait => false)",
        )
        .unwrap();
    wait_until(
        "the copy of pgbench_accounts",
        Duration::from_secs(60),
        || {
            rows(
                &primary,
                "postgres",
                "SELECT relation FROM cow.materialize_progress WHERE clone = 'staging'",
            ) == ["pgbench_accounts"]
        },
    );
    primary
        .psql(
            "staging",
            "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid % 1000 = 1",
        )
        .unwrap();
    set_rate_limit(&primary, None);
    wait_until_materialized(
        &primary,
        "staging",
        "the materialization",
        Duration::from_secs(120),
    );
    let expected = all_contents(&primary, "staging", &apps);
    let accounts = contents(&primary, "staging", "pgbench_accounts", "");
    wait_until("the source's pin to go", Duration::from_secs(30), || {
        rows(
            &primary,
            "postgres",
            "SELECT count(*) FROM pg_replication_slots",
        ) == ["0"]
    });
    primary.psql("postgres", "CHECKPOINT").unwrap();
    primary.wait_for_replay(&standby).unwrap();
    assert_same_contents(
        &all_contents(&standby, "staging", &apps),
        &expected,
        "on the standby",
    );
    assert_eq!(
        contents(&standby, "staging", "pgbench_accounts", ""),
        accounts
    );
    assert_eq!(
        contents(
            &standby,
            "staging",
            "pgbench_accounts",
            "SET enable_seqscan = off;"
        ),
        accounts
    );
    assert!(cow_relations(&standby, "staging").is_empty());
    let oid = rows(
        &standby,
        "postgres",
        "SELECT oid FROM pg_database WHERE datname = 'staging'",
    )
    .remove(0);
    assert!(!standby
        .data_dir()
        .join("base")
        .join(&oid)
        .join("cowclone_clone")
        .exists());
    wait_until("the standby's slot to go", Duration::from_secs(30), || {
        rows(
            &standby,
            "postgres",
            "SELECT count(*) FROM pg_replication_slots",
        ) == ["0"]
    });
    // Promoted, it is an ordinary database there too.
    standby.promote().unwrap();
    standby
        .psql(
            "staging",
            "UPDATE pgbench_accounts SET abalance = 0 WHERE aid = 2",
        )
        .unwrap();
    assert_eq!(amcheck_problems(&standby, "staging"), Vec::<String>::new());
}

/// With every worker slot taken, a waiting cow.materialize fails with
/// 53400 and a queued job waits; it starts by itself once a slot frees.
#[test]
fn a_queued_materialization_waits_for_a_worker_slot() {
    // The logical replication launcher, cowclone's launcher and one pin
    // holder per source fill four slots.
    let cluster =
        start_test_cluster(|c| c.settings.push("max_worker_processes = 4".into())).unwrap();
    cluster
        .psql("postgres", "CREATE EXTENSION cowclone")
        .unwrap();
    for db in ["prod", "other"] {
        cluster
            .psql("postgres", &format!("CREATE DATABASE {db}"))
            .unwrap();
        cluster
            .psql(db, "CREATE EXTENSION cowclone; CREATE TABLE t AS SELECT generate_series(1, 1000) AS id")
            .unwrap();
    }
    cluster
        .psql("prod", "SELECT cow.clone('prod', 'staging')")
        .unwrap();
    cluster
        .psql("other", "SELECT cow.clone('other', 'other_clone')")
        .unwrap();
    common::holder_of(&cluster, "prod");
    common::holder_of(&cluster, "other");
    let mut client = cluster.connect("postgres").unwrap();
    let refused = client
        .batch_execute("SELECT cow.materialize('staging')")
        .unwrap_err();
    assert_eq!(sqlstate(&refused), "53400", "{refused}");
    assert_eq!(
        rows(
            &cluster,
            "postgres",
            "SELECT status FROM cow.materialize('staging', wait => false)"
        ),
        ["queued"]
    );
    wait_until("the launcher's warning", Duration::from_secs(30), || {
        cluster
            .log()
            .contains("could not start the materializer of database")
    });
    assert_eq!(status_of(&cluster, "staging"), ["materializing"]);
    // Dropping other's only clone ends its holder: a slot frees.
    cluster
        .psql("postgres", "DROP DATABASE other_clone")
        .unwrap();
    wait_until_materialized(
        &cluster,
        "staging",
        "the queued materialization",
        Duration::from_secs(60),
    );
    assert_eq!(
        rows(&cluster, "staging", "SELECT count(*), sum(id) FROM t"),
        ["1000|500500"]
    );
}

/// A materializer that is terminated (pg_terminate_backend) is started
/// again by the launcher, which resumes the job where the catalog says it
/// is; the clone ends exact.
#[test]
fn a_terminated_materializer_is_resumed() {
    let cluster = cluster_with_prod(
        "CREATE TABLE a (id int PRIMARY KEY, pad text); \
             INSERT INTO a SELECT g, repeat('a', 200) FROM generate_series(1, 60000) g; \
             CREATE TABLE b AS SELECT * FROM a;",
    );
    cluster
        .psql("prod", "SELECT cow.clone('prod', 'staging')")
        .unwrap();
    cluster
        .psql("staging", "UPDATE a SET pad = 'written' WHERE id % 10 = 0")
        .unwrap();
    let expected = (
        contents(&cluster, "staging", "a", ""),
        contents(&cluster, "staging", "b", ""),
    );
    set_rate_limit(&cluster, Some(2));
    cluster
        .psql(
            "postgres",
            "SELECT cow.materialize('staging', wait => false)",
        )
        .unwrap();
    let worker = "SELECT pid FROM pg_stat_activity WHERE backend_type = 'cowclone materializer for ' || (SELECT oid FROM pg_database WHERE datname = 'staging')";
    let mut first = Vec::new();
    wait_until("the materializer", Duration::from_secs(30), || {
        first = rows(&cluster, "postgres", worker);
        !first.is_empty()
            && rows(
                &cluster,
                "postgres",
                "SELECT blocks_done > 10 FROM cow.materialize_progress WHERE clone = 'staging'",
            ) == ["t"]
    });
    cluster
        .psql(
            "postgres",
            &format!("SELECT pg_terminate_backend({})", first[0]),
        )
        .unwrap();
    let mut second = Vec::new();
    wait_until("a new materializer", Duration::from_secs(30), || {
        second = rows(&cluster, "postgres", worker);
        !second.is_empty() && second != first
    });
    set_rate_limit(&cluster, None);
    wait_until_materialized(
        &cluster,
        "staging",
        "the resumed materialization",
        Duration::from_secs(120),
    );
    assert_eq!(
        (
            contents(&cluster, "staging", "a", ""),
            contents(&cluster, "staging", "b", "")
        ),
        expected
    );
    assert!(cow_relations(&cluster, "staging").is_empty());
    assert_eq!(amcheck_problems(&cluster, "staging"), Vec::<String>::new());
}

/// A clone that froze its own rows (VACUUM FREEZE, after writing source
/// rows) and is then materialized: a source row it deleted or moved before
/// every snapshot that can still look is not copied, so no copy carries a
/// deleter older than the table's relfrozenxid (amcheck is clean), and the
/// clone answers as before.
#[test]
fn a_frozen_clone_materializes_without_xids_older_than_its_horizon() {
    let cluster = cluster_with_prod(
        "CREATE TABLE t (i int PRIMARY KEY, s text); \
         INSERT INTO t SELECT g, 'x' FROM generate_series(1, 5000) g;",
    );
    cluster
        .psql("postgres", "SELECT cow.clone('prod', 'staging')")
        .unwrap();
    cluster
        .psql("staging", "UPDATE t SET s = 'y' WHERE i % 3 = 0")
        .unwrap();
    cluster
        .psql("staging", "DELETE FROM t WHERE i % 7 = 0")
        .unwrap();
    for _ in 0..5 {
        cluster.psql("postgres", "SELECT txid_current()").unwrap();
    }
    cluster.psql("staging", "VACUUM (FREEZE) t").unwrap();
    let before = contents(&cluster, "staging", "t", "");
    assert_eq!(
        rows(
            &cluster,
            "postgres",
            "SELECT status FROM cow.materialize('staging')"
        ),
        ["materialized"]
    );
    assert_eq!(contents(&cluster, "staging", "t", ""), before);
    assert_eq!(amcheck_problems(&cluster, "staging"), Vec::<String>::new());
}
