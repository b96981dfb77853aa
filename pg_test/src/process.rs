//! Running external programs, and running them as the server's user.
//!
//! PostgreSQL refuses to run as root, so when the harness runs as root every
//! server-side program (initdb, pg_ctl) runs as the unprivileged `postgres`
//! user through `runuser`; a developer running as themselves runs them directly.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::bail;
use crate::error::{Context, Result};

/// The account that owns and runs test servers when the harness runs as root.
pub const SERVER_USER: &str = "postgres";

pub fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// A command for `program` that runs as the server user.
pub fn as_server_user(program: impl AsRef<Path>) -> Command {
    if is_root() {
        let mut cmd = Command::new("runuser");
        cmd.arg("-u")
            .arg(SERVER_USER)
            .arg("--")
            .arg(program.as_ref());
        cmd
    } else {
        Command::new(program.as_ref())
    }
}

/// Runs a command with its output shown to the user; fails if it fails.
pub fn run_visible(cmd: &mut Command, what: &str) -> Result<()> {
    let status = cmd
        .stdin(Stdio::null())
        .status()
        .context(|| format!("{what}: cannot start {:?}", cmd.get_program()))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

/// Runs a command quietly and returns its stdout; on failure the error
/// carries the last line the command printed, which is usually the reason.
pub fn run_captured(cmd: &mut Command, what: &str) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .context(|| format!("{what}: cannot start {:?}", cmd.get_program()))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let reason = last_line(&stderr)
            .or_else(|| last_line(&stdout))
            .unwrap_or("no output");
        bail!("{what} failed ({}): {reason}", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn last_line(text: &str) -> Option<&str> {
    text.lines().map(str::trim).rfind(|l| !l.is_empty())
}

/// Whether `program` can be found on PATH.
pub fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
        .unwrap_or(false)
}
