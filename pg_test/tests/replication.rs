//! Clones through replication, failover and backups: a streaming standby
//! answers for every clone exactly as the primary does, a promoted standby
//! has every pin in force before anything can vacuum, a restored base
//! backup has working, pinned clones (and one restored to before a clone
//! has none), a standby killed while it replays a clone's creation comes
//! back consistent, and a clone whose record is lost refuses to be read.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

mod common;

use common::{
    app_tables, contents, holder_of, rich_schema, rows, run_each, sqlstate, wait_until,
    INDEXED_QUERIES,
};
use pg_test::{start_test_cluster, Cluster, ClusterConfig};

/// Four plan shapes every table is read under.
const PLAN_SHAPES: [&str; 4] = [
    "",
    "SET enable_seqscan = off;",
    "SET enable_seqscan = off; SET enable_bitmapscan = off;",
    "SET enable_seqscan = off; SET enable_indexscan = off; SET enable_indexonlyscan = off;",
];

/// Writes in a clone of the rich schema: updates, deletes, inserts.
const CLONE_WRITES: &str = "
    UPDATE app.everything SET label = 'changed in the clone' WHERE id % 11 = 0;
    DELETE FROM app.everything WHERE id % 13 = 0;
    INSERT INTO app.everything (id, label) SELECT g, 'new ' || g FROM generate_series(100001, 100050) g;
    UPDATE app.child SET parent_id = parent_id WHERE id % 3 = 0;
";

/// Churn in the source after the clone point, vacuumed.
const SOURCE_CHURN: &str = "
    DELETE FROM app.everything WHERE id % 5 = 0;
    VACUUM app.everything;
    UPDATE app.everything SET regular = regular + 1;
    VACUUM app.everything;
    DELETE FROM app.child WHERE id % 2 = 0;
    VACUUM app.child;
";

const SMALL_TABLE: &str = "CREATE TABLE t (i int PRIMARY KEY, v int NOT NULL, pad text); \
     INSERT INTO t SELECT g, g, md5(g::text) FROM generate_series(1, 20000) g;";

fn with_prod(cluster: &Cluster, setup: &str) {
    cluster.psql("postgres", "CREATE DATABASE prod").unwrap();
    cluster.psql("prod", "CREATE EXTENSION cowclone").unwrap();
    if !setup.is_empty() {
        cluster.psql("prod", setup).unwrap();
    }
}

/// A started streaming standby of `primary`.
fn standby_of(primary: &Cluster, configure: impl FnOnce(&mut ClusterConfig)) -> Cluster {
    let mut config = ClusterConfig::for_tests().unwrap();
    configure(&mut config);
    let mut standby = primary.base_backup(config, true).unwrap();
    standby.start().unwrap();
    standby
}

/// How many databases are named `name` (0 or 1), as the rows say it.
fn database_count(cluster: &Cluster, name: &str) -> Vec<String> {
    rows(
        cluster,
        "postgres",
        &format!("SELECT count(*) FROM pg_database WHERE datname = '{name}'"),
    )
}

/// The witness file of database `name` (which exists).
fn witness_of(cluster: &Cluster, name: &str) -> std::path::PathBuf {
    cluster
        .data_dir()
        .join("base")
        .join(database_oid(cluster, name))
        .join("cowclone_clone")
}

/// Every witness file in the cluster's database directories.
fn witnesses(cluster: &Cluster) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(cluster.data_dir().join("base"))
        .unwrap()
        .filter_map(|e| {
            let path = e.ok()?.path().join("cowclone_clone");
            path.exists().then_some(path)
        })
        .collect()
}

fn database_oid(cluster: &Cluster, name: &str) -> String {
    cluster
        .psql(
            "postgres",
            &format!("SELECT oid FROM pg_database WHERE datname = '{name}'"),
        )
        .unwrap()
        .trim()
        .to_string()
}

/// Every table of `db` read under every plan shape on `reader` equals its
/// contents on `oracle` (unlogged tables aside: a standby cannot read them).
fn same_tables(oracle: &Cluster, reader: &Cluster, db: &str) {
    let unlogged = rows(
        oracle,
        db,
        "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relpersistence = 'u' AND c.relkind = 'r'",
    );
    assert!(
        !unlogged.is_empty(),
        "the rich schema has an unlogged table"
    );
    let tables: Vec<String> = app_tables(oracle, db)
        .into_iter()
        .filter(|t| !unlogged.contains(t))
        .collect();
    assert!(tables.len() >= 10, "{tables:?}");
    for table in &tables {
        let expected = contents(oracle, db, table, "");
        for shape in PLAN_SHAPES {
            assert_eq!(
                contents(reader, db, table, shape),
                expected,
                "{table} in {db} ({shape:?})"
            );
        }
    }
    // Full contents are read by sequential scans whatever the settings:
    // queries that reach each index kind, under every plan shape, too.
    let mut answered = 0;
    for query in INDEXED_QUERIES {
        let expected = rows(oracle, db, query);
        answered += usize::from(!expected.is_empty());
        for shape in PLAN_SHAPES {
            assert_eq!(
                rows(reader, db, &format!("{shape} {query}")),
                expected,
                "{query} in {db} ({shape:?})"
            );
        }
    }
    assert!(
        answered >= 12,
        "only {answered} indexed queries find rows in {db}"
    );
}

fn lineage(cluster: &Cluster) -> Vec<String> {
    rows(
        cluster,
        "prod",
        "SELECT clone, clone_oid, source, depth, clone_point_lsn, clone_point_time, created_at FROM cow.clones ORDER BY 1",
    )
}

#[test]
fn a_standby_answers_for_every_clone_exactly_as_the_primary() {
    let primary = start_test_cluster(|_| {}).unwrap();
    with_prod(&primary, "");
    primary.psql_file("prod", &rich_schema()).unwrap();
    // One clone is in the base backup, the other reaches the standby by WAL only.
    primary
        .psql("prod", "SELECT cow.clone('prod', 'in_backup')")
        .unwrap();
    let standby = standby_of(&primary, |_| {});
    primary
        .psql("prod", "SELECT cow.clone('prod', 'by_wal')")
        .unwrap();
    primary.wait_for_replay(&standby).unwrap();
    for clone in ["in_backup", "by_wal"] {
        same_tables(&primary, &standby, clone);
    }

    for clone in ["in_backup", "by_wal"] {
        run_each(&primary, clone, CLONE_WRITES);
    }
    run_each(&primary, "prod", SOURCE_CHURN);
    primary.wait_for_replay(&standby).unwrap();
    for clone in ["in_backup", "by_wal"] {
        same_tables(&primary, &standby, clone);
    }

    assert_eq!(lineage(&standby), lineage(&primary));
    assert_eq!(lineage(&primary).len(), 2);
    assert_eq!(
        rows(
            &standby,
            "prod",
            "SELECT DISTINCT pin_state FROM cow.clones"
        ),
        ["standby"]
    );
    assert_eq!(
        rows(
            &standby,
            "prod",
            "SELECT source, clones, scope FROM cow.pins"
        ),
        ["prod|2|standby"]
    );

    // Writes are refused as on any standby, and so is cloning.
    let mut session = standby.connect("by_wal").unwrap();
    let error = session
        .batch_execute("UPDATE app.everything SET label = 'x' WHERE id = 1")
        .unwrap_err();
    assert_eq!(sqlstate(&error), "25006", "{error}");
    let mut session = standby.connect("prod").unwrap();
    let error = session
        .batch_execute("SELECT cow.clone('prod', 'on_standby')")
        .unwrap_err();
    assert_eq!(sqlstate(&error), "25006", "{error}");

    // The standby keeps the source's pin as the primary's slot records it,
    // moves it up when the oldest clone goes, and lets go with the last.
    let slots = "SELECT slot_name, xmin FROM pg_replication_slots WHERE slot_name LIKE 'cowclone%'";
    assert_eq!(
        rows(&standby, "postgres", slots),
        rows(&primary, "postgres", slots)
    );
    let before = rows(&primary, "postgres", slots);
    primary.psql("postgres", "DROP DATABASE in_backup").unwrap();
    wait_until(
        "the primary's pin to move up",
        Duration::from_secs(30),
        || rows(&primary, "postgres", slots) != before,
    );
    primary.wait_for_replay(&standby).unwrap();
    assert_eq!(
        rows(&standby, "postgres", slots),
        rows(&primary, "postgres", slots)
    );
    primary.psql("postgres", "DROP DATABASE by_wal").unwrap();
    wait_until("the primary's pin to go", Duration::from_secs(30), || {
        rows(&primary, "postgres", slots).is_empty()
    });
    primary.wait_for_replay(&standby).unwrap();
    assert!(rows(&standby, "postgres", slots).is_empty());
}

/// Updates, deletes, inserts and VACUUMs `t` in `db` until `stop`, through
/// a connection that may die (the primary is crashed under it).
fn churn_until(cluster: &Cluster, db: &str, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    let config = cluster.client_config(db);
    std::thread::spawn(move || {
        let Ok(mut client) = config.connect(postgres::NoTls) else {
            return 0;
        };
        let mut rounds = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let k = rounds % 7;
            let round = client.batch_execute(&format!(
                "UPDATE t SET v = v + 1 WHERE i % 7 = {k}; \
                 DELETE FROM t WHERE i % 97 = {k}; \
                 INSERT INTO t SELECT g, g, 'late' FROM generate_series(20001 + {rounds} * 10, 20010 + {rounds} * 10) g"
            ));
            if round.is_err() || client.batch_execute("VACUUM t").is_err() {
                break;
            }
            rounds += 1;
        }
        rounds
    })
}

#[test]
fn a_promoted_standby_keeps_every_clone_pinned_guarded_and_exact() {
    let mut primary = start_test_cluster(|_| {}).unwrap();
    with_prod(&primary, SMALL_TABLE);
    let standby = standby_of(&primary, |_| {});
    primary
        .psql("prod", "SELECT cow.clone('prod', 'staging')")
        .unwrap();
    let at_clone_point = contents(&primary, "staging", "t", "");
    primary.wait_for_replay(&standby).unwrap();

    // Churn and VACUUM prod on the primary up to the moment it dies.
    let stop = Arc::new(AtomicBool::new(false));
    let churn = churn_until(&primary, "prod", stop.clone());
    std::thread::sleep(Duration::from_secs(3));
    primary.crash().unwrap();
    stop.store(true, Ordering::Relaxed);
    let rounds = churn.join().unwrap();
    assert!(rounds > 0, "the churn ran before the cut");

    standby.promote().unwrap();
    // The pin is in force from the first moment: churn and VACUUM at once.
    run_each(
        &standby,
        "prod",
        "DELETE FROM t WHERE i % 3 = 0; VACUUM t; UPDATE t SET v = v + 1; VACUUM t; \
         VACUUM FREEZE t",
    );
    for shape in PLAN_SHAPES {
        assert_eq!(
            contents(&standby, "staging", "t", shape),
            at_clone_point,
            "{shape:?}"
        );
    }
    let prod_oid = database_oid(&standby, "prod");
    assert_eq!(
        rows(
            &standby,
            "postgres",
            "SELECT slot_name FROM pg_replication_slots WHERE slot_name LIKE 'cowclone%'"
        ),
        [format!("cowclone_source_{prod_oid}")]
    );
    holder_of(&standby, "prod");
    assert!(standby
        .log()
        .contains(&format!("pin of database {prod_oid} in force")));

    // The guard works, and so do writes in the clone.
    let mut session = standby.connect("prod").unwrap();
    let error = session.batch_execute("TRUNCATE t").unwrap_err();
    assert_eq!(sqlstate(&error), "2BP01", "{error}");
    standby
        .psql("staging", "UPDATE t SET v = -1 WHERE i <= 10")
        .unwrap();
    assert_eq!(
        rows(&standby, "staging", "SELECT count(*) FROM t WHERE v = -1"),
        ["10"]
    );
    run_each(&standby, "prod", "UPDATE t SET v = v + 1; VACUUM t");
    let mut expected: Vec<String> = at_clone_point
        .iter()
        .map(|row| {
            let i: i32 = row[1..].split(',').next().unwrap().parse().unwrap();
            if i <= 10 {
                row.replacen(&format!("({i},{i},"), &format!("({i},-1,"), 1)
            } else {
                row.clone()
            }
        })
        .collect();
    expected.sort();
    assert_eq!(contents(&standby, "staging", "t", ""), expected);
}

#[test]
fn a_standby_killed_while_replaying_a_clone_comes_back_consistent() {
    let primary = start_test_cluster(|_| {}).unwrap();
    with_prod(&primary, SMALL_TABLE);
    let failpoint = "cow.debug_failpoint = 'pause:redo_witness'".to_string();
    let mut standby = standby_of(&primary, |c| c.settings.push(failpoint.clone()));
    primary
        .psql("prod", "SELECT cow.clone('prod', 'staging')")
        .unwrap();
    wait_until(
        "the standby's replay to pause in the clone's creation",
        Duration::from_secs(60),
        || {
            standby
                .log()
                .contains("paused at failpoint \"redo_witness\"")
        },
    );
    // Mid-replay, nothing of the clone is visible.
    assert_eq!(database_count(&standby, "staging"), ["0"]);
    standby.crash().unwrap();
    standby.config.settings.retain(|s| s != &failpoint);
    standby.start().unwrap();
    primary.wait_for_replay(&standby).unwrap();
    for shape in PLAN_SHAPES {
        assert_eq!(
            contents(&standby, "staging", "t", shape),
            contents(&primary, "staging", "t", ""),
            "{shape:?}"
        );
    }
    assert_eq!(lineage(&standby), lineage(&primary));
    let witness = witness_of(&standby, "staging");
    assert_eq!(std::fs::metadata(&witness).unwrap().len(), 8192);
    common::catalog_checks_pass(&primary, "staging");
    primary.wait_for_replay(&standby).unwrap();
    let checked = standby
        .psql(
            "staging",
            "SELECT count(bt_index_check(c.oid, true)) FROM pg_class c \
             WHERE c.relkind = 'i' AND c.relam = 403 AND c.oid < 16384 AND c.relpersistence = 'p'",
        )
        .unwrap();
    assert!(checked.trim().parse::<i64>().unwrap() > 100, "{checked}");
}

const NO_ARCHIVING: &str = "archive_mode = off\n";

#[test]
fn base_backups_restore_pinned_clones_and_a_point_before_a_clone_has_none() {
    let mut primary = start_test_cluster(|_| {}).unwrap();
    let archive = primary.server_dir("archive").unwrap();
    primary
        .psql("postgres", "ALTER SYSTEM SET archive_mode = on")
        .unwrap();
    primary
        .psql(
            "postgres",
            &format!(
                "ALTER SYSTEM SET archive_command = 'cp %p {}/%f'",
                archive.display()
            ),
        )
        .unwrap();
    primary.stop().unwrap();
    primary.start().unwrap();
    with_prod(&primary, SMALL_TABLE);
    let before_any_clone = primary
        .base_backup(ClusterConfig::for_tests().unwrap(), false)
        .unwrap();
    primary
        .psql(
            "postgres",
            "SELECT pg_create_restore_point('before_the_clone')",
        )
        .unwrap();
    primary
        .psql("prod", "SELECT cow.clone('prod', 'staging')")
        .unwrap();
    let at_clone_point = contents(&primary, "staging", "t", "");

    // A backup taken while the source churns and vacuums.
    let stop = Arc::new(AtomicBool::new(false));
    let churn = churn_until(&primary, "prod", stop.clone());
    let mut restored = primary
        .base_backup(ClusterConfig::for_tests().unwrap(), false)
        .unwrap();
    stop.store(true, Ordering::Relaxed);
    assert!(churn.join().unwrap() > 0);
    // The copies must not archive into the primary's archive.
    restored
        .add_data_file("postgresql.auto.conf", NO_ARCHIVING)
        .unwrap();
    restored.start().unwrap();
    run_each(
        &restored,
        "prod",
        "DELETE FROM t WHERE i % 2 = 0; VACUUM t; VACUUM FREEZE t",
    );
    for shape in PLAN_SHAPES {
        assert_eq!(
            contents(&restored, "staging", "t", shape),
            at_clone_point,
            "{shape:?}"
        );
    }
    holder_of(&restored, "prod");
    assert_eq!(
        rows(
            &restored,
            "prod",
            "SELECT clone, scope FROM cow.clones JOIN cow.pins USING (source)"
        ),
        ["staging|source-only"]
    );

    // Point-in-time recovery to before the clone: no clone, nothing of it.
    primary.psql("postgres", "SELECT pg_switch_wal()").unwrap();
    wait_until("the WAL to be archived", Duration::from_secs(60), || {
        rows(
            &primary,
            "postgres",
            "SELECT last_archived_wal IS NOT NULL AND last_archived_wal >= pg_walfile_name(pg_current_wal_lsn() - 1) FROM pg_stat_archiver",
        ) == ["t"]
    });
    let mut earlier = before_any_clone;
    earlier.config.settings.extend([
        format!("restore_command = 'cp {}/%f %p'", archive.display()),
        "recovery_target_name = 'before_the_clone'".into(),
        "recovery_target_action = 'promote'".into(),
    ]);
    earlier.add_data_file("recovery.signal", "").unwrap();
    earlier
        .add_data_file("postgresql.auto.conf", NO_ARCHIVING)
        .unwrap();
    earlier.start().unwrap();
    wait_until(
        "the point-in-time recovery to end",
        Duration::from_secs(60),
        || {
            earlier
                .psql("postgres", "SELECT pg_is_in_recovery()")
                .is_ok_and(|r| r.trim() == "f")
        },
    );
    assert_eq!(
        rows(&earlier, "postgres", "SELECT datname FROM pg_database WHERE datname NOT IN ('postgres', 'template0', 'template1') ORDER BY 1"),
        ["prod"]
    );
    assert_eq!(
        rows(&earlier, "prod", "SELECT count(*) FROM cow.clones"),
        ["0"]
    );
    assert_eq!(
        rows(
            &earlier,
            "postgres",
            "SELECT count(*) FROM pg_shseclabel WHERE provider = 'cowclone'"
        ),
        ["0"]
    );
    assert_eq!(
        rows(
            &earlier,
            "postgres",
            "SELECT count(*) FROM pg_replication_slots"
        ),
        ["0"]
    );
    let witnesses = witnesses(&earlier);
    assert!(witnesses.is_empty(), "{witnesses:?}");
    assert_eq!(rows(&earlier, "prod", "SELECT count(*) FROM t"), ["20000"]);
}

#[test]
fn a_clone_whose_record_is_lost_refuses_to_be_read() {
    let primary = start_test_cluster(|_| {}).unwrap();
    with_prod(&primary, SMALL_TABLE);
    primary
        .psql("prod", "SELECT cow.clone('prod', 'staging')")
        .unwrap();
    let expected = contents(&primary, "staging", "t", "");
    let mut copy = primary
        .base_backup(ClusterConfig::for_tests().unwrap(), false)
        .unwrap();
    copy.start().unwrap();
    assert_eq!(contents(&copy, "staging", "t", ""), expected);

    // The witness alone lost: the record still says everything, and the
    // launcher writes the witness again.
    let witness = witness_of(&copy, "staging");
    std::fs::remove_file(&witness).unwrap();
    assert_eq!(contents(&copy, "staging", "t", ""), expected);
    wait_until(
        "the witness to be written again",
        Duration::from_secs(30),
        || witness.exists(),
    );
    assert!(copy.log().contains("was missing; it was written again"));

    // The record lost: reading fails with the documented error, never rows.
    copy.psql(
        "postgres",
        "DELETE FROM pg_shseclabel WHERE provider = 'cowclone'",
    )
    .unwrap();
    for shape in PLAN_SHAPES {
        let mut session = copy.connect("staging").unwrap();
        let error = session
            .simple_query(&format!("{shape} SELECT * FROM t WHERE i < 100"))
            .unwrap_err();
        assert_eq!(sqlstate(&error), "XX001", "{error}");
        let message = error.as_db_error().unwrap().message();
        assert!(message.contains("no clone record"), "{message}");
    }
}

#[test]
fn a_failover_during_a_clone_leaves_no_trace_of_it() {
    let mut primary = start_test_cluster(|_| {}).unwrap();
    with_prod(&primary, SMALL_TABLE);
    let standby = standby_of(&primary, |_| {});
    // A clone pauses just before its commit; the standby has replayed
    // everything up to there (its witness, the pin it asks for).
    let config = primary.client_config("prod");
    let cloning = std::thread::spawn(move || {
        let mut client = config.connect(postgres::NoTls).unwrap();
        client
            .batch_execute("SET cow.debug_failpoint = 'pause:before_commit'")
            .unwrap();
        let _ = client.batch_execute("SELECT cow.clone('prod', 'staging')");
    });
    wait_until("the clone to pause", Duration::from_secs(60), || {
        primary
            .log()
            .contains("paused at failpoint \"before_commit\"")
    });
    primary.wait_for_replay(&standby).unwrap();
    assert_eq!(
        witnesses(&standby).len(),
        1,
        "the standby replayed the witness"
    );
    let slots = "SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'cowclone%'";
    assert_eq!(rows(&standby, "postgres", slots), ["1"]);

    primary.crash().unwrap();
    let _ = cloning.join();
    standby.promote().unwrap();
    wait_until(
        "the promoted server to remove what the clone left",
        Duration::from_secs(30),
        || witnesses(&standby).is_empty() && rows(&standby, "postgres", slots) == ["0"],
    );
    assert!(standby.log().contains("whose making never committed"));
    assert_eq!(database_count(&standby, "staging"), ["0"]);
    assert_eq!(
        rows(&standby, "prod", "SELECT count(*) FROM cow.clones"),
        ["0"]
    );
    // And the name is free again.
    standby
        .psql("prod", "SELECT cow.clone('prod', 'staging')")
        .unwrap();
    assert_eq!(
        contents(&standby, "staging", "t", ""),
        contents(&standby, "prod", "t", "")
    );
}

/// A source with hundreds of relations has a record too long to stay in
/// its catalog row: PostgreSQL stores it out of line, which only a process
/// connected to a database can read. The launcher, connected to none, must
/// still start the holder and keep the pin, across a restart too.
#[test]
fn a_record_stored_out_of_line_is_pinned_and_read_like_any() {
    let mut cluster = start_test_cluster(|_| {}).unwrap();
    with_prod(&cluster, "");
    cluster
        .psql_file("prod", &{
            let path = cluster.dir.join("tables.sql");
            let mut sql = String::new();
            for g in 1..=300 {
                sql.push_str(&format!(
                    "CREATE TABLE a_table_with_a_long_name_{g} (i int PRIMARY KEY, v text); \
                     INSERT INTO a_table_with_a_long_name_{g} VALUES ({g}, 'row {g}');\n"
                ));
            }
            std::fs::write(&path, sql).unwrap();
            path
        })
        .unwrap();
    cluster
        .psql("prod", "SELECT cow.clone('prod', 'staging')")
        .unwrap();
    let length = rows(
        &cluster,
        "postgres",
        "SELECT octet_length(label) FROM pg_shseclabel WHERE provider = 'cowclone'",
    );
    assert!(length[0].parse::<i64>().unwrap() > 20_000, "{length:?}");
    holder_of(&cluster, "prod");
    cluster.stop().unwrap();
    cluster.start().unwrap();
    holder_of(&cluster, "prod");
    assert!(
        !cluster.log().contains("without having selected a database"),
        "{}",
        cluster.log()
    );
    assert_eq!(
        rows(
            &cluster,
            "staging",
            "SELECT v FROM a_table_with_a_long_name_250"
        ),
        ["row 250"]
    );
}
