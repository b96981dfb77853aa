//! `ALTER EXTENSION cowclone UPDATE` from every earlier release, with live
//! clones: the clones keep answering, and the new objects appear.

mod common;

use common::{contents, holder_of, rows};
use pg_test::start_test_cluster;

#[test]
fn an_install_of_0_1_0_with_live_clones_updates_in_place() {
    let cluster = start_test_cluster(|_| {}).unwrap();
    cluster.psql("postgres", "CREATE DATABASE prod").unwrap();
    cluster
        .psql(
            "prod",
            "CREATE EXTENSION cowclone VERSION '0.1.0'; \
             CREATE TABLE t (i int PRIMARY KEY, s text); \
             INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 2000) g;",
        )
        .unwrap();
    let expected = contents(&cluster, "prod", "t", "");
    cluster
        .psql("prod", "SELECT cow.clone('prod', 'staging')")
        .unwrap();
    cluster
        .psql("staging", "UPDATE t SET s = 'changed' WHERE i <= 10")
        .unwrap();
    assert_eq!(
        rows(
            &cluster,
            "prod",
            "SELECT extversion FROM pg_extension WHERE extname = 'cowclone'"
        ),
        ["0.1.0"]
    );
    // 0.1.0's SQL runs against the current library.
    assert_eq!(
        rows(&cluster, "prod", "SELECT clone, source FROM cow.clones"),
        ["staging|prod"]
    );
    assert!(rows(&cluster, "prod", "SELECT to_regclass('cow.pins') IS NULL") == ["t"]);

    cluster
        .psql("prod", "ALTER EXTENSION cowclone UPDATE")
        .unwrap();
    // The clone's catalog is its own: its copy of the extension updates there.
    cluster
        .psql("staging", "ALTER EXTENSION cowclone UPDATE")
        .unwrap();
    for db in ["prod", "staging"] {
        assert_eq!(
            rows(&cluster, db, "SELECT extversion = cow.version(), extversion <> '0.1.0' FROM pg_extension WHERE extname = 'cowclone'"),
            ["t|t"],
            "{db}"
        );
    }
    holder_of(&cluster, "prod");
    assert_eq!(
        rows(
            &cluster,
            "prod",
            "SELECT source, clones, scope, horizon_clone FROM cow.pins"
        ),
        ["prod|1|source-only|staging"]
    );
    assert_eq!(
        rows(
            &cluster,
            "staging",
            "SELECT clone, pin_state FROM cow.clones"
        ),
        ["staging|source-only"]
    );
    // The clone still answers as of its clone point plus its own writes.
    let mut changed = expected.clone();
    for row in changed.iter_mut() {
        let i: i32 = row[1..].split(',').next().unwrap().parse().unwrap();
        if i <= 10 {
            *row = format!("({i},changed)");
        }
    }
    changed.sort();
    assert_eq!(contents(&cluster, "staging", "t", ""), changed);
    // And a clone made after the update works alike.
    cluster
        .psql("prod", "SELECT cow.clone('prod', 'after_update')")
        .unwrap();
    assert_eq!(contents(&cluster, "after_update", "t", ""), expected);
}
