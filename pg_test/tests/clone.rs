//! `cow.clone` against real clusters: the clone's catalog is the source's as
//! of the clone point, creation never disturbs the source, and every refusal
//! leaves nothing behind.

use std::process::Stdio;
use std::time::Duration;

mod common;

use common::{
    assert_footprint_returns_to, catalog_checks_pass, footprint, normalized_dump, rich_schema,
    rows, sqlstate,
};
use pg_test::{start_test_cluster, Cluster};

/// A cluster with database `prod` holding the rich schema and cowclone.
fn cluster_with_rich_source() -> Cluster {
    let cluster = start_test_cluster(|_| {}).unwrap();
    cluster.psql("postgres", "CREATE DATABASE prod").unwrap();
    cluster.psql("prod", "CREATE EXTENSION cowclone").unwrap();
    cluster.psql_file("prod", &rich_schema()).unwrap();
    cluster
}

#[test]
fn clone_reproduces_the_source_catalog() {
    let cluster = cluster_with_rich_source();
    cluster
        .psql("postgres", "CREATE EXTENSION cowclone")
        .unwrap();
    let sequence_at_clone: i64 = cluster
        .psql("prod", "SELECT last_value FROM app.ticket_seq")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let dump_before = normalized_dump(&cluster, "prod");

    // Called from another database, while a session sits in the source.
    let mut bystander = cluster.connect("prod").unwrap();
    bystander
        .batch_execute(
            "CREATE TEMP TABLE session_scratch (i int); BEGIN; SELECT count(*) FROM app.parent;",
        )
        .unwrap();
    let mut admin = cluster.connect("postgres").unwrap();
    let row = admin.query_one("SELECT clone, source, catalog_relations, shadowed_relations FROM cow.clone('prod', 'staging')", &[]).unwrap();
    assert_eq!(row.get::<_, String>(0), "staging");
    assert_eq!(row.get::<_, String>(1), "prod");
    assert!(row.get::<_, i64>(2) > 200, "the whole catalog is copied");
    assert!(
        row.get::<_, i64>(3) > 20,
        "user tables, toast tables and indexes are shadowed"
    );
    bystander.batch_execute("COMMIT").unwrap();

    // Other sessions' temporary tables are left out: the clone's autovacuum
    // drops them as orphans (no session of the clone owns them).
    for (catalog, query) in [
        ("pg_class", "SELECT oid, relname, relnamespace, reltype, reloftype, relfilenode, relkind, relpersistence, reltoastrelid FROM pg_class WHERE relpersistence <> 't' ORDER BY oid"),
        ("pg_type", "SELECT oid, typname, typnamespace, typrelid, typelem, typarray, typbasetype FROM pg_type WHERE typnamespace NOT IN (SELECT oid FROM pg_namespace WHERE nspname ~ '^pg_(toast_)?temp_') ORDER BY oid"),
        ("pg_enum", "SELECT oid, enumtypid, enumsortorder, enumlabel FROM pg_enum ORDER BY oid"),
        ("pg_attribute", "SELECT attrelid, attnum, attname, atttypid, attisdropped FROM pg_attribute WHERE attrelid IN (SELECT oid FROM pg_class WHERE relpersistence <> 't') ORDER BY 1, 2"),
        ("pg_proc", "SELECT oid, proname, pronamespace, prorettype FROM pg_proc ORDER BY oid"),
        ("pg_constraint", "SELECT oid, conname, conrelid, confrelid FROM pg_constraint ORDER BY oid"),
        ("pg_policy", "SELECT oid, polname, polrelid FROM pg_policy ORDER BY oid"),
        ("pg_collation", "SELECT oid, collname FROM pg_collation ORDER BY oid"),
    ] {
        assert_eq!(rows(&cluster, "prod", query), rows(&cluster, "staging", query), "{catalog} differs");
    }
    assert_eq!(
        rows(&cluster, "postgres", "SELECT encoding, datcollate, datctype, datlocprovider FROM pg_database WHERE datname = 'prod'"),
        rows(&cluster, "postgres", "SELECT encoding, datcollate, datctype, datlocprovider FROM pg_database WHERE datname = 'staging'"),
    );
    assert_eq!(
        rows(&cluster, "postgres", "SELECT setrole, setconfig FROM pg_db_role_setting WHERE setdatabase = (SELECT oid FROM pg_database WHERE datname = 'staging') ORDER BY 1"),
        rows(&cluster, "postgres", "SELECT setrole, setconfig FROM pg_db_role_setting WHERE setdatabase = (SELECT oid FROM pg_database WHERE datname = 'prod') ORDER BY 1"),
        "ALTER DATABASE ... SET settings are copied"
    );
    assert_eq!(rows(&cluster, "staging", "SHOW work_mem"), ["7MB"]);
    assert_eq!(
        normalized_dump(&cluster, "staging"),
        dump_before,
        "schema-only dumps differ beyond access methods"
    );
    catalog_checks_pass(&cluster, "staging");

    // Shadowed relations use cowclone's access methods; the rest is untouched.
    // The extension's own tables (the tombstones) are the clone's, not shadowed.
    let ams = rows(
        &cluster,
        "staging",
        "SELECT DISTINCT c.relkind::text || ':' || a.amname FROM pg_class c JOIN pg_am a ON a.oid = c.relam \
         WHERE c.oid >= 16384 AND c.relkind IN ('r', 'm', 't', 'i') AND c.relnamespace <> 'cow'::regnamespace ORDER BY 1",
    );
    assert_eq!(
        rows(
            &cluster,
            "staging",
            "SELECT string_agg(c.relname || ':' || a.amname, ',' ORDER BY c.relname) FROM pg_class c \
             JOIN pg_am a ON a.oid = c.relam WHERE c.relnamespace = 'cow'::regnamespace AND c.relkind IN ('r', 'i')",
        ),
        ["tombstone:heap,tombstone_source:btree"]
    );
    assert_eq!(
        ams,
        [
            "i:cow_brin",
            "i:cow_btree",
            "i:cow_gin",
            "i:cow_gist",
            "i:cow_hash",
            "i:cow_spgist",
            "m:cow",
            "r:cow",
            "t:cow"
        ]
    );

    // Shadowed tables answer from the source; writes change the clone only.
    assert_eq!(
        rows(&cluster, "staging", "SELECT count(*) FROM app.everything"),
        rows(&cluster, "prod", "SELECT count(*) FROM app.everything")
    );
    let prod_before = rows(
        &cluster,
        "prod",
        "SELECT count(*), sum(small) FROM app.everything",
    );
    let mut clone = cluster.connect("staging").unwrap();
    clone
        .batch_execute(
            "INSERT INTO app.parent VALUES (100);
             UPDATE app.everything SET small = 1 WHERE id = 3;
             TRUNCATE app.child CASCADE",
        )
        .unwrap();
    assert_eq!(
        rows(
            &cluster,
            "staging",
            "SELECT small FROM app.everything WHERE id = 3"
        ),
        ["1"]
    );
    assert_eq!(
        rows(
            &cluster,
            "prod",
            "SELECT count(*), sum(small) FROM app.everything"
        ),
        prod_before
    );
    // Another session's temporary table stays that session's: no storage in the clone.
    // An unlogged table's local part is unlogged too: it has an (empty) init fork.
    let clone_dir = cluster.data_dir().join("base").join(
        &rows(
            &cluster,
            "postgres",
            "SELECT oid FROM pg_database WHERE datname = 'staging'",
        )[0],
    );
    let files: Vec<String> = std::fs::read_dir(&clone_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    let temp_node = &rows(
        &cluster,
        "prod",
        "SELECT relfilenode FROM pg_class WHERE relname = 'session_scratch'",
    )[0];
    assert!(
        !files.iter().any(|f| f.contains(temp_node.as_str())),
        "no file for another session's temp table"
    );
    let unlogged_node = &rows(
        &cluster,
        "staging",
        "SELECT relfilenode FROM pg_class WHERE relname = 'scratch'",
    )[0];
    assert!(
        files.contains(unlogged_node) && files.contains(&format!("{unlogged_node}_init")),
        "{files:?}"
    );

    // Sequences are copies: a value at least the one at the clone point.
    let next: i64 = clone
        .query_one("SELECT nextval('app.ticket_seq')", &[])
        .unwrap()
        .get(0);
    assert!(next > sequence_at_clone, "{next} > {sequence_at_clone}");
    // The clone is a real database: DDL, new tables, vacuum.
    clone.batch_execute("CREATE TABLE scratchpad (i int PRIMARY KEY); INSERT INTO scratchpad SELECT generate_series(1, 100);").unwrap();
    clone.batch_execute("VACUUM").unwrap();
    let count: i64 = clone
        .query_one("SELECT count(*) FROM scratchpad", &[])
        .unwrap()
        .get(0);
    assert_eq!(count, 100);
    drop(clone);

    // Lineage and pin.
    let lineage = rows(
        &cluster,
        "postgres",
        "SELECT clone, source, depth, status, pin, pin_age >= 0 FROM cow.clones",
    );
    assert_eq!(
        lineage,
        ["staging|prod|1|shadowed|cowclone_source_".to_string()
            + &rows(
                &cluster,
                "postgres",
                "SELECT oid FROM pg_database WHERE datname = 'prod'"
            )[0]
            + "|t"]
    );
    assert_eq!(
        rows(
            &cluster,
            "postgres",
            "SELECT level, database, status FROM cow.lineage('staging')"
        ),
        ["0|prod|source", "1|staging|shadowed"]
    );
    assert_eq!(
        rows(
            &cluster,
            "postgres",
            "SELECT count(*) FROM cow.lineage('prod')"
        ),
        ["0"]
    );
    assert_eq!(
        rows(
            &cluster,
            "postgres",
            "SELECT slot_type, xmin IS NOT NULL, restart_lsn IS NULL FROM pg_replication_slots"
        ),
        ["physical|t|t"],
        "one persistent physical slot pinning xmin, reserving no WAL"
    );
    let error = admin
        .query("SELECT * FROM cow.lineage('nope')", &[])
        .unwrap_err();
    assert_eq!(sqlstate(&error), "3D000");

    // DROP DATABASE of the clone releases its pin (its holder, woken by the
    // drop's commit, lets go a moment later) and its record.
    admin.batch_execute("DROP DATABASE staging").unwrap();
    common::wait_until("the pin to be released", Duration::from_secs(10), || {
        rows(
            &cluster,
            "postgres",
            "SELECT slot_name FROM pg_replication_slots",
        )
        .is_empty()
    });
    assert!(rows(&cluster, "postgres", "SELECT * FROM cow.clones").is_empty());
    assert!(footprint(&cluster).state_files.is_empty());
}

#[test]
fn cloning_a_live_source_disturbs_nobody() {
    let cluster = start_test_cluster(|_| {}).unwrap();
    cluster.psql("postgres", "CREATE DATABASE prod").unwrap();
    cluster.psql("prod", "CREATE EXTENSION cowclone").unwrap();
    let pgbench = cluster.pg.tool("pgbench");
    let init = cluster
        .client_command("pgbench", "prod")
        .args(["-i", "-q", "-s", "5"])
        .output()
        .unwrap();
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    assert!(pgbench.exists());

    let load = cluster
        .client_command("pgbench", "prod")
        .args(["-c", "4", "-j", "2", "-T", "30", "-n"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut clones = Vec::new();
    for i in 0..4 {
        std::thread::sleep(Duration::from_secs(5));
        let name = format!("branch_{i}");
        let elapsed = cluster
            .psql(
                "prod",
                &format!("SELECT elapsed_ms FROM cow.clone('prod', '{name}')"),
            )
            .unwrap();
        assert!(elapsed.trim().parse::<f64>().unwrap() > 0.0);
        clones.push(name);
    }
    let output = load.wait_with_output().unwrap();
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "pgbench failed: {report}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        report.contains("number of failed transactions: 0 (0.000%)"),
        "{report}"
    );
    assert!(
        !String::from_utf8_lossy(&output.stderr).contains("aborted"),
        "a client was disconnected"
    );

    for clone in &clones {
        assert_eq!(
            rows(&cluster, "prod", "SELECT oid, relname, relfilenode FROM pg_class WHERE relname LIKE 'pgbench%' ORDER BY 1"),
            rows(&cluster, clone, "SELECT oid, relname, relfilenode FROM pg_class WHERE relname LIKE 'pgbench%' ORDER BY 1"),
        );
        catalog_checks_pass(&cluster, clone);
    }
    assert_eq!(
        rows(&cluster, "prod", "SELECT count(*) FROM cow.clones"),
        ["4"]
    );
}

#[test]
fn bad_input_is_refused_and_leaves_nothing() {
    let cluster = start_test_cluster(|_| {}).unwrap();
    cluster.psql("postgres", "CREATE DATABASE prod").unwrap();
    cluster.psql("postgres", "CREATE DATABASE plain").unwrap();
    cluster
        .psql(
            "prod",
            "CREATE EXTENSION cowclone; CREATE TABLE t (i int); INSERT INTO t VALUES (1);",
        )
        .unwrap();
    cluster
        .psql(
            "postgres",
            "CREATE ROLE nobody LOGIN; CREATE ROLE builder LOGIN CREATEDB; CREATE ROLE outsider LOGIN CREATEDB; \
             ALTER DATABASE prod OWNER TO builder; REVOKE CONNECT ON DATABASE prod FROM PUBLIC; \
             GRANT CONNECT ON DATABASE prod TO outsider;",
        )
        .unwrap();
    let before = footprint(&cluster);

    let mut client = cluster.connect("prod").unwrap();
    let refusals = [
        ("SELECT cow.clone('nope', 'x')", "3D000"),
        ("SELECT cow.clone(NULL, 'x')", "22004"),
        ("SELECT cow.clone('prod', NULL)", "22004"),
        ("SELECT cow.clone('prod', 'plain')", "42P04"),
        ("SELECT cow.clone('prod', 'prod')", "22023"),
        ("SELECT cow.clone('prod', '')", "22023"),
        ("SELECT cow.clone('prod', repeat('x', 64))", "42622"),
        ("SELECT cow.clone('plain', 'x')", "55000"),
        ("BEGIN; SELECT cow.clone('prod', 'x')", "25001"),
        ("SELECT cow.clone('prod', 'x'); SELECT 1", "25001"),
    ];
    for (sql, expected) in refusals {
        let error = client.batch_execute(sql).unwrap_err();
        assert_eq!(sqlstate(&error), expected, "{sql}: {error}");
        client.batch_execute("ROLLBACK").unwrap();
    }
    let error = client
        .batch_execute("SELECT cow.clone('plain', 'x')")
        .unwrap_err();
    let hint = error
        .as_db_error()
        .and_then(|e| e.hint())
        .unwrap_or_default()
        .to_string();
    assert!(hint.contains("CREATE EXTENSION cowclone"), "{hint}");

    for role in ["nobody", "outsider"] {
        let mut as_role = cluster.connect_as(role, "postgres").unwrap();
        as_role.batch_execute("SET search_path = public").unwrap();
        cluster
            .psql("postgres", "CREATE EXTENSION IF NOT EXISTS cowclone")
            .unwrap();
        let error = as_role
            .batch_execute("SELECT cow.clone('prod', 'x')")
            .unwrap_err();
        assert_eq!(sqlstate(&error), "42501", "{role}: {error}");
    }
    cluster.psql("postgres", "DROP EXTENSION cowclone").unwrap();
    assert_eq!(footprint(&cluster), before, "refusals leave nothing behind");

    // Its owner with CREATEDB may clone it; the clone belongs to its maker.
    let mut builder = cluster.connect_as("builder", "prod").unwrap();
    builder
        .batch_execute("SELECT cow.clone('prod', 'mine')")
        .unwrap();
    assert_eq!(
        rows(
            &cluster,
            "postgres",
            "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'mine'"
        ),
        ["builder"]
    );
    // The same rule holds for a clone of a clone: its owner may clone it.
    builder
        .batch_execute("SELECT cow.clone('mine', 'grandchild')")
        .unwrap();
    assert_eq!(
        rows(
            &cluster,
            "postgres",
            "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'grandchild'"
        ),
        ["builder"]
    );
    cluster
        .psql("postgres", "DROP DATABASE grandchild")
        .unwrap();
    cluster.psql("postgres", "DROP DATABASE mine").unwrap();
    assert_footprint_returns_to(&cluster, &before, "dropping the clone leaves nothing");
}

#[test]
fn the_first_clone_of_a_source_needs_a_free_replication_slot_and_says_so() {
    let cluster =
        start_test_cluster(|config| config.settings.push("max_replication_slots = 1".into()))
            .unwrap();
    for db in ["prod", "prod2"] {
        cluster
            .psql("postgres", &format!("CREATE DATABASE {db}"))
            .unwrap();
        cluster.psql(db, "CREATE EXTENSION cowclone").unwrap();
    }
    // Clones of one source share its slot.
    for clone in ["first", "second"] {
        cluster
            .psql("prod", &format!("SELECT cow.clone('prod', '{clone}')"))
            .unwrap();
    }
    let before = footprint(&cluster);
    let mut client = cluster.connect("prod2").unwrap();
    let error = client
        .batch_execute("SELECT cow.clone('prod2', 'other')")
        .unwrap_err();
    assert_eq!(
        sqlstate(&error),
        "53400",
        "configuration_limit_exceeded: {error}"
    );
    let hint = error
        .as_db_error()
        .and_then(|e| e.hint())
        .unwrap_or_default()
        .to_string();
    assert!(hint.contains("max_replication_slots"), "{hint}");
    client.batch_execute("SELECT 1").unwrap();
    assert_eq!(footprint(&cluster), before, "nothing half-created");
    // Dropping a source's last clone frees its slot for the next source.
    cluster.psql("postgres", "DROP DATABASE first").unwrap();
    cluster.psql("postgres", "DROP DATABASE second").unwrap();
    common::wait_until(
        "the slot to be released",
        std::time::Duration::from_secs(30),
        || {
            rows(
                &cluster,
                "postgres",
                "SELECT count(*) FROM pg_replication_slots",
            ) == ["0"]
        },
    );
    client
        .batch_execute("SELECT cow.clone('prod2', 'other')")
        .unwrap();
}

#[test]
fn a_clone_needs_wal_level_replica_and_says_so() {
    let cluster = start_test_cluster(|config| {
        config.settings.extend([
            "wal_level = minimal".to_string(),
            "max_wal_senders = 0".to_string(),
        ])
    })
    .unwrap();
    cluster.psql("postgres", "CREATE DATABASE prod").unwrap();
    cluster.psql("prod", "CREATE EXTENSION cowclone").unwrap();
    let before = footprint(&cluster);
    let mut client = cluster.connect("prod").unwrap();
    let error = client
        .batch_execute("SELECT cow.clone('prod', 'staging')")
        .unwrap_err();
    assert_eq!(sqlstate(&error), "55000", "{error}");
    client.batch_execute("SELECT 1").unwrap();
    assert_eq!(footprint(&cluster), before);
}

#[test]
fn two_sessions_racing_for_one_target_leave_one_clone() {
    let cluster = cluster_with_rich_source();
    let before = footprint(&cluster);
    let racers: Vec<_> = (0..2)
        .map(|_| {
            let mut client = cluster.connect("prod").unwrap();
            std::thread::spawn(move || {
                let outcome = client.batch_execute("SELECT cow.clone('prod', 'staging')");
                client.batch_execute("SELECT 1").unwrap();
                outcome.map_err(|e| sqlstate(&e))
            })
        })
        .collect();
    let outcomes: Vec<_> = racers.into_iter().map(|r| r.join().unwrap()).collect();
    assert_eq!(
        outcomes.iter().filter(|o| o.is_ok()).count(),
        1,
        "{outcomes:?}"
    );
    assert!(outcomes.contains(&Err("42P04".to_string())), "{outcomes:?}");
    let after = footprint(&cluster);
    assert_eq!(after.databases.len(), before.databases.len() + 1);
    assert_eq!(after.slots.len(), 1);
    assert_eq!(
        after.database_dirs.len(),
        before.database_dirs.len() + 1,
        "the loser left no directory"
    );
    catalog_checks_pass(&cluster, "staging");
}

/// `VACUUM (VERBOSE)` of one table in the source: (removed, dead but not yet removable).
fn vacuum_counts(cluster: &Cluster, table: &str) -> (u64, u64) {
    let output = cluster
        .client_command("psql", "prod")
        .args(["-X", "-q", "-c", &format!("VACUUM (VERBOSE) {table}")])
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&output.stderr).to_string();
    let line = report
        .lines()
        .find(|l| l.contains("tuples:"))
        .unwrap_or_else(|| panic!("no tuple counts in {report}"));
    let number_before = |word: &str| -> u64 {
        let at = line
            .find(word)
            .unwrap_or_else(|| panic!("{word} in {line}"));
        line[..at]
            .split_whitespace()
            .last()
            .unwrap()
            .parse()
            .unwrap()
    };
    (
        number_before(" removed"),
        number_before(" are dead but not yet removable"),
    )
}

#[test]
fn the_pin_holds_back_vacuum_exactly_for_what_the_clone_point_sees() {
    let cluster = start_test_cluster(|_| {}).unwrap();
    cluster.psql("postgres", "CREATE DATABASE prod").unwrap();
    cluster
        .psql("prod", "CREATE EXTENSION cowclone; CREATE TABLE t (i int) WITH (autovacuum_enabled = off); INSERT INTO t SELECT generate_series(1, 1000); CREATE TABLE u (i int) WITH (autovacuum_enabled = off); INSERT INTO u SELECT generate_series(1, 1000);")
        .unwrap();
    cluster
        .psql("prod", "DELETE FROM u WHERE i <= 100")
        .unwrap(); // dead before the clone point (and never read since, so not yet pruned)
    cluster
        .psql("prod", "SELECT cow.clone('prod', 'staging')")
        .unwrap();
    cluster
        .psql("prod", "DELETE FROM t WHERE i <= 200")
        .unwrap(); // dead after it

    assert_eq!(
        vacuum_counts(&cluster, "u"),
        (100, 0),
        "rows dead before the clone point go"
    );
    assert_eq!(
        vacuum_counts(&cluster, "t"),
        (0, 200),
        "rows the clone point sees stay"
    );
    assert_eq!(rows(&cluster, "prod", "SELECT count(*) FROM t"), ["800"]);
    assert_eq!(
        rows(&cluster, "staging", "SELECT count(*) FROM t"),
        ["1000"]
    );
    assert_eq!(rows(&cluster, "staging", "SELECT count(*) FROM u"), ["900"]);

    cluster.psql("postgres", "DROP DATABASE staging").unwrap();
    // The holder lets go once the drop has committed (woken by it).
    common::wait_until(
        "the pin to be released",
        std::time::Duration::from_secs(10),
        || {
            rows(
                &cluster,
                "postgres",
                "SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'cowclone%'",
            ) == ["0"]
        },
    );
    let (removed, still_kept) = vacuum_counts(&cluster, "t");
    assert_eq!(
        (removed, still_kept),
        (200, 0),
        "dropping the clone releases its pin"
    );
}

/// Who may clone follows PostgreSQL's rule for `CREATE DATABASE ... TEMPLATE`,
/// one case each; a refusal leaves nothing behind.
#[test]
fn who_may_clone_follows_the_rule_of_create_database_template() {
    let cluster = start_test_cluster(|_| {}).unwrap();
    cluster
        .psql(
            "postgres",
            "CREATE ROLE owner_role LOGIN CREATEDB; CREATE ROLE member_role LOGIN CREATEDB; \
             CREATE ROLE stranger LOGIN CREATEDB; CREATE ROLE member_without_createdb LOGIN; \
             GRANT owner_role TO member_role; GRANT owner_role TO member_without_createdb;",
        )
        .unwrap();
    for create in [
        "CREATE DATABASE prod OWNER owner_role",
        "CREATE DATABASE tmpl OWNER owner_role IS_TEMPLATE true",
    ] {
        cluster.psql("postgres", create).unwrap();
    }
    for (db, value) in [("prod", 1), ("tmpl", 2)] {
        cluster
            .psql(
                db,
                &format!(
                    "CREATE EXTENSION cowclone; CREATE TABLE t (i int); INSERT INTO t VALUES ({value}); \
                     ALTER TABLE t OWNER TO owner_role;"
                ),
            )
            .unwrap();
    }
    let before = footprint(&cluster);

    for role in ["stranger", "member_without_createdb"] {
        let mut client = cluster.connect_as(role, "prod").unwrap();
        let error = client
            .batch_execute("SELECT cow.clone('prod', 'refused')")
            .unwrap_err();
        assert_eq!(sqlstate(&error), "42501", "{role}: {error}");
        let db_error = error.as_db_error().expect("a server error");
        assert!(
            db_error
                .detail()
                .unwrap_or_default()
                .contains("CREATE DATABASE ... TEMPLATE"),
            "{role}: the detail states the rule: {db_error:?}"
        );
        assert!(
            db_error.hint().unwrap_or_default().contains("owner_role"),
            "{role}: the hint names the owner: {db_error:?}"
        );
    }
    assert_eq!(footprint(&cluster), before, "refusals leave nothing behind");

    let allowed = [
        ("postgres", "prod", "by_superuser", "1"),
        ("owner_role", "prod", "by_owner", "1"),
        ("member_role", "prod", "by_member", "1"),
        ("stranger", "tmpl", "from_template", "2"),
    ];
    for (role, source, target, value) in allowed {
        let mut client = cluster.connect_as(role, "prod").unwrap();
        client
            .batch_execute(&format!("SELECT cow.clone('{source}', '{target}')"))
            .unwrap_or_else(|e| panic!("{role} clones {source}: {e}"));
        assert_eq!(
            rows(
                &cluster,
                "postgres",
                &format!(
                    "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = '{target}'"
                )
            ),
            [role],
            "the clone belongs to its maker"
        );
        assert_eq!(rows(&cluster, target, "SELECT i FROM t"), [value]);
        cluster
            .psql("postgres", &format!("DROP DATABASE {target}"))
            .unwrap();
    }
    assert_footprint_returns_to(&cluster, &before, "dropping the clones leaves nothing");
}
