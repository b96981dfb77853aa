//! `ALTER EXTENSION cowclone UPDATE` from every earlier release, with live
//! clones: the clones keep answering, and the new objects appear. And a data
//! directory of 0.2.0 (records in files, a text witness) started with the
//! current library: its records move into the catalog.

mod common;

use std::time::Duration;

use common::{contents, holder_of, rows, wait_until};
use pg_test::cluster::free_port;
use pg_test::process::as_server_user;
use pg_test::{start_test_cluster, Cluster, ClusterConfig, PgInstall};

#[test]
fn an_install_of_0_1_0_with_live_clones_updates_in_place() {
    updates_in_place_with_live_clones("0.1.0");
}

#[test]
fn an_install_of_0_2_0_with_live_clones_updates_in_place() {
    updates_in_place_with_live_clones("0.2.0");
}

#[test]
fn an_install_of_0_3_0_with_live_clones_updates_in_place() {
    updates_in_place_with_live_clones("0.3.0");
}

#[test]
fn an_install_of_0_4_0_with_live_clones_updates_in_place() {
    updates_in_place_with_live_clones("0.4.0");
}

#[test]
fn an_install_of_0_5_0_with_live_clones_updates_in_place() {
    updates_in_place_with_live_clones("0.5.0");
}

fn updates_in_place_with_live_clones(from: &str) {
    let cluster = start_test_cluster(|c| {
        c.settings.push("cow.retention_mark_interval = 1".into());
    })
    .unwrap();
    cluster.psql("postgres", "CREATE DATABASE prod").unwrap();
    cluster
        .psql(
            "prod",
            &format!(
                "CREATE EXTENSION cowclone VERSION '{from}'; \
             CREATE TABLE t (i int PRIMARY KEY, s text); \
             INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 2000) g;"
            ),
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
        [from]
    );
    // The release's SQL runs against the current library.
    assert_eq!(
        rows(&cluster, "prod", "SELECT clone, source FROM cow.clones"),
        ["staging|prod"]
    );
    let had_pins = rows(
        &cluster,
        "prod",
        "SELECT to_regclass('cow.pins') IS NOT NULL",
    );
    assert_eq!(had_pins, [if from == "0.1.0" { "f" } else { "t" }]);

    cluster
        .psql("prod", "ALTER EXTENSION cowclone UPDATE")
        .unwrap();
    // The clone's catalog is its own: its copy of the extension updates there.
    cluster
        .psql("staging", "ALTER EXTENSION cowclone UPDATE")
        .unwrap();
    for db in ["prod", "staging"] {
        assert_eq!(
            rows(&cluster, db, &format!("SELECT extversion = cow.version(), extversion <> '{from}' FROM pg_extension WHERE extname = 'cowclone'")),
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
    // 0.6.0: a clone made before the update is cloned in turn, and its
    // child keeps answering once the parent is materialized.
    cluster
        .psql("prod", "SELECT cow.clone('staging', 'staging_child')")
        .unwrap();
    assert_eq!(contents(&cluster, "staging_child", "t", ""), changed);
    assert_eq!(
        rows(
            &cluster,
            "prod",
            "SELECT level, database, status FROM cow.lineage('staging_child')"
        ),
        [
            "0|prod|source",
            "1|staging|shadowed",
            "2|staging_child|shadowed"
        ]
    );
    // A clone made before the update materializes with the updated SQL.
    assert_eq!(
        rows(
            &cluster,
            "prod",
            "SELECT status FROM cow.materialize('staging')"
        ),
        ["materialized"]
    );
    assert_eq!(contents(&cluster, "staging", "t", ""), changed);
    assert_eq!(
        rows(
            &cluster,
            "staging",
            "SELECT count(*) FROM pg_class c JOIN pg_am a ON a.oid = c.relam WHERE a.amname LIKE 'cow%'"
        ),
        ["0"]
    );
    assert_eq!(contents(&cluster, "staging_child", "t", ""), changed);
    // And a clone made after the update works alike.
    cluster
        .psql("prod", "SELECT cow.clone('prod', 'after_update')")
        .unwrap();
    assert_eq!(contents(&cluster, "after_update", "t", ""), expected);
    // 0.5.0: a history window, and a clone as of a point of it.
    assert_eq!(
        rows(
            &cluster,
            "prod",
            "SELECT cow.set_retention('prod', interval '1 hour')"
        ),
        ["t"]
    );
    wait_until("the window's first mark", Duration::from_secs(30), || {
        rows(
            &cluster,
            "prod",
            "SELECT window_start_lsn IS NOT NULL FROM cow.retention",
        ) == ["t"]
    });
    let point = rows(&cluster, "prod", "SELECT pg_current_wal_insert_lsn()");
    cluster
        .psql("prod", "UPDATE t SET s = 'after the point' WHERE i <= 5")
        .unwrap();
    wait_until("a mark after the point", Duration::from_secs(30), || {
        rows(
            &cluster,
            "prod",
            &format!(
                "SELECT newest_mark_lsn >= '{}' FROM cow.retention",
                point[0]
            ),
        ) == ["t"]
    });
    cluster
        .psql(
            "prod",
            &format!(
                "SELECT cow.clone('prod', 'as_of_point', as_of_lsn => '{}')",
                point[0]
            ),
        )
        .unwrap();
    assert_eq!(contents(&cluster, "as_of_point", "t", ""), expected);
}

/// A 0.2.0 data directory: records in `pg_cowclone/<clone oid>.state`
/// (magic, then the same encoding the catalog label carries in hex) and the
/// witness as the source's OID in text. Made from a current one by moving
/// the record out of the catalog while the server is down.
#[test]
fn a_data_directory_of_0_2_0_has_its_records_moved_into_the_catalog() {
    let mut cluster = start_test_cluster(|_| {}).unwrap();
    cluster.psql("postgres", "CREATE DATABASE prod").unwrap();
    cluster
        .psql(
            "prod",
            "CREATE EXTENSION cowclone; CREATE TABLE t (i int PRIMARY KEY, s text); \
             INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 2000) g;",
        )
        .unwrap();
    let expected = contents(&cluster, "prod", "t", "");
    cluster
        .psql("prod", "SELECT cow.clone('prod', 'staging')")
        .unwrap();
    let oid = |db: &str| {
        rows(
            &cluster,
            "postgres",
            &format!("SELECT oid FROM pg_database WHERE datname = '{db}'"),
        )
        .remove(0)
    };
    let (clone, source) = (oid("staging"), oid("prod"));
    let label_query =
        format!("SELECT label FROM pg_shseclabel WHERE provider = 'cowclone' AND objoid = {clone}");
    let label = rows(&cluster, "postgres", &label_query).remove(0);
    let hex = label
        .strip_prefix(&format!("cowclone state 1 source {source} "))
        .unwrap();
    let mut legacy = b"COWCLON2".to_vec();
    legacy.extend(
        (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()),
    );
    cluster
        .psql(
            "postgres",
            &format!("DELETE FROM pg_shseclabel WHERE provider = 'cowclone' AND objoid = {clone}"),
        )
        .unwrap();
    cluster.stop().unwrap();
    let data = cluster.data_dir();
    let record_file = data.join("pg_cowclone").join(format!("{clone}.state"));
    std::fs::write(&record_file, &legacy).unwrap();
    let witness = data.join("base").join(&clone).join("cowclone_clone");
    std::fs::write(&witness, &source).unwrap();
    cluster.start().unwrap();

    wait_until(
        "the launcher to move the record",
        std::time::Duration::from_secs(30),
        || !record_file.exists(),
    );
    // 0.2.0's record ends where 0.4.0's trailer (materialized relations,
    // owner OIDs) begins: the moved record is the original up to there.
    let moved = rows(&cluster, "postgres", &label_query).remove(0);
    assert!(
        label.starts_with(&moved) && moved.len() > 60,
        "moved {moved}, made {label}"
    );
    assert_eq!(std::fs::metadata(&witness).unwrap().len(), 8192);
    assert!(cluster
        .log()
        .contains("moved 1 clone record(s) of 0.2.0 into the catalog"));
    assert_eq!(contents(&cluster, "staging", "t", ""), expected);
    assert_eq!(
        rows(&cluster, "prod", "SELECT clone, pin_state FROM cow.clones"),
        ["staging|source-only"]
    );
}

/// pg_upgrade carries relation files and the catalog but neither a clone's
/// witness nor its source's slot, so it is refused before it starts, while
/// a clone exists: `--check` and the real run alike. The old cluster is
/// left as it was. Upgrades to the next major when it is provisioned here
/// (15 to 16 in `--pg all`), else within the same major, which takes the
/// same path: pg_upgrade starts the old cluster in binary-upgrade mode.
#[test]
fn pg_upgrade_is_refused_while_a_clone_exists() {
    let mut old = start_test_cluster(|_| {}).unwrap();
    old.psql("postgres", "CREATE DATABASE prod").unwrap();
    old.psql(
        "prod",
        "CREATE EXTENSION cowclone; CREATE TABLE t (i int PRIMARY KEY, s text); \
         INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 2000) g;",
    )
    .unwrap();
    old.psql("prod", "SELECT cow.clone('prod', 'staging')")
        .unwrap();
    let expected = contents(&old, "staging", "t", "");
    old.stop().unwrap();

    let next = PgInstall::for_major(old.pg.major + 1)
        .ok()
        .filter(|pg| pg.tool("pg_upgrade").exists() && pg.tool("initdb").exists());
    let new_pg = next.unwrap_or_else(|| old.pg.clone());
    println!("pg_upgrade from {} to {}", old.pg.major, new_pg.major);
    let new = Cluster::temporary_stopped(&new_pg, ClusterConfig::for_tests().unwrap()).unwrap();
    if new_pg.major >= 18 && old.pg.major < 18 {
        // initdb enables data checksums by default from 18 on; pg_upgrade
        // needs both clusters alike.
        let mut disable = as_server_user(new_pg.tool("pg_checksums"));
        disable.arg("--disable").arg("-D").arg(new.data_dir());
        let out = disable.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for check in [true, false] {
        let mut upgrade = as_server_user(new_pg.tool("pg_upgrade"));
        upgrade
            .current_dir(&new.dir)
            .arg("-b")
            .arg(&old.pg.bin_dir)
            .arg("-B")
            .arg(&new_pg.bin_dir)
            .arg("-d")
            .arg(old.data_dir())
            .arg("-D")
            .arg(new.data_dir())
            .args(["-p", &free_port().unwrap().to_string()])
            .args(["-P", &free_port().unwrap().to_string()])
            .arg("-s")
            .arg(&new.dir);
        if check {
            upgrade.arg("--check");
        }
        let out = upgrade.output().unwrap();
        let said = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "pg_upgrade (check: {check}) succeeded: {said}"
        );
        assert!(
            said.contains("could not connect to source postmaster"),
            "{said}"
        );
        assert!(
            server_logs_under(&new.data_dir()).iter().any(|log| log
                .contains("pg_upgrade cannot carry cowclone clones")
                && log.contains("drop the clones")),
            "no refusal in pg_upgrade's server logs; pg_upgrade said: {said}"
        );
    }
    // Nothing changed: the old cluster starts and its clone answers.
    old.start().unwrap();
    assert_eq!(contents(&old, "staging", "t", ""), expected);
}

/// The text of every log file under `dir` (pg_upgrade keeps the servers'
/// logs in `pg_upgrade_output.d/<time>/log/` of the new data directory).
fn server_logs_under(dir: &std::path::Path) -> Vec<String> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(server_logs_under(&path));
        } else if path.extension().is_some_and(|e| e == "log") {
            found.push(std::fs::read_to_string(&path).unwrap_or_default());
        }
    }
    found
}
