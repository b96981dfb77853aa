//! A clone's pin holds back vacuum in its source alone (through the source's
//! holder), falls back to every database (through the source's slot) when no
//! holder can run, and never lets vacuum take what a clone point sees: not at
//! start, crash, restart, a holder's SIGTERM or SIGKILL, worker exhaustion,
//! or while other clones come and go.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{contents, holder_of, rows, vacuum_counts, wait_until};
use pg_test::{start_test_cluster, Cluster};

const INDEX_SCANS: &str = "SET enable_seqscan = off; SET enable_bitmapscan = off;";

/// Makes `db` with table `t` (and cowclone in `postgres`, where the tests
/// read cow.pins and cow.clones).
fn source_with_table(cluster: &Cluster, db: &str) {
    cluster
        .psql("postgres", "CREATE EXTENSION IF NOT EXISTS cowclone")
        .unwrap();
    cluster
        .psql("postgres", &format!("CREATE DATABASE {db}"))
        .unwrap();
    cluster
        .psql(
            db,
            "CREATE EXTENSION IF NOT EXISTS cowclone; \
             CREATE TABLE t (i int PRIMARY KEY, v int, pad text) WITH (autovacuum_enabled = off); \
             INSERT INTO t SELECT g, g, repeat('x', 50) FROM generate_series(1, 4000) g;",
        )
        .unwrap();
}

/// Makes database `other`, with no clone, and its table `o` of 2000 rows.
fn other_database(cluster: &Cluster) {
    cluster.psql("postgres", "CREATE DATABASE other").unwrap();
    cluster
        .psql(
            "other",
            "CREATE TABLE o (i int) WITH (autovacuum_enabled = off); \
             INSERT INTO o SELECT generate_series(1, 2000);",
        )
        .unwrap();
}

/// The clone's table equals `expected` through a sequential and an index scan.
fn assert_reads(cluster: &Cluster, clone: &str, expected: &[String], when: &str) {
    assert_eq!(
        contents(cluster, clone, "t", ""),
        expected,
        "{clone}, sequential scan, {when}"
    );
    assert_eq!(
        contents(cluster, clone, "t", INDEX_SCANS),
        expected,
        "{clone}, index scan, {when}"
    );
}

fn database_oid(cluster: &Cluster, db: &str) -> String {
    rows(
        cluster,
        "postgres",
        &format!("SELECT oid FROM pg_database WHERE datname = '{db}'"),
    )
    .remove(0)
}

#[test]
fn the_pin_holds_back_only_the_source_and_shows_where_dbas_look() {
    let cluster = start_test_cluster(|_| {}).unwrap();
    source_with_table(&cluster, "prod");
    other_database(&cluster);
    // Dead before the clone point: vacuum may remove them. (Read before the
    // delete: a scan after it would prune them before VACUUM counts them.)
    let expected: Vec<String> = contents(&cluster, "prod", "t", "")
        .into_iter()
        .filter(|row| {
            row.trim_start_matches('(')
                .split(',')
                .next()
                .unwrap()
                .parse::<i32>()
                .unwrap()
                > 500
        })
        .collect();
    cluster
        .psql("prod", "DELETE FROM t WHERE i <= 500")
        .unwrap();
    cluster
        .psql("prod", "SELECT cow.clone('prod', 'staging')")
        .unwrap();
    let holder = holder_of(&cluster, "prod");

    // Where DBAs look: the holder in pg_stat_activity, connected to the
    // source, advertising the horizon cow.pins names; one slot, held by it.
    let pins = rows(
        &cluster,
        "postgres",
        "SELECT source, clones, scope, horizon_clone, horizon_xmin, horizon_age >= 0, slot_name FROM cow.pins",
    );
    let horizon = rows(&cluster, "postgres", "SELECT horizon_xmin FROM cow.pins").remove(0);
    let prod_oid = database_oid(&cluster, "prod");
    assert_eq!(
        pins,
        [format!(
            "prod|1|source-only|staging|{horizon}|t|cowclone_source_{prod_oid}"
        )]
    );
    assert_eq!(
        rows(
            &cluster,
            "postgres",
            &format!("SELECT backend_type, datname, backend_xmin FROM pg_stat_activity WHERE pid = {holder}"),
        ),
        [format!("cowclone pin holder for prod|prod|{horizon}")]
    );
    assert_eq!(
        rows(
            &cluster,
            "postgres",
            "SELECT slot_name, active_pid, xmin FROM pg_replication_slots"
        ),
        [format!("cowclone_source_{prod_oid}|{holder}|{horizon}")]
    );
    assert_eq!(
        rows(&cluster, "postgres", "SELECT pin_state FROM cow.clones"),
        ["source-only"]
    );

    // Rows that die after the clone point, in the source, elsewhere, and in
    // the clone itself.
    cluster
        .psql("prod", "DELETE FROM t WHERE i > 3500")
        .unwrap();
    cluster
        .psql("other", "DELETE FROM o WHERE i > 1000")
        .unwrap();
    cluster
        .psql(
            "staging",
            "CREATE TABLE l (i int) WITH (autovacuum_enabled = off); \
             INSERT INTO l SELECT generate_series(1, 1000); DELETE FROM l WHERE i > 400; \
             UPDATE t SET v = -v WHERE i <= 1000; UPDATE t SET v = -v WHERE i <= 1000;",
        )
        .unwrap();

    assert_eq!(
        vacuum_counts(&cluster, "other", "o"),
        (1000, 0),
        "another database vacuums as if no clone existed"
    );
    assert_eq!(
        vacuum_counts(&cluster, "staging", "l"),
        (600, 0),
        "the clone's own dead rows are removed"
    );
    let (removed, kept) = vacuum_counts(&cluster, "staging", "t");
    assert_eq!(
        (removed, kept),
        (500, 0),
        "the first versions the clone's second update replaced are removed"
    );
    assert_eq!(
        vacuum_counts(&cluster, "prod", "t"),
        (500, 500),
        "the source removes rows dead before the clone point and keeps those dead after it"
    );
    cluster
        .psql(
            "staging",
            "UPDATE t SET v = -v WHERE i <= 1000; UPDATE t SET v = -v WHERE i <= 1000",
        )
        .unwrap();
    // Each of those rows was negated four times: back to its clone point value.
    assert_reads(&cluster, "staging", &expected, "after vacuum everywhere");

    // Dropping the clone lets go of the pin: no holder, no slot.
    cluster.psql("postgres", "DROP DATABASE staging").unwrap();
    wait_until("the pin to be released", Duration::from_secs(30), || {
        rows(&cluster, "postgres", "SELECT count(*) FROM pg_replication_slots") == ["0"]
            && rows(
                &cluster,
                "postgres",
                "SELECT count(*) FROM pg_stat_activity WHERE backend_type LIKE 'cowclone pin holder%'",
            ) == ["0"]
    });
    assert_eq!(vacuum_counts(&cluster, "prod", "t"), (500, 0));
    // With nothing connected to it, the source can be dropped at once.
    cluster.psql("postgres", "DROP DATABASE prod").unwrap();
}

/// Updates, deletes, inserts and vacuums `db.t` until stopped, reconnecting
/// across crashes and restarts.
fn churn(cluster: &Cluster, db: &str, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    let config = cluster.client_config(db);
    std::thread::spawn(move || {
        let mut rounds = 0u64;
        let mut client: Option<postgres::Client> = None;
        while !stop.load(Ordering::Relaxed) {
            if client.is_none() {
                client = config.connect(postgres::NoTls).ok();
                if client.is_none() {
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            }
            let c = client.as_mut().unwrap();
            let k = rounds % 7;
            let step = c
                .batch_execute(&format!(
                    "UPDATE t SET v = v + 1 WHERE i % 7 = {k}; \
                     DELETE FROM t WHERE i % 97 = {k}; \
                     INSERT INTO t SELECT 100000 + {rounds} * 10 + g, 0, 'new' FROM generate_series(1, 5) g;"
                ))
                .and_then(|_| c.batch_execute("VACUUM t"));
            if step.is_err() {
                client = None;
                std::thread::sleep(Duration::from_millis(100));
            }
            rounds += 1;
        }
        rounds
    })
}

fn wait_for_server(cluster: &Cluster) {
    wait_until(
        "the server to accept connections",
        Duration::from_secs(60),
        || cluster.psql("postgres", "SELECT 1").is_ok(),
    );
}

#[test]
fn clones_read_their_clone_point_through_every_pin_event_under_churn() {
    let mut cluster = start_test_cluster(|_| {}).unwrap();
    source_with_table(&cluster, "prod");
    let expected = contents(&cluster, "prod", "t", "");
    cluster
        .psql("prod", "SELECT cow.clone('prod', 'staging')")
        .unwrap();
    // Start: the slot holds every database until the holder takes over.
    let stop = Arc::new(AtomicBool::new(false));
    let churner = churn(&cluster, "prod", stop.clone());
    let first = holder_of(&cluster, "prod");
    assert_reads(&cluster, "staging", &expected, "after the holder took over");

    // SIGTERM (pg_terminate_backend): the holder re-arms the slot as it ends.
    cluster
        .psql("postgres", &format!("SELECT pg_terminate_backend({first})"))
        .unwrap();
    assert_reads(
        &cluster,
        "staging",
        &expected,
        "right after SIGTERM of the holder",
    );
    let second = holder_of(&cluster, "prod");
    assert_ne!(first, second, "the launcher started a new holder");
    assert_reads(
        &cluster,
        "staging",
        &expected,
        "after a new holder took over",
    );

    // SIGKILL: the postmaster restarts the cluster; the slot comes back from disk.
    std::process::Command::new("kill")
        .args(["-9", &second])
        .status()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    wait_for_server(&cluster);
    assert_reads(
        &cluster,
        "staging",
        &expected,
        "after SIGKILL of the holder",
    );
    holder_of(&cluster, "prod");

    // Clones made and dropped while the source churns.
    for n in 0..4 {
        let name = format!("churn{n}");
        cluster
            .psql("prod", &format!("SELECT cow.clone('prod', '{name}')"))
            .unwrap();
        if n % 2 == 0 {
            cluster
                .psql("postgres", &format!("DROP DATABASE {name}"))
                .unwrap();
        }
        assert_reads(&cluster, "staging", &expected, "while clones come and go");
    }

    // A clean restart and a crash of the whole server.
    cluster.stop().unwrap();
    cluster.start().unwrap();
    assert_reads(&cluster, "staging", &expected, "after a restart");
    cluster.crash().unwrap();
    cluster.start().unwrap();
    assert_reads(&cluster, "staging", &expected, "after a crash restart");
    holder_of(&cluster, "prod");
    std::thread::sleep(Duration::from_secs(2));

    stop.store(true, Ordering::Relaxed);
    let rounds = churner.join().unwrap();
    assert!(rounds > 10, "the source churned ({rounds} rounds)");
    cluster.psql("prod", "VACUUM t").unwrap();
    assert_reads(&cluster, "staging", &expected, "after the churn");
    assert_eq!(
        rows(
            &cluster,
            "postgres",
            "SELECT clone, pin_state FROM cow.clones ORDER BY 1"
        ),
        [
            "churn1|source-only",
            "churn3|source-only",
            "staging|source-only"
        ]
    );
    cluster
        .psql(
            "prod",
            "CREATE EXTENSION amcheck; SELECT bt_index_check('t_pkey', true); \
             SELECT count(*) FROM verify_heapam('t')",
        )
        .unwrap();
    assert_eq!(
        rows(&cluster, "prod", "SELECT count(*) FROM verify_heapam('t')"),
        ["0"]
    );
}

#[test]
fn without_a_free_worker_slot_the_pin_holds_every_database_until_a_holder_can_start() {
    // The cowclone launcher, the logical replication launcher and one holder.
    let cluster = start_test_cluster(|config| {
        config.settings.push("max_worker_processes = 3".into());
        config.settings.push("max_parallel_workers = 0".into());
    })
    .unwrap();
    source_with_table(&cluster, "prod");
    source_with_table(&cluster, "prod2");
    other_database(&cluster);
    cluster
        .psql("prod", "SELECT cow.clone('prod', 'staging')")
        .unwrap();
    holder_of(&cluster, "prod");

    let expected = contents(&cluster, "prod2", "t", "");
    let output = cluster
        .client_command("psql", "prod2")
        .args(["-X", "-q", "-c", "SELECT cow.clone('prod2', 'staging2')"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains("WARNING:  could not start the pin holder of database \"prod2\"")
            && stderr.contains("holds back VACUUM in every database"),
        "{stderr}"
    );
    assert_eq!(
        rows(
            &cluster,
            "postgres",
            "SELECT source, scope, holder_pid IS NULL FROM cow.pins ORDER BY 1"
        ),
        ["prod|source-only|f", "prod2|cluster-wide|t"]
    );
    assert_eq!(
        rows(
            &cluster,
            "postgres",
            "SELECT clone, pin_state FROM cow.clones ORDER BY 1"
        ),
        ["staging|source-only", "staging2|cluster-wide"]
    );

    // Never no pin: the slot holds every database, the source included.
    let stop = Arc::new(AtomicBool::new(false));
    let churner = churn(&cluster, "prod2", stop.clone());
    cluster
        .psql("other", "DELETE FROM o WHERE i > 1000")
        .unwrap();
    let (_, kept) = vacuum_counts(&cluster, "other", "o");
    assert_eq!(
        kept, 1000,
        "the fallback pin holds back other databases too"
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_reads(&cluster, "staging2", &expected, "under the fallback pin");

    // Once a worker slot is free, prod2 gets its holder.
    cluster.psql("postgres", "DROP DATABASE staging").unwrap();
    holder_of(&cluster, "prod2");
    stop.store(true, Ordering::Relaxed);
    churner.join().unwrap();
    assert_eq!(
        vacuum_counts(&cluster, "other", "o"),
        (1000, 0),
        "with a holder, other databases are free again"
    );
    assert_reads(
        &cluster,
        "staging2",
        &expected,
        "after the holder took over",
    );
}

#[test]
fn forty_clones_of_one_source_take_one_replication_slot() {
    let cluster = start_test_cluster(|config| {
        config.settings.push("max_replication_slots = 10".into());
    })
    .unwrap();
    source_with_table(&cluster, "prod");
    let expected = rows(&cluster, "prod", "SELECT count(*), sum(v) FROM t");
    for n in 0..40 {
        cluster
            .psql("prod", &format!("SELECT cow.clone('prod', 'c{n}')"))
            .unwrap();
    }
    holder_of(&cluster, "prod");
    assert_eq!(
        rows(
            &cluster,
            "postgres",
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'cowclone%'"
        ),
        ["1"]
    );
    assert_eq!(
        rows(
            &cluster,
            "postgres",
            "SELECT clones, horizon_clone FROM cow.pins"
        ),
        ["40|c0"]
    );
    for n in 0..40 {
        assert_eq!(
            rows(&cluster, &format!("c{n}"), "SELECT count(*), sum(v) FROM t"),
            expected,
            "clone c{n}"
        );
    }
    // Replication keeps the other nine slots.
    cluster
        .psql(
            "postgres",
            "SELECT count(*) FROM (SELECT pg_create_physical_replication_slot('standby_' || g) FROM generate_series(1, 9) g) s",
        )
        .unwrap();
    // Dropping the oldest clone moves the horizon up to the next one.
    cluster.psql("postgres", "DROP DATABASE c0").unwrap();
    wait_until("the horizon to move up", Duration::from_secs(30), || {
        rows(&cluster, "postgres", "SELECT horizon_clone FROM cow.pins") == ["c1"]
    });
    assert_eq!(
        rows(
            &cluster,
            "postgres",
            "SELECT h.backend_xmin = p.horizon_xmin FROM cow.pins p JOIN pg_stat_activity h ON h.pid = p.holder_pid"
        ),
        ["t"]
    );
}

#[test]
fn commands_that_need_the_source_to_themselves_get_it() {
    let cluster = start_test_cluster(|_| {}).unwrap();
    source_with_table(&cluster, "prod");
    let expected = contents(&cluster, "prod", "t", "");
    cluster
        .psql("prod", "SELECT cow.clone('prod', 'staging')")
        .unwrap();
    holder_of(&cluster, "prod");
    // Both fail while any process is connected to the source.
    cluster
        .psql("postgres", "CREATE DATABASE copy TEMPLATE prod")
        .unwrap();
    cluster
        .psql("postgres", "ALTER DATABASE prod RENAME TO production")
        .unwrap();
    holder_of(&cluster, "production");
    assert_eq!(contents(&cluster, "copy", "t", ""), expected);
    assert_reads(
        &cluster,
        "staging",
        &expected,
        "after the source was renamed",
    );
    assert_eq!(
        rows(&cluster, "postgres", "SELECT clone, source FROM cow.clones"),
        ["staging|production"]
    );
}

#[test]
fn the_pin_survives_a_server_start_before_any_holder_runs() {
    let mut cluster = start_test_cluster(|_| {}).unwrap();
    source_with_table(&cluster, "prod");
    let expected = contents(&cluster, "prod", "t", "");
    cluster
        .psql("prod", "SELECT cow.clone('prod', 'staging')")
        .unwrap();
    holder_of(&cluster, "prod");
    cluster.stop().unwrap();
    // Start without cowclone's launcher: only the slot restored from disk pins.
    let conf = cluster.data_dir().join("postgresql.auto.conf");
    let original = std::fs::read_to_string(&conf).unwrap_or_default();
    std::fs::write(
        &conf,
        format!("{original}\nshared_preload_libraries = ''\n"),
    )
    .unwrap();
    cluster.start().unwrap();
    assert_eq!(
        rows(
            &cluster,
            "postgres",
            "SELECT active, xmin IS NOT NULL FROM pg_replication_slots"
        ),
        ["f|t"]
    );
    cluster
        .psql(
            "prod",
            "UPDATE t SET v = -v; DELETE FROM t WHERE i % 3 = 0;",
        )
        .unwrap();
    cluster.psql("prod", "VACUUM t").unwrap();
    cluster.stop().unwrap();
    std::fs::write(&conf, original).unwrap();
    cluster.start().unwrap();
    assert_reads(
        &cluster,
        "staging",
        &expected,
        "after vacuum ran with no holder",
    );
    holder_of(&cluster, "prod");
}

/// Each row updated `times` times, one transaction each, under `settings`.
fn update_often(cluster: &Cluster, db: &str, settings: &str, times: usize) {
    let mut client = cluster.connect(db).unwrap();
    client.batch_execute(settings).unwrap();
    for n in 0..times {
        client
            .batch_execute(&format!("UPDATE small SET v = v + 1 WHERE i = {}", n % 5))
            .unwrap();
    }
}

#[test]
fn dead_versions_a_clone_writes_are_pruned_as_on_a_plain_table() {
    // With the pin held in the source alone, the clone's own row versions die
    // as they would anywhere: pruning on access keeps an often-updated table
    // on as many pages as the same updates take in a plain copy.
    let cluster = start_test_cluster(|_| {}).unwrap();
    source_with_table(&cluster, "prod");
    cluster
        .psql(
            "prod",
            "CREATE TABLE small (i int PRIMARY KEY, v int) WITH (autovacuum_enabled = off); \
             INSERT INTO small SELECT g, 0 FROM generate_series(0, 4) g;",
        )
        .unwrap();
    cluster
        .psql("postgres", "CREATE DATABASE copy TEMPLATE prod")
        .unwrap();
    cluster
        .psql("prod", "SELECT cow.clone('prod', 'staging')")
        .unwrap();
    holder_of(&cluster, "prod");
    let pages = |db: &str| {
        rows(&cluster, db, "SELECT pg_relation_size('small') / 8192")[0]
            .parse::<i64>()
            .unwrap()
    };
    let seq = "SET enable_indexscan = off; SET enable_bitmapscan = off;";
    update_often(&cluster, "copy", seq, 2000);
    update_often(&cluster, "staging", seq, 2000);
    assert!(
        pages("staging") <= pages("copy"),
        "sequential scans: clone {} pages, copy {}",
        pages("staging"),
        pages("copy")
    );
    update_often(&cluster, "copy", "SET enable_seqscan = off;", 2000);
    update_often(&cluster, "staging", "SET enable_seqscan = off;", 2000);
    assert!(
        pages("staging") <= pages("copy").max(1),
        "index scans: clone {} pages, copy {}",
        pages("staging"),
        pages("copy")
    );
    assert_eq!(
        rows(&cluster, "staging", "SELECT i, v FROM small ORDER BY i"),
        rows(&cluster, "copy", "SELECT i, v FROM small ORDER BY i")
    );
}
