//! `cargo run -p pg_test -- <command>`: see `usage()`.

use std::path::PathBuf;
use std::process::ExitCode;

use pg_test::bench::{
    Benchmark, HistoryBenchOptions, MaterializeBenchOptions, NestedBenchOptions, PinBenchOptions,
};
use pg_test::cluster::{Cluster, ClusterConfig};
use pg_test::extension::{build_and_install, Profile};
use pg_test::install::{parse_major_choice, MajorChoice, PgInstall, DEFAULT_MAJOR};
use pg_test::suite::SuiteOptions;
use pg_test::{bench, demo, setup, suite, Error};

fn usage() -> &'static str {
    "usage: pg_test <command>
  setup [--pg N|all]                      install what is missing (idempotent)
  cluster start DIR [--port N] [--pg N] [--no-build]
                                          build, install, start a throwaway cluster in DIR
  cluster stop DIR                        stop the cluster in DIR (and nothing else)
  demo [--pg N]                           the main job end to end on a throwaway cluster
  test [--pg N|all] [--no-lint]           the whole suite (all: every major, one after another)
  bench [--scales 10,60,100] [--quick] [--pg N]
  bench --reads [--quick] [--pg N]
  bench --writes [--quick] [--pg N]
  bench --pin [--quick] [--pg N]
  bench --materialize [--quick] [--pg N]
  bench --history [--quick] [--pg N]
  bench --nested [--quick] [--pg N]
                                          cowclone vs TEMPLATE vs pg_dump|pg_restore, as ratios"
}

/// A usage mistake: exit status 2, like most Unix tools.
struct UsageError(String);

enum Failure {
    Usage(UsageError),
    Run(Error),
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure::Run(e)
    }
}

impl From<UsageError> for Failure {
    fn from(e: UsageError) -> Self {
        Failure::Usage(e)
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match dispatch(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(UsageError(message))) => {
            eprintln!("pg_test: {message} (run `pg_test help` for usage)");
            ExitCode::from(2)
        }
        Err(Failure::Run(error)) => {
            eprintln!("pg_test: error: {}", one_line(&error.to_string()));
            ExitCode::from(1)
        }
    }
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The flags a command accepts, parsed from what follows its positional arguments.
#[derive(Default)]
struct Flags {
    pg: Option<MajorChoice>,
    port: Option<u16>,
    no_build: bool,
    no_lint: bool,
    quick: bool,
    reads: bool,
    writes: bool,
    pin: bool,
    materialize: bool,
    history: bool,
    nested: bool,
    scales: Option<Vec<u32>>,
}

fn parse_flags(args: &[String], allowed: &[&str]) -> std::result::Result<Flags, Failure> {
    let mut flags = Flags::default();
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        let (name, inline_value) = match arg.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (arg.as_str(), None),
        };
        if !allowed.contains(&name) {
            return Err(UsageError(format!("unexpected argument '{arg}'")).into());
        }
        let mut value = || -> std::result::Result<String, Failure> {
            inline_value
                .clone()
                .or_else(|| iter.next().cloned())
                .ok_or_else(|| UsageError(format!("{name} needs a value")).into())
        };
        match name {
            "--pg" => flags.pg = Some(parse_major_choice(&value()?).map_err(|e| UsageError(e.0))?),
            "--port" => {
                let v = value()?;
                let port = v.parse::<u16>().ok().filter(|p| *p >= 1024);
                flags.port = Some(port.ok_or_else(|| {
                    UsageError(format!(
                        "--port expects a number from 1024 to 65535, not '{v}'"
                    ))
                })?);
            }
            "--no-build" => flags.no_build = true,
            "--quick" => flags.quick = true,
            "--reads" => flags.reads = true,
            "--writes" => flags.writes = true,
            "--pin" => flags.pin = true,
            "--materialize" => flags.materialize = true,
            "--history" => flags.history = true,
            "--nested" => flags.nested = true,
            "--scales" => {
                let v = value()?;
                let scales: Option<Vec<u32>> = v
                    .split(',')
                    .map(|s| s.trim().parse::<u32>().ok().filter(|n| *n > 0))
                    .collect();
                flags.scales = Some(scales.filter(|s| !s.is_empty()).ok_or_else(|| {
                    UsageError(format!(
                        "--scales expects positive numbers separated by commas, not '{v}'"
                    ))
                })?);
            }
            "--no-lint" => flags.no_lint = true,
            _ => unreachable!("every allowed flag is handled"),
        }
    }
    Ok(flags)
}

/// The one major a command runs against (`--pg all` only where allowed).
fn pg_of(flags: &Flags) -> std::result::Result<PgInstall, Failure> {
    match flags.pg {
        None => Ok(PgInstall::for_major(DEFAULT_MAJOR)?),
        Some(MajorChoice::One(major)) => Ok(PgInstall::for_major(major)?),
        Some(MajorChoice::All) => {
            Err(UsageError("--pg all is accepted by setup and test only".into()).into())
        }
    }
}

/// The majors `--pg` names (default: the default major).
fn majors_of(flags: &Flags) -> Vec<u32> {
    flags
        .pg
        .clone()
        .unwrap_or(MajorChoice::One(DEFAULT_MAJOR))
        .majors()
}

fn dispatch(args: &[String]) -> std::result::Result<(), Failure> {
    let Some(command) = args.first() else {
        return Err(UsageError("no command given".into()).into());
    };
    let rest = &args[1..];
    match command.as_str() {
        "help" | "--help" | "-h" => {
            println!("{}", usage());
            Ok(())
        }
        "setup" => {
            let flags = parse_flags(rest, &["--pg"])?;
            Ok(suite::for_each_major(&majors_of(&flags), "setup", |pg| {
                setup::setup(pg)
            })?)
        }
        "cluster" => cluster_command(rest),
        "demo" => {
            let flags = parse_flags(rest, &["--pg"])?;
            let pg = pg_of(&flags)?;
            setup::setup(&pg)?;
            Ok(demo::run(&pg)?)
        }
        "test" => {
            let flags = parse_flags(rest, &["--pg", "--no-lint"])?;
            let options = SuiteOptions {
                lint: !flags.no_lint,
            };
            Ok(suite::for_each_major(
                &majors_of(&flags),
                "the suite",
                |pg| {
                    setup::setup(pg)?;
                    suite::run(pg, &options)
                },
            )?)
        }
        "bench" => {
            let flags = parse_flags(
                rest,
                &[
                    "--pg",
                    "--quick",
                    "--scales",
                    "--reads",
                    "--writes",
                    "--pin",
                    "--materialize",
                    "--history",
                    "--nested",
                ],
            )?;
            let pg = pg_of(&flags)?;
            setup::setup(&pg)?;
            let benchmark = if flags.nested {
                Benchmark::Nested(if flags.quick {
                    NestedBenchOptions::quick()
                } else {
                    NestedBenchOptions::standard()
                })
            } else if flags.history {
                Benchmark::History(if flags.quick {
                    HistoryBenchOptions::quick()
                } else {
                    HistoryBenchOptions::standard()
                })
            } else if flags.materialize {
                Benchmark::Materialize(if flags.quick {
                    MaterializeBenchOptions::quick()
                } else {
                    MaterializeBenchOptions::standard()
                })
            } else if flags.pin {
                Benchmark::Pin(if flags.quick {
                    PinBenchOptions::quick()
                } else {
                    PinBenchOptions::standard()
                })
            } else {
                Benchmark::from_flags(flags.reads, flags.writes, flags.quick, flags.scales)
            };
            Ok(bench::run(&pg, &benchmark)?)
        }
        other => Err(UsageError(format!("unknown command '{other}'")).into()),
    }
}

fn cluster_command(args: &[String]) -> std::result::Result<(), Failure> {
    let (Some(action), Some(dir)) = (args.first(), args.get(1)) else {
        return Err(UsageError(
            "cluster needs an action and a directory: cluster start|stop DIR".into(),
        )
        .into());
    };
    let dir = PathBuf::from(dir);
    match action.as_str() {
        "start" => {
            let flags = parse_flags(&args[2..], &["--port", "--pg", "--no-build"])?;
            let pg = pg_of(&flags)?;
            if !flags.no_build {
                build_and_install(&pg, Profile::Debug)?;
            }
            let mut cluster =
                Cluster::create(&dir, &pg, ClusterConfig::new(flags.port.unwrap_or(5499)))?;
            cluster.start()?;
            println!(
                "PostgreSQL {} is running in {} (log: {})",
                pg.major,
                cluster.dir.display(),
                cluster.log_file().display()
            );
            println!("connect with: {}", cluster.connect_hint());
            println!(
                "stop with:    cargo run -p pg_test -- cluster stop {}",
                cluster.dir.display()
            );
            Ok(())
        }
        "stop" => {
            parse_flags(&args[2..], &[])?;
            let mut cluster = Cluster::existing(&dir)?;
            if !cluster.is_running() {
                println!("no server is running in {}", dir.display());
                return Ok(());
            }
            cluster.stop()?;
            println!("stopped the cluster in {}", dir.display());
            Ok(())
        }
        other => {
            Err(UsageError(format!("unknown cluster action '{other}' (start or stop)")).into())
        }
    }
}
