//! The source guard: while a clone exists, its source refuses every command
//! that would drop or rewrite storage the clone reads, and nothing else.

mod common;

use common::{footprint, rows, sqlstate};
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
             CREATE TABLE owned (i int); ALTER TABLE owned OWNER TO owner_role; \
             CREATE ACCESS METHOD heap2 TYPE TABLE HANDLER heap_tableam_handler;",
        )
        .unwrap();
    // A second tablespace, for the SET TABLESPACE forms.
    let location = cluster.dir.join("second_tablespace");
    std::fs::create_dir(&location).unwrap();
    let owner = pg_test::cluster::owner_uid(&cluster.data_dir()).unwrap();
    std::os::unix::fs::chown(&location, Some(owner), None).unwrap();
    cluster
        .psql(
            "postgres",
            &format!("CREATE TABLESPACE second LOCATION '{}'", location.display()),
        )
        .unwrap();
    cluster
        .psql("prod", "SELECT cow.clone('prod', 'staging')")
        .unwrap();
    cluster
}

/// Every command that would drop or rewrite storage the clone reads; the
/// drops come last because the second half of the test runs them for real.
const REFUSED: [&str; 22] = [
    "TRUNCATE t",
    "ALTER TABLE t SET ACCESS METHOD heap2",
    "REINDEX TABLE CONCURRENTLY t",
    "REINDEX DATABASE prod",
    "ALTER TABLE t SET TABLESPACE second",
    "ALTER INDEX t_v SET TABLESPACE second",
    "ALTER MATERIALIZED VIEW m SET TABLESPACE second",
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
                .contains("cow.materialize('staging')"),
            "{sql}: {:?}",
            db.hint()
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
    for sql in [
        "DROP DATABASE prod",
        "DROP DATABASE prod WITH (FORCE)",
        "ALTER DATABASE prod SET TABLESPACE second",
    ] {
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

#[test]
fn an_old_pin_is_shown_and_logged() {
    let cluster = cluster_with_clone();
    common::holder_of(&cluster, "prod");
    assert_eq!(
        rows(
            &cluster,
            "prod",
            "SELECT pin_state, pin_age < 1000 FROM cow.clones"
        ),
        ["source-only|t"]
    );
    for _ in 0..12 {
        cluster.psql("prod", "SELECT txid_current()").unwrap();
    }
    let output = cluster
        .client_command("psql", "prod")
        .args([
            "-X",
            "-q",
            "-At",
            "-c",
            "SET cow.pin_warn_age = 10; SELECT clone, pin_state, pin_age >= 12 FROM cow.clones",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stdout.trim(), "staging|warning|t", "{stderr}");
    assert!(
        stderr.contains("WARNING:  the pin of clone \"staging\" is")
            && stderr.contains("cow.pin_warn_age is 10"),
        "{stderr}"
    );
    assert!(
        cluster.log().contains("the pin of clone \"staging\" is"),
        "the warning is in the server log too"
    );
    // Only superusers may change the threshold; 0 turns warnings off.
    assert_eq!(
        rows(
            &cluster,
            "prod",
            "SET cow.pin_warn_age = 0; SELECT pin_state FROM cow.clones"
        ),
        ["source-only"]
    );
    cluster.psql("prod", "CREATE ROLE plain LOGIN").unwrap();
    let mut plain = cluster.connect_as("plain", "prod").unwrap();
    let error = plain.batch_execute("SET cow.pin_warn_age = 1").unwrap_err();
    assert_eq!(sqlstate(&error), "42501", "{error}");
}

#[test]
fn a_clone_cannot_be_a_template_and_a_source_in_use_cannot_either() {
    let cluster = cluster_with_clone();
    let mut admin = cluster.connect("postgres").unwrap();
    let error = admin
        .batch_execute("CREATE DATABASE copy_of_clone TEMPLATE staging")
        .unwrap_err();
    assert_eq!(sqlstate(&error), "0A000", "{error}");
    assert!(
        error
            .as_db_error()
            .unwrap()
            .message()
            .contains("cannot use clone \"staging\" as a template"),
        "{error}"
    );
    // A source is an ordinary template when nobody is connected to it (its
    // pin holder steps aside); the copy is a plain database, not a clone.
    admin
        .batch_execute("CREATE DATABASE copy_of_source TEMPLATE prod")
        .unwrap();
    assert_eq!(
        rows(&cluster, "copy_of_source", "SELECT count(*) FROM t"),
        ["1000"]
    );
    assert_eq!(
        rows(
            &cluster,
            "postgres",
            "SELECT datname FROM pg_database WHERE datname LIKE 'copy%' ORDER BY 1"
        ),
        ["copy_of_source"]
    );
    // While a clone is being made its source is in use, so TEMPLATE refuses as PostgreSQL does.
    let mut cloner = cluster.connect("prod").unwrap();
    cloner
        .batch_execute("SET cow.debug_failpoint = 'sleep:after_catalog_copy'")
        .unwrap();
    // The cloning session stays connected until joined.
    let clone = std::thread::spawn(move || {
        let outcome = cloner.batch_execute("SELECT cow.clone('prod', 'second')");
        (cloner, outcome)
    });
    std::thread::sleep(std::time::Duration::from_millis(500));
    let error = admin
        .batch_execute("CREATE DATABASE copy_during_clone TEMPLATE prod")
        .unwrap_err();
    assert_eq!(sqlstate(&error), "55006", "{error}");
    let (_cloner, outcome) = clone.join().unwrap();
    outcome.unwrap();
    assert_eq!(rows(&cluster, "second", "SELECT count(*) FROM t"), ["1000"]);
}

#[test]
fn cloning_a_database_that_is_being_dropped_fails_cleanly() {
    let cluster = start_test_cluster(|_| {}).unwrap();
    cluster
        .psql("postgres", "CREATE EXTENSION cowclone")
        .unwrap();
    cluster.psql("postgres", "CREATE DATABASE doomed").unwrap();
    cluster
        .psql(
            "doomed",
            "CREATE EXTENSION cowclone; CREATE TABLE t (i int)",
        )
        .unwrap();
    let doomed_oid = rows(
        &cluster,
        "postgres",
        "SELECT oid FROM pg_database WHERE datname = 'doomed'",
    )
    .remove(0);
    let mut expected = footprint(&cluster);
    expected.databases.retain(|d| d != "doomed");
    expected.database_dirs.remove(&doomed_oid);
    // DROP DATABASE takes its lock, then waits (up to 5 s) for this session to leave.
    let lingering = cluster.connect("doomed").unwrap();
    let mut dropper = cluster.connect("postgres").unwrap();
    let drop = std::thread::spawn(move || dropper.batch_execute("DROP DATABASE doomed"));
    std::thread::sleep(std::time::Duration::from_millis(500));
    let mut cloner = cluster.connect("postgres").unwrap();
    let clone =
        std::thread::spawn(move || cloner.batch_execute("SELECT cow.clone('doomed', 'orphan')"));
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(!clone.is_finished(), "the clone waits for the drop");
    std::mem::drop(lingering);
    drop.join().unwrap().unwrap();
    let error = clone.join().unwrap().unwrap_err();
    assert_eq!(sqlstate(&error), "3D000", "{error}");
    assert_eq!(footprint(&cluster), expected, "nothing half-created");
}

/// A storage swap, what pg_repack does at its first irreversible step (the
/// table's `pg_class` row gets the rebuilt table's file, the old file stays
/// to be dropped later under the other relation's name), is refused at its
/// commit: the old file is never dropped in a loop, nothing is left behind,
/// and the clone still answers. Emulated by hand on every major; with
/// Debian's `postgresql-15-repack` where the major has it.
#[test]
fn a_storage_swap_of_a_table_a_clone_reads_is_refused_at_its_commit() {
    let cluster = start_test_cluster(|_| {}).unwrap();
    cluster.psql("postgres", "CREATE DATABASE prod").unwrap();
    cluster
        .psql(
            "prod",
            "CREATE EXTENSION cowclone; CREATE TABLE places (id int PRIMARY KEY, name text); \
             INSERT INTO places SELECT g, 'p' || g FROM generate_series(1, 1000) g;",
        )
        .unwrap();
    cluster
        .psql("prod", "SELECT cow.clone('prod', 'staging')")
        .unwrap();
    cluster
        .psql(
            "prod",
            "CREATE TABLE places_new (LIKE places); INSERT INTO places_new SELECT * FROM places",
        )
        .unwrap();
    let expected = rows(
        &cluster,
        "staging",
        "SELECT t::text FROM places t ORDER BY id",
    );
    let storage = "SELECT relname, relfilenode FROM pg_class WHERE relname IN ('places', 'places_new') ORDER BY 1";
    let before = rows(&cluster, "prod", storage);
    let mut client = cluster.connect("prod").unwrap();
    let refused = client
        .batch_execute(
            "BEGIN; SET LOCAL allow_system_table_mods = on; \
             UPDATE pg_class SET relfilenode = CASE WHEN oid = 'places'::regclass \
                 THEN (SELECT relfilenode FROM pg_class WHERE oid = 'places_new'::regclass) \
                 ELSE (SELECT relfilenode FROM pg_class WHERE oid = 'places'::regclass) END \
              WHERE oid IN ('places'::regclass, 'places_new'::regclass); \
             COMMIT;",
        )
        .unwrap_err();
    assert_eq!(sqlstate(&refused), "2BP01", "{refused}");
    let db = refused.as_db_error().unwrap();
    assert!(
        db.message().contains("\"places\"")
            && db.message().contains("clone \"staging\" still reads it"),
        "{}",
        db.message()
    );
    assert!(db
        .hint()
        .unwrap_or_default()
        .contains("cow.materialize('staging')"));
    client.batch_execute("ROLLBACK").unwrap_or_default();
    assert_eq!(rows(&cluster, "prod", storage), before);
    // Changes of a clone's tables that keep their storage still commit.
    cluster
        .psql(
            "prod",
            "ALTER TABLE places RENAME TO sites; ALTER TABLE sites RENAME TO places",
        )
        .unwrap();
    assert_eq!(
        rows(
            &cluster,
            "staging",
            "SELECT t::text FROM places t ORDER BY id"
        ),
        expected
    );

    let pg_repack = cluster.pg.tool("pg_repack");
    if !pg_repack.exists() {
        eprintln!("pg_repack is not installed for this major: only the emulated swap was tested");
        return;
    }
    cluster.psql("prod", "CREATE EXTENSION pg_repack").unwrap();
    let run = cluster
        .client_command("pg_repack", "prod")
        .args(["-t", "places"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success(), "pg_repack succeeded: {stderr}");
    assert!(
        stderr.contains("still reads it") && stderr.contains("cow.materialize('staging')"),
        "{stderr}"
    );
    assert_eq!(rows(&cluster, "prod", storage), before);
    assert_eq!(
        rows(&cluster, "prod", "SELECT relname FROM pg_class WHERE relnamespace = 'repack'::regnamespace AND relkind = 'r'"),
        Vec::<String>::new(),
        "pg_repack left a table behind"
    );
    assert_eq!(
        rows(
            &cluster,
            "staging",
            "SELECT t::text FROM places t ORDER BY id"
        ),
        expected
    );
    assert_eq!(
        rows(&cluster, "prod", "SELECT count(*) FROM places"),
        ["1000"]
    );
}
