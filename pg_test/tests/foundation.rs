//! The extension's basics, checked in real clusters through real client
//! connections: loading, the schema, the preload requirement.

use pg_test::extension::workspace_root;
use pg_test::start_test_cluster;

/// The extension crate's version, read from its manifest.
fn extension_version() -> String {
    let manifest = std::fs::read_to_string(workspace_root().join("Cargo.toml")).unwrap();
    manifest
        .lines()
        .find_map(|l| l.strip_prefix("version = \""))
        .and_then(|rest| rest.strip_suffix('"'))
        .expect("the manifest has a package version")
        .to_string()
}

#[test]
fn extension_works_in_two_databases_over_several_connections() {
    let cluster = start_test_cluster(|_| {}).unwrap();
    cluster.psql("postgres", "CREATE DATABASE alpha").unwrap();
    cluster.psql("postgres", "CREATE DATABASE beta").unwrap();

    // Sessions stay open in both databases while the extension is created and used.
    let mut alpha_idle = cluster.connect("alpha").unwrap();
    let mut beta_idle = cluster.connect("beta").unwrap();
    alpha_idle
        .batch_execute("BEGIN; CREATE TABLE t(i int); INSERT INTO t VALUES (1);")
        .unwrap();

    for db in ["alpha", "beta"] {
        let mut admin = cluster.connect(db).unwrap();
        admin.batch_execute("CREATE EXTENSION cowclone").unwrap();
        for _ in 0..3 {
            let mut client = cluster.connect(db).unwrap();
            let row = client
                .query_one("SELECT cow.version(), cow.preloaded()", &[])
                .unwrap();
            assert_eq!(row.get::<_, String>(0), extension_version());
            assert!(
                row.get::<_, bool>(1),
                "the harness cluster preloads cowclone"
            );
        }
    }
    alpha_idle.batch_execute("COMMIT").unwrap();
    let count: i64 = alpha_idle
        .query_one("SELECT count(*) FROM t", &[])
        .unwrap()
        .get(0);
    assert_eq!(count, 1);

    // Everything the extension made, the schema included, goes with it.
    beta_idle.batch_execute("DROP EXTENSION cowclone").unwrap();
    let leftovers: i64 = beta_idle
        .query_one(
            "SELECT (SELECT count(*) FROM pg_namespace WHERE nspname = 'cow') \
                  + (SELECT count(*) FROM pg_proc WHERE proname IN ('version', 'preloaded', '_require_preloaded') \
                     AND pronamespace NOT IN ('pg_catalog'::regnamespace))",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(leftovers, 0, "DROP EXTENSION leaves nothing behind");
    beta_idle
        .batch_execute("CREATE EXTENSION cowclone")
        .unwrap();
    let version: String = beta_idle
        .query_one("SELECT cow.version()", &[])
        .unwrap()
        .get(0);
    assert_eq!(version, extension_version());

    // The other database's installation is untouched by all of this.
    let version: String = alpha_idle
        .query_one("SELECT cow.version()", &[])
        .unwrap()
        .get(0);
    assert_eq!(version, extension_version());
}

#[test]
fn create_extension_without_preload_fails_with_a_hint_and_leaves_nothing() {
    let cluster = start_test_cluster(|config| config.preload = false).unwrap();
    let mut client = cluster.connect("postgres").unwrap();

    let error = client
        .batch_execute("CREATE EXTENSION cowclone")
        .unwrap_err();
    let db_error = error
        .as_db_error()
        .expect("a server error, not a connection failure");
    assert_eq!(
        db_error.code().code(),
        "55000",
        "object_not_in_prerequisite_state"
    );
    assert_eq!(
        db_error.message(),
        "cowclone must be loaded via shared_preload_libraries"
    );
    let hint = db_error.hint().expect("the error carries a hint");
    assert!(
        hint.contains("shared_preload_libraries") && hint.contains("restart"),
        "hint: {hint}"
    );

    let leftovers: i64 = client
        .query_one(
            "SELECT (SELECT count(*) FROM pg_extension WHERE extname = 'cowclone') \
                  + (SELECT count(*) FROM pg_namespace WHERE nspname = 'cow')",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(
        leftovers, 0,
        "a failed CREATE EXTENSION leaves nothing behind"
    );

    // The session is still usable, and says why without erroring.
    let preloaded_setting: String = client
        .query_one("SHOW shared_preload_libraries", &[])
        .unwrap()
        .get(0);
    assert_eq!(preloaded_setting, "");
}
