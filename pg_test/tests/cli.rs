//! The developer CLI as a person uses it: real processes, real clusters.
//! Bad input gets one line on stderr and a non-zero exit, never a stack trace.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output};

use pg_test::cluster::{free_port, owner_uid};
use pg_test::extension::ensure_installed_for_tests;
use pg_test::{major_under_test, start_test_cluster, Cluster};

fn pg_test(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pg_test"))
        .args(args)
        .output()
        .expect("the CLI starts")
}

/// `cluster start DIR --port PORT --no-build` (the suite installed the build already).
fn start_without_build(dir: &str, port: &str) -> Output {
    pg_test(&["cluster", "start", dir, "--port", port, "--no-build"])
}

/// Asserts a failed run printed exactly one line to stderr and returns it.
fn single_error_line(output: &Output, expected_status: i32) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    assert_eq!(
        output.status.code(),
        Some(expected_status),
        "stderr: {stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "exactly one line: {stderr:?}");
    assert!(
        !stderr.contains("panicked") && !stderr.contains("RUST_BACKTRACE"),
        "{stderr}"
    );
    stderr
}

fn scratch_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("cowclone-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn usage_mistakes_exit_2_with_one_line() {
    let line = single_error_line(&pg_test(&["frobnicate"]), 2);
    assert!(line.contains("unknown command 'frobnicate'"), "{line}");
    single_error_line(&pg_test(&[]), 2);
    let line = single_error_line(&pg_test(&["cluster", "start"]), 2);
    assert!(line.contains("cluster start|stop DIR"), "{line}");
    let line = single_error_line(
        &pg_test(&["cluster", "start", "/tmp/x", "--port", "http"]),
        2,
    );
    assert!(line.contains("--port expects a number"), "{line}");
    let line = single_error_line(&pg_test(&["setup", "--pg", "fifteen"]), 2);
    assert!(line.contains("--pg expects a major version"), "{line}");
    let line = single_error_line(&pg_test(&["test", "--frobnicate"]), 2);
    assert!(
        line.contains("unexpected argument '--frobnicate'"),
        "{line}"
    );
}

#[test]
fn help_lists_every_command() {
    let output = pg_test(&["help"]);
    assert!(output.status.success());
    let text = String::from_utf8_lossy(&output.stdout);
    for command in [
        "setup",
        "cluster start",
        "cluster stop",
        "demo",
        "test",
        "bench",
    ] {
        assert!(text.contains(command), "help mentions {command}: {text}");
    }
}

#[test]
fn unsupported_versions_and_bad_bench_options_say_so_in_one_line() {
    let line = single_error_line(&pg_test(&["bench", "--scales", "ten"]), 2);
    assert!(line.contains("--scales expects positive numbers"), "{line}");
    let line = single_error_line(&pg_test(&["setup", "--pg", "11"]), 1);
    assert!(line.contains("not a supported major"), "{line}");
}

#[test]
fn cluster_start_refuses_a_busy_port() {
    ensure_installed_for_tests(&major_under_test().unwrap()).unwrap();
    let listener = TcpListener::bind(("127.0.0.1", 0)).unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let dir = scratch_dir("busy");
    let output = start_without_build(dir.to_str().unwrap(), &port);
    let line = single_error_line(&output, 1);
    assert!(
        line.contains(&format!("port {port} is already in use")),
        "{line}"
    );
    assert!(
        !dir.join("data/postmaster.pid").exists(),
        "no server was started"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn cluster_start_refuses_a_dir_it_cannot_use() {
    let port = free_port().unwrap().to_string();
    // /proc accepts no new directories, even from root.
    let output = start_without_build("/proc/cowclone-test", &port);
    let line = single_error_line(&output, 1);
    assert!(line.contains("cannot create /proc/cowclone-test"), "{line}");

    let file = scratch_dir("a-file");
    std::fs::write(&file, b"not a directory").unwrap();
    let output = start_without_build(file.to_str().unwrap(), &port);
    let line = single_error_line(&output, 1);
    assert!(line.contains("is not a directory"), "{line}");
    std::fs::remove_file(&file).unwrap();

    let output = pg_test(&["cluster", "stop", "/nonexistent/cowclone"]);
    let line = single_error_line(&output, 1);
    assert!(
        line.contains("no cluster in /nonexistent/cowclone"),
        "{line}"
    );
}

#[test]
fn cluster_start_and_stop_touch_only_their_own_cluster() {
    let bystander = start_test_cluster(|_| {}).unwrap();
    let dir = scratch_dir("lifecycle");
    let port = free_port().unwrap().to_string();

    let output = start_without_build(dir.to_str().unwrap(), &port);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains(&format!("psql -h {} -p {port} -U postgres", dir.display())),
        "{stdout}"
    );
    assert_eq!(
        owner_uid(&dir).unwrap(),
        server_uid(),
        "DIR belongs to the server user"
    );

    // The printed command works as printed: psql over the socket in DIR.
    let psql = Command::new(major_under_test().unwrap().tool("psql"))
        .args([
            "-h",
            dir.to_str().unwrap(),
            "-p",
            &port,
            "-U",
            "postgres",
            "-XAtq",
        ])
        .args([
            "-c",
            "CREATE EXTENSION cowclone",
            "-c",
            "SELECT cow.preloaded()",
        ])
        .output()
        .unwrap();
    assert!(
        psql.status.success(),
        "{}",
        String::from_utf8_lossy(&psql.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&psql.stdout).trim(), "t");

    // A second start on the same DIR is refused while the first runs.
    let line = single_error_line(
        &start_without_build(dir.to_str().unwrap(), &free_port().unwrap().to_string()),
        1,
    );
    assert!(line.contains("already running"), "{line}");

    let output = pg_test(&["cluster", "stop", dir.to_str().unwrap()]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stopped = Cluster::existing(&dir).unwrap();
    assert!(!stopped.is_running());
    assert!(
        dir.join("data/PG_VERSION").exists(),
        "stop keeps the cluster's files"
    );
    assert!(bystander.is_running(), "stop leaves other clusters alone");
    bystander.psql("postgres", "SELECT 1").unwrap();

    // Starting again reuses the same data directory.
    let output = start_without_build(dir.to_str().unwrap(), &port);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let restarted = Cluster::existing(&dir).unwrap();
    assert_eq!(
        restarted
            .psql(
                "postgres",
                "SELECT extname FROM pg_extension WHERE extname = 'cowclone'"
            )
            .unwrap()
            .trim(),
        "cowclone"
    );
    assert!(pg_test(&["cluster", "stop", dir.to_str().unwrap()])
        .status
        .success());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The uid the harness runs servers as: `postgres` when running as root.
fn server_uid() -> u32 {
    if pg_test::process::is_root() {
        let out = Command::new("id")
            .args(["-u", pg_test::process::SERVER_USER])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    } else {
        owner_uid(Path::new("/proc/self")).unwrap()
    }
}
