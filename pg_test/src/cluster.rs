//! Throwaway PostgreSQL clusters whose data, socket and log all live under
//! one directory, run by the unprivileged server user.
//!
//! ```text
//! DIR/
//!   data/              PGDATA (initdb --auth=trust: local, throwaway)
//!   .s.PGSQL.<port>    the Unix socket: psql -h DIR -p <port> -U postgres
//!   postgres.log       server log
//! ```

use std::fs;
use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::bail;
use crate::error::{Context, Error, Result};
use crate::install::PgInstall;
use crate::process::{as_server_user, is_root, run_captured, SERVER_USER};

/// The superuser of every harness cluster.
pub const SUPERUSER: &str = "postgres";

/// Longest Unix socket path the kernel accepts (sun_path is 108 bytes).
const MAX_SOCKET_PATH: usize = 107;

const HARNESS_CONF: &str = "cowclone_harness.conf";

#[derive(Clone, Debug)]
pub struct ClusterConfig {
    pub port: u16,
    /// Load cowclone through shared_preload_libraries, as production must.
    pub preload: bool,
    /// Also listen on 127.0.0.1; test clusters use the socket only, so
    /// parallel tests never race for TCP ports.
    pub listen_tcp: bool,
    /// Extra postgresql.conf lines, applied last.
    pub settings: Vec<String>,
}

impl ClusterConfig {
    pub fn new(port: u16) -> Self {
        Self {
            port,
            preload: true,
            listen_tcp: true,
            settings: Vec::new(),
        }
    }

    /// A configuration for tests: socket only, no fsync (a kill -9 of the
    /// postmaster still leaves everything in the OS page cache), a free port.
    pub fn for_tests() -> Result<Self> {
        let mut config = Self::new(free_port()?);
        config.listen_tcp = false;
        config.settings.push("fsync = off".into());
        Ok(config)
    }

    fn render(&self, socket_dir: &Path) -> String {
        let mut lines = vec![
            "# Written by cowclone's pg_test harness at every start.".to_string(),
            format!("port = {}", self.port),
            format!("unix_socket_directories = '{}'", socket_dir.display()),
            format!(
                "listen_addresses = '{}'",
                if self.listen_tcp { "localhost" } else { "" }
            ),
            // Clones pin their snapshot with replication slots and use workers.
            "wal_level = replica".into(),
            "max_replication_slots = 64".into(),
            "max_wal_senders = 10".into(),
            "max_worker_processes = 32".into(),
            "max_connections = 100".into(),
            "shared_buffers = 256MB".into(),
            "logging_collector = off".into(),
            "log_line_prefix = '%m [%p] %q%u@%d '".into(),
        ];
        if self.preload {
            lines.push("shared_preload_libraries = 'cowclone'".into());
        }
        lines.extend(self.settings.iter().cloned());
        lines.join("\n") + "\n"
    }
}

/// A port no one listens on right now.
pub fn free_port() -> Result<u16> {
    let listener =
        TcpListener::bind(("127.0.0.1", 0)).context(|| "cannot find a free port".into())?;
    Ok(listener.local_addr()?.port())
}

fn port_is_busy(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_err()
}

pub struct Cluster {
    pub pg: PgInstall,
    pub dir: PathBuf,
    pub config: ClusterConfig,
    running: bool,
    /// Temporary clusters stop and delete themselves when dropped.
    temporary: bool,
}

impl Cluster {
    /// Prepares DIR (creating it, handing it to the server user) and runs
    /// initdb unless DIR already holds a cluster.
    pub fn create(dir: &Path, pg: &PgInstall, config: ClusterConfig) -> Result<Self> {
        let dir = prepare_dir(dir)?;
        let socket = dir.join(format!(".s.PGSQL.{}", config.port));
        if socket.as_os_str().len() > MAX_SOCKET_PATH {
            bail!(
                "{} is too long a path for a Unix socket: choose a shorter DIR",
                socket.display()
            );
        }
        let cluster = Self {
            pg: pg.clone(),
            dir,
            config,
            running: false,
            temporary: false,
        };
        if !cluster.data_dir().join("PG_VERSION").exists() {
            cluster.initdb()?;
        }
        Ok(cluster)
    }

    /// A cluster in a fresh directory under the system temp dir, started,
    /// stopped and deleted when dropped.
    pub fn temporary(pg: &PgInstall, config: ClusterConfig) -> Result<Self> {
        let dir = temporary_dir()?;
        let mut cluster = Self::create(&dir, pg, config)?;
        cluster.temporary = true;
        cluster.start()?;
        Ok(cluster)
    }

    /// A temporary cluster, initialised but not started (a target for
    /// pg_upgrade, say); deleted when dropped.
    pub fn temporary_stopped(pg: &PgInstall, config: ClusterConfig) -> Result<Self> {
        let mut cluster = Self::create(&temporary_dir()?, pg, config)?;
        cluster.temporary = true;
        Ok(cluster)
    }

    /// A new temporary cluster made from a base backup of this running one
    /// (`pg_basebackup -X stream -c fast`), not started yet; deleted when
    /// dropped. As a `standby` (`-R`) it follows this cluster by streaming
    /// replication once started; otherwise it recovers to the end of the
    /// backup and becomes a primary of its own, unless `settings` in its
    /// configuration and a `recovery.signal` (see `add_data_file`) say more.
    pub fn base_backup(&self, config: ClusterConfig, standby: bool) -> Result<Cluster> {
        let dir = prepare_dir(&temporary_dir()?)?;
        let mut cmd = as_server_user(self.pg.tool("pg_basebackup"));
        cmd.arg("-h")
            .arg(&self.dir)
            .arg("-p")
            .arg(self.config.port.to_string())
            .args(["-U", SUPERUSER, "-X", "stream", "-c", "fast", "--no-sync"])
            .arg("-D")
            .arg(dir.join("data"));
        if standby {
            cmd.arg("-R");
        }
        run_captured(&mut cmd, "pg_basebackup")?;
        Ok(Cluster {
            pg: self.pg.clone(),
            dir,
            config,
            running: false,
            temporary: true,
        })
    }

    /// Promotes this standby (`pg_ctl promote -w`): it returns once the
    /// server accepts writes.
    pub fn promote(&self) -> Result<()> {
        run_captured(
            as_server_user(self.pg.tool("pg_ctl"))
                .arg("-D")
                .arg(self.data_dir())
                .args(["-w", "-t", "120", "-s", "promote"]),
            "pg_ctl promote",
        )
        .map(|_| ())
    }

    /// Waits until `standby` has replayed everything this primary wrote so far.
    pub fn wait_for_replay(&self, standby: &Cluster) -> Result<()> {
        let lsn = self.psql("postgres", "SELECT pg_current_wal_lsn()")?;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        loop {
            let replayed = standby.psql(
                "postgres",
                &format!(
                    "SELECT pg_last_wal_replay_lsn() >= '{}'::pg_lsn",
                    lsn.trim()
                ),
            );
            if replayed.is_ok_and(|r| r.trim() == "t") {
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                bail!("the standby did not replay up to {} in 120 s", lsn.trim());
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// A directory under DIR owned by the server user (a WAL archive, say).
    pub fn server_dir(&self, name: &str) -> Result<PathBuf> {
        let path = self.dir.join(name);
        fs::create_dir_all(&path)?;
        give_to_server_user(&path)?;
        Ok(path)
    }

    /// Writes a file in the data directory as the server user would
    /// (`recovery.signal`, say).
    pub fn add_data_file(&self, name: &str, contents: &str) -> Result<()> {
        let path = self.data_dir().join(name);
        fs::write(&path, contents)?;
        give_to_server_user(&path)
    }

    /// The cluster already initialised in DIR, for commands such as `stop`.
    pub fn existing(dir: &Path) -> Result<Self> {
        let data = dir.join("data");
        let version = fs::read_to_string(data.join("PG_VERSION")).map_err(|_| {
            Error(format!(
                "no cluster in {} (no data/PG_VERSION)",
                dir.display()
            ))
        })?;
        let pg = PgInstall::for_major(crate::install::parse_major(&version)?)?;
        let conf = fs::read_to_string(data.join(HARNESS_CONF)).unwrap_or_default();
        let port = conf
            .lines()
            .find_map(|l| l.strip_prefix("port = ")?.trim().parse::<u16>().ok())
            .unwrap_or(5432);
        let running = data.join("postmaster.pid").exists();
        Ok(Self {
            pg,
            dir: dir.to_path_buf(),
            config: ClusterConfig::new(port),
            running,
            temporary: false,
        })
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    pub fn log_file(&self) -> PathBuf {
        self.dir.join("postgres.log")
    }

    pub fn port(&self) -> u16 {
        self.config.port
    }

    fn initdb(&self) -> Result<()> {
        run_captured(
            as_server_user(self.pg.tool("initdb"))
                .arg("-D")
                .arg(self.data_dir())
                .args([
                    "--auth=trust",
                    "--no-sync",
                    "--encoding=UTF8",
                    "--locale=C.UTF-8",
                ])
                .arg(format!("--username={SUPERUSER}")),
            "initdb",
        )?;
        let conf = self.data_dir().join("postgresql.conf");
        let mut text = fs::read_to_string(&conf)?;
        text.push_str(&format!("\ninclude_if_exists = '{HARNESS_CONF}'\n"));
        fs::write(&conf, text)?;
        Ok(())
    }

    pub fn start(&mut self) -> Result<()> {
        if self.is_running() {
            bail!("a cluster is already running in {}", self.dir.display());
        }
        if self.config.listen_tcp && port_is_busy(self.config.port) {
            bail!(
                "port {} is already in use: choose another with --port",
                self.config.port
            );
        }
        let conf_path = self.data_dir().join(HARNESS_CONF);
        fs::write(&conf_path, self.config.render(&self.dir))?;
        give_to_server_user(&conf_path)?;
        let started = run_captured(
            as_server_user(self.pg.tool("pg_ctl"))
                // Servers see what production servers see: no Rust backtraces
                // in error details, whatever the developer's shell sets.
                .env("RUST_BACKTRACE", "0")
                .env("RUST_LIB_BACKTRACE", "0")
                .arg("-D")
                .arg(self.data_dir())
                .arg("-l")
                .arg(self.log_file())
                .args(["-w", "-t", "120", "-s", "start"]),
            "pg_ctl start",
        );
        if let Err(e) = started {
            bail!("{e}; server log says: {}", self.last_log_line());
        }
        self.running = true;
        Ok(())
    }

    /// A fast shutdown: sessions are disconnected, nothing is lost.
    pub fn stop(&mut self) -> Result<()> {
        self.pg_ctl_stop("fast")?;
        self.running = false;
        Ok(())
    }

    fn pg_ctl_stop(&self, mode: &str) -> Result<()> {
        run_captured(
            as_server_user(self.pg.tool("pg_ctl"))
                .arg("-D")
                .arg(self.data_dir())
                .args(["-w", "-t", "120", "-s", "-m", mode, "stop"]),
            "pg_ctl stop",
        )
        .map(|_| ())
    }

    /// Simulates a machine crash: SIGKILL to the postmaster and every
    /// process it started, then waits until they are all gone.
    pub fn crash(&mut self) -> Result<()> {
        let pid_file = fs::read_to_string(self.data_dir().join("postmaster.pid"))?;
        let postmaster: u32 = pid_file
            .lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
            .ok_or_else(|| Error("postmaster.pid has no pid".into()))?;
        let mut victims = children_of(postmaster);
        victims.push(postmaster);
        let mut kill = Command::new("kill");
        kill.arg("-9").args(victims.iter().map(|p| p.to_string()));
        let _ = kill.output();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while victims
            .iter()
            .any(|p| Path::new(&format!("/proc/{p}")).exists())
        {
            if std::time::Instant::now() > deadline {
                bail!("processes of the crashed cluster did not exit");
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        self.running = false;
        Ok(())
    }

    pub fn is_running(&self) -> bool {
        as_server_user(self.pg.tool("pg_ctl"))
            .arg("-D")
            .arg(self.data_dir())
            .arg("status")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    }

    fn last_log_line(&self) -> String {
        fs::read_to_string(self.log_file())
            .ok()
            .and_then(|log| {
                log.lines()
                    .rfind(|l| !l.trim().is_empty())
                    .map(str::to_string)
            })
            .unwrap_or_else(|| "(empty)".into())
    }

    /// The text of the server log, for tests that look for a message.
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_file()).unwrap_or_default()
    }

    /// A real client connection over the cluster's Unix socket, as the superuser.
    pub fn connect(&self, dbname: &str) -> Result<postgres::Client> {
        self.connect_as(SUPERUSER, dbname)
    }

    /// How to connect as the superuser, for a thread that outlives one
    /// connection (it reconnects across restarts).
    pub fn client_config(&self, dbname: &str) -> postgres::Config {
        let mut config = postgres::Config::new();
        config
            .host_path(&self.dir)
            .port(self.config.port)
            .user(SUPERUSER)
            .dbname(dbname)
            .application_name("cowclone-pg_test");
        config
    }

    /// A real client connection as `role` (trust authentication).
    pub fn connect_as(&self, role: &str, dbname: &str) -> Result<postgres::Client> {
        postgres::Config::new()
            .host_path(&self.dir)
            .port(self.config.port)
            .user(role)
            .dbname(dbname)
            .application_name("cowclone-pg_test")
            .connect(postgres::NoTls)
            .map_err(|e| {
                Error(format!(
                    "cannot connect to database {dbname} as {role}: {e}"
                ))
            })
    }

    /// `psql` arguments that reach this cluster as its superuser.
    pub fn client_command(&self, program: &str, dbname: &str) -> Command {
        let mut cmd = Command::new(self.pg.tool(program));
        cmd.arg("-h")
            .arg(&self.dir)
            .arg("-p")
            .arg(self.config.port.to_string());
        cmd.arg("-U").arg(SUPERUSER).arg("-d").arg(dbname);
        cmd
    }

    /// Runs SQL through psql (unaligned, tuples only) and returns its output.
    pub fn psql(&self, dbname: &str, sql: &str) -> Result<String> {
        let mut cmd = self.client_command("psql", dbname);
        cmd.args(["-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-c", sql]);
        run_captured(&mut cmd, "psql")
    }

    /// Runs a SQL file through psql, stopping at the first error.
    pub fn psql_file(&self, dbname: &str, path: &Path) -> Result<String> {
        let mut cmd = self.client_command("psql", dbname);
        cmd.args(["-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-f"])
            .arg(path);
        run_captured(&mut cmd, "psql -f")
    }

    /// VACUUM (VERBOSE) of `tables` in `db`: for each table vacuumed, the
    /// row versions removed and those dead but not yet removable, as its
    /// "tuples: R removed, N remain, D are dead but not yet removable" line says.
    pub fn vacuum_verbose(&self, db: &str, tables: &str) -> Result<Vec<(u64, u64)>> {
        let out = self
            .client_command("psql", db)
            .args([
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                &format!("VACUUM (VERBOSE) {tables}"),
            ])
            .output()?;
        let log = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            bail!("VACUUM (VERBOSE) {tables} failed: {log}");
        }
        Ok(log
            .lines()
            .filter(|l| l.contains("tuples: ") && l.contains("are dead but not yet removable"))
            .map(|line| {
                let numbers: Vec<u64> = line
                    .split(|c: char| !c.is_ascii_digit())
                    .filter(|s| !s.is_empty())
                    .filter_map(|s| s.parse().ok())
                    .collect();
                let n = numbers.len();
                (numbers[n - 3], numbers[n - 1])
            })
            .collect())
    }

    /// `pg_dump --schema-only` of a database.
    pub fn schema_dump(&self, dbname: &str) -> Result<String> {
        run_captured(
            self.client_command("pg_dump", dbname).arg("--schema-only"),
            "pg_dump",
        )
    }

    /// How a person connects, for the CLI to print.
    pub fn connect_hint(&self) -> String {
        format!(
            "psql -h {} -p {} -U {SUPERUSER}",
            self.dir.display(),
            self.config.port
        )
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if !self.temporary {
            return;
        }
        // A failing test loses its cluster with it: keep what the server said.
        if std::thread::panicking() {
            let log = fs::read_to_string(self.log_file()).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(80)..];
            eprintln!(
                "--- last lines of the server log ({}):\n{}",
                self.log_file().display(),
                tail.join("\n")
            );
        }
        if self.running {
            // Immediate: the directory goes away next, there is nothing to keep.
            let _ = self.pg_ctl_stop("immediate");
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A fresh directory name under the system temp dir, unique in this run.
fn temporary_dir() -> Result<PathBuf> {
    static SEQUENCE: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "cowclone-{}-{}",
        std::process::id(),
        SEQUENCE.fetch_add(1, Ordering::Relaxed)
    ));
    if dir.exists() {
        fs::remove_dir_all(&dir)?;
    }
    Ok(dir)
}

/// Direct children of a process, from /proc.
fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    stat.rsplit_once(')')
                        .map(|(_, rest)| rest.split_whitespace().nth(1).map(str::to_string))
                })
                .flatten()
                .and_then(|ppid| ppid.parse::<u32>().ok())
                == Some(parent)
        })
        .collect()
}

/// Creates DIR if needed and makes sure the server user can write it.
fn prepare_dir(dir: &Path) -> Result<PathBuf> {
    if dir.exists() && !dir.is_dir() {
        bail!("{} exists and is not a directory", dir.display());
    }
    fs::create_dir_all(dir).context(|| format!("cannot create {}", dir.display()))?;
    let dir = dir.canonicalize()?;
    if is_root() {
        give_to_server_user(&dir).context(|| format!("{} is not writable", dir.display()))?;
        let writable = as_server_user("test")
            .arg("-w")
            .arg(&dir)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !writable {
            bail!(
                "{} is not writable by the {SERVER_USER} user (every parent directory must be searchable by it)",
                dir.display()
            );
        }
    } else {
        let probe = dir.join(".cowclone-write-probe");
        fs::write(&probe, b"").context(|| format!("{} is not writable", dir.display()))?;
        let _ = fs::remove_file(probe);
    }
    Ok(dir)
}

/// Hands a path to the server user (a no-op unless running as root).
fn give_to_server_user(path: &Path) -> Result<()> {
    if !is_root() {
        return Ok(());
    }
    let (uid, gid) = server_user_ids()?;
    std::os::unix::fs::chown(path, Some(uid), Some(gid))?;
    Ok(())
}

fn server_user_ids() -> Result<(u32, u32)> {
    let id = |flag: &str| -> Result<u32> {
        let out = run_captured(Command::new("id").arg(flag).arg(SERVER_USER), "id")?;
        out.trim()
            .parse::<u32>()
            .map_err(|_| Error(format!("unexpected output of id {flag}: {out}")))
    };
    Ok((id("-u")?, id("-g")?))
}

/// The owner uid of a path, for tests that check what the harness created.
pub fn owner_uid(path: &Path) -> Result<u32> {
    Ok(fs::metadata(path)?.uid())
}
