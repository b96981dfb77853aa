//! A clone interrupted at any point, by an error or by a crash of the whole
//! server, leaves nothing behind once the server is back; the retry succeeds.

mod common;

use std::time::{Duration, Instant};

use common::{catalog_checks_pass, footprint, rows, sqlstate, wait_until, Footprint};
use pg_test::{start_test_cluster, Cluster};

const POINTS: [&str; 4] = [
    "after_createdb",
    "after_pin",
    "after_catalog_copy",
    "before_commit",
];

fn cluster_with_source() -> Cluster {
    let cluster = start_test_cluster(|_| {}).unwrap();
    cluster.psql("postgres", "CREATE DATABASE prod").unwrap();
    cluster
        .psql("prod", "CREATE EXTENSION cowclone; CREATE TABLE t (i int PRIMARY KEY, s text); INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 1000) g;")
        .unwrap();
    cluster
}

fn retry_succeeds(cluster: &Cluster, before: &Footprint) {
    cluster
        .psql("prod", "SELECT cow.clone('prod', 'staging')")
        .unwrap();
    catalog_checks_pass(cluster, "staging");
    let after = footprint(cluster);
    assert_eq!(after.databases.len(), before.databases.len() + 1);
    assert_eq!(after.slots.len(), before.slots.len() + 1);
    assert_eq!(
        rows(cluster, "prod", "SELECT clone FROM cow.clones"),
        ["staging"]
    );
}

#[test]
fn an_error_at_any_point_leaves_nothing() {
    let cluster = cluster_with_source();
    let before = footprint(&cluster);
    let mut client = cluster.connect("prod").unwrap();
    for point in POINTS {
        client
            .batch_execute(&format!("SET cow.debug_failpoint = 'error:{point}'"))
            .unwrap();
        let error = client
            .batch_execute("SELECT cow.clone('prod', 'staging')")
            .unwrap_err();
        assert_eq!(sqlstate(&error), "XX000", "{point}: {error}");
        // The client returns on the error message; the session has cleaned up
        // once it is ready for the next command.
        client.batch_execute("SELECT 1").unwrap();
        assert_eq!(
            footprint(&cluster),
            before,
            "an error at {point} left something behind"
        );
    }
    client.batch_execute("RESET cow.debug_failpoint").unwrap();
    retry_succeeds(&cluster, &before);
}

#[test]
fn the_failpoint_setting_is_for_superusers_only() {
    let cluster = cluster_with_source();
    cluster.psql("postgres", "CREATE ROLE plain LOGIN").unwrap();
    let mut plain = cluster.connect_as("plain", "prod").unwrap();
    let error = plain
        .batch_execute("SET cow.debug_failpoint = 'error:after_pin'")
        .unwrap_err();
    assert_eq!(sqlstate(&error), "42501");
}

fn crash_at(point: &str) {
    let mut cluster = cluster_with_source();
    let before = footprint(&cluster);
    let mut client = cluster.connect("prod").unwrap();
    let cloning = std::thread::spawn({
        let point = point.to_string();
        move || {
            client
                .batch_execute(&format!("SET cow.debug_failpoint = 'pause:{point}'"))
                .unwrap();
            client.batch_execute("SELECT cow.clone('prod', 'staging')")
        }
    });
    let marker = format!("paused at failpoint \"{point}\"");
    wait_until(&marker, Duration::from_secs(60), || {
        cluster.log().contains(&marker)
    });

    cluster.crash().unwrap();
    assert!(
        cloning.join().unwrap().is_err(),
        "the clone cannot have completed"
    );
    cluster.start().unwrap();

    // The start-up worker removes the interrupted clone on its own.
    wait_until("the reconciler", Duration::from_secs(60), || {
        footprint(&cluster) == before
    });
    assert!(
        cluster.log().contains("cowclone: removed clone"),
        "the worker says what it removed"
    );
    retry_succeeds(&cluster, &before);
}

#[test]
fn a_crash_after_createdb_leaves_nothing() {
    crash_at("after_createdb");
}

#[test]
fn a_crash_after_the_pin_leaves_nothing() {
    crash_at("after_pin");
}

#[test]
fn a_crash_after_the_catalog_copy_leaves_nothing() {
    crash_at("after_catalog_copy");
}

#[test]
fn a_crash_just_before_commit_leaves_nothing() {
    crash_at("before_commit");
}

#[test]
fn ddl_in_the_source_during_a_clone_waits_only_if_it_drops_storage() {
    let cluster = cluster_with_source();
    let before = footprint(&cluster);
    let mut client = cluster.connect("prod").unwrap();
    let cloning = std::thread::spawn(move || {
        client
            .batch_execute("SET cow.debug_failpoint = 'sleep:after_pin'")
            .unwrap();
        client.batch_execute("SELECT cow.clone('prod', 'staging')")
    });
    let marker = "paused at failpoint \"after_pin\"";
    wait_until(marker, Duration::from_secs(60), || {
        cluster.log().contains(marker)
    });

    // Creating storage does not wait for the clone...
    let started = Instant::now();
    cluster
        .psql("prod", "CREATE TABLE created_meanwhile (i int)")
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "CREATE TABLE waited for the clone"
    );
    assert!(!cloning.is_finished());
    // ...rewriting a catalog does: it commits after the clone, which never
    // sees its catalog change underneath the copy.
    let index_node =
        "SELECT relfilenode FROM pg_class WHERE relname = 'pg_description_o_c_o_index'";
    let original = rows(&cluster, "prod", index_node);
    cluster
        .psql("prod", "REINDEX INDEX pg_description_o_c_o_index")
        .unwrap();
    cloning.join().unwrap().unwrap();
    assert_ne!(
        rows(&cluster, "prod", index_node),
        original,
        "the source's index was rebuilt"
    );
    assert_eq!(
        rows(&cluster, "staging", index_node),
        original,
        "the clone has the catalog from before the REINDEX"
    );
    catalog_checks_pass(&cluster, "staging");
    assert_eq!(
        footprint(&cluster).databases.len(),
        before.databases.len() + 1
    );
}

#[test]
fn a_committed_clone_survives_a_crash() {
    let mut cluster = cluster_with_source();
    // Keep the checkpointer out of it: the clone's pages are then only in
    // shared buffers and the WAL when the server dies.
    cluster.psql("postgres", "CHECKPOINT").unwrap();
    cluster
        .psql("prod", "SELECT cow.clone('prod', 'staging')")
        .unwrap();
    let catalog = "SELECT oid, relname, relfilenode, relkind FROM pg_class WHERE relpersistence <> 't' ORDER BY oid";
    let expected = rows(&cluster, "prod", catalog);
    cluster.crash().unwrap();
    cluster.start().unwrap();
    assert_eq!(
        rows(&cluster, "staging", catalog),
        expected,
        "crash recovery rebuilt the clone's catalog from WAL"
    );
    catalog_checks_pass(&cluster, "staging");
    assert_eq!(
        rows(&cluster, "prod", "SELECT clone FROM cow.clones"),
        ["staging"]
    );
}

#[test]
fn a_pin_left_without_its_clone_is_released_at_restart() {
    let mut cluster = cluster_with_source();
    let before = footprint(&cluster);
    cluster
        .psql("prod", "SELECT cow.clone('prod', 'staging')")
        .unwrap();
    let oid_of = |db: &str| {
        rows(
            &cluster,
            "postgres",
            &format!("SELECT oid FROM pg_database WHERE datname = '{db}'"),
        )
        .remove(0)
    };
    let (clone_oid, source_oid) = (oid_of("staging"), oid_of("prod"));
    // Lose the clone's record: nothing is left that says the source's pin
    // is needed.
    cluster
        .psql(
            "postgres",
            &format!(
                "DELETE FROM pg_shseclabel WHERE provider = 'cowclone' AND objoid = {clone_oid}"
            ),
        )
        .unwrap();
    cluster.stop().unwrap();
    cluster.start().unwrap();
    let released = format!("released the pin of database {source_oid}: no clones left");
    wait_until("the launcher", Duration::from_secs(30), || {
        cluster.log().contains(&released)
    });
    // The clone knows it is one: it refuses to answer rather than read only its own part.
    let error = cluster
        .connect("staging")
        .unwrap()
        .batch_execute("SELECT count(*) FROM t")
        .unwrap_err();
    assert_eq!(sqlstate(&error), "XX001", "{error}");
    cluster.psql("postgres", "DROP DATABASE staging").unwrap();
    assert_eq!(footprint(&cluster), before);
}
