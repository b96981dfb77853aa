//! `demo`: the main job end to end on a throwaway cluster, narrated for a
//! newcomer. It only shows what really runs; what does not exist yet is said
//! plainly.

use std::time::Instant;

use crate::cluster::{Cluster, ClusterConfig};
use crate::error::{Context, Error, Result};
use crate::extension::{build_and_install, Profile};
use crate::install::PgInstall;
use crate::process::run_captured;

pub fn run(pg: &PgInstall) -> Result<()> {
    build_and_install(pg, Profile::Debug)?;

    let mut config = ClusterConfig::for_tests()?;
    config.settings.clear(); // a demo cluster keeps fsync on
    let cluster = Cluster::temporary(pg, config)?;
    step(&format!(
        "Started a throwaway PostgreSQL {} cluster in {} with shared_preload_libraries = 'cowclone'.\n   Connect while the demo runs with: {}",
        pg.major,
        cluster.dir.display(),
        cluster.connect_hint()
    ));

    cluster.psql("postgres", "CREATE DATABASE prod")?;
    run_captured(
        cluster
            .client_command("pgbench", "prod")
            .args(["-i", "-q", "-s", "2"]),
        "pgbench -i",
    )?;
    let accounts = cluster.psql("prod", "SELECT count(*) FROM pgbench_accounts")?;
    let size = cluster.psql("prod", "SELECT pg_size_pretty(pg_database_size('prod'))")?;
    step(&format!(
        "Created source database prod with pgbench data: {} accounts, {} on disk.",
        accounts.trim(),
        size.trim()
    ));

    cluster.psql("prod", "CREATE EXTENSION cowclone")?;
    let version = cluster.psql("prod", "SELECT cow.version()")?;
    let preloaded = cluster.psql("prod", "SELECT cow.preloaded()")?;
    step(&format!(
        "CREATE EXTENSION cowclone in prod: cow.version() = {}, cow.preloaded() = {}.",
        version.trim(),
        preloaded.trim()
    ));

    // What users do today, and why it does not fit a live database.
    let mut app = cluster.connect("prod")?;
    app.simple_query("SELECT 1")
        .context(|| "application session".into())?;
    let mut admin = cluster.connect("postgres")?;
    let refusal = match admin.simple_query("CREATE DATABASE staging_copy TEMPLATE prod") {
        Ok(_) => "it unexpectedly succeeded".to_string(),
        Err(e) => Error::from(e).to_string(),
    };
    step(&format!(
        "Stock PostgreSQL: CREATE DATABASE staging_copy TEMPLATE prod while one application session is connected:\n   ERROR: {refusal}"
    ));
    drop(app);
    let started = Instant::now();
    admin.simple_query("CREATE DATABASE staging_copy TEMPLATE prod")?;
    step(&format!(
        "With the session gone, TEMPLATE copies every byte: {:.0} ms for {}.",
        started.elapsed().as_secs_f64() * 1000.0,
        size.trim()
    ));

    let has_clone = cluster.psql("prod", "SELECT to_regproc('cow.clone') IS NOT NULL")?;
    if has_clone.trim() == "t" {
        step("cow.clone exists in this build; the demo does not exercise it yet.");
    } else {
        step(
            "Not yet built: cow.clone('prod', 'staging'), the instant zero-copy clone (issue #3);\n   reading through to the source (#4) and copy-on-write (#5) follow it.",
        );
    }

    drop(admin);
    drop(cluster);
    step("Stopped the cluster and removed its directory.");
    Ok(())
}

fn step(text: &str) {
    println!("\n-> {text}");
}
