//! `bench`: cowclone side by side with what users would do instead, each
//! benchmark in one run on one throwaway cluster, reported as ratios.
//!
//! One file per benchmark, each depending only on [`common`] (statistics,
//! formatting, the benchmark clusters, docs/BENCHMARKS.md), never on another:
//!
//! - [`creation`]: making a database from a source: cow.clone vs
//!   `CREATE DATABASE ... TEMPLATE` vs `pg_dump | pg_restore`;
//! - [`reads`] (`--reads`): reading a clone vs reading its source;
//! - [`writes`] (`--writes`): writing in a clone vs in a plain copy;
//! - [`pin`] (`--pin`): what a clone's pin costs other databases and the clone;
//! - [`materialize`] (`--materialize`): materializing a clone vs `TEMPLATE` copies;
//! - [`nested`] (`--nested`): reading clones of clones at depth 1, 4 and 8 vs the source;
//! - [`history`] (`--history`): what a history window costs its source and
//!   others, and cloning as of points of it.

pub mod common;
pub mod creation;
pub mod history;
pub mod materialize;
pub mod nested;
pub mod pin;
pub mod reads;
pub mod writes;

pub use creation::BenchOptions;
pub use history::HistoryBenchOptions;
pub use materialize::MaterializeBenchOptions;
pub use nested::NestedBenchOptions;
pub use pin::PinBenchOptions;
pub use reads::ReadBenchOptions;
pub use writes::WriteBenchOptions;

use crate::error::Result;
use crate::install::PgInstall;

/// One benchmark with its options.
pub enum Benchmark {
    Creation(BenchOptions),
    Reads(ReadBenchOptions),
    Writes(WriteBenchOptions),
    Pin(PinBenchOptions),
    Materialize(MaterializeBenchOptions),
    History(HistoryBenchOptions),
    Nested(NestedBenchOptions),
}

impl Benchmark {
    /// What `bench [--reads | --writes] [--quick] [--scales ...]` selects:
    /// `--reads` before `--writes`, else the creation benchmark, which alone
    /// takes `--scales`.
    pub fn from_flags(reads: bool, writes: bool, quick: bool, scales: Option<Vec<u32>>) -> Self {
        if reads {
            return Benchmark::Reads(if quick {
                ReadBenchOptions::quick()
            } else {
                ReadBenchOptions::standard()
            });
        }
        if writes {
            return Benchmark::Writes(if quick {
                WriteBenchOptions::quick()
            } else {
                WriteBenchOptions::standard()
            });
        }
        let mut options = if quick {
            BenchOptions::quick()
        } else {
            BenchOptions::standard()
        };
        if let Some(scales) = scales {
            options.scales = scales;
        }
        Benchmark::Creation(options)
    }
}

pub fn run(pg: &PgInstall, benchmark: &Benchmark) -> Result<()> {
    match benchmark {
        Benchmark::Creation(options) => creation::run(pg, options),
        Benchmark::Reads(options) => reads::run(pg, options),
        Benchmark::Writes(options) => writes::run(pg, options),
        Benchmark::Pin(options) => pin::run(pg, options),
        Benchmark::Materialize(options) => materialize::run(pg, options),
        Benchmark::History(options) => history::run(pg, options),
        Benchmark::Nested(options) => nested::run(pg, options),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_select_one_benchmark() {
        assert!(matches!(
            Benchmark::from_flags(true, true, true, None),
            Benchmark::Reads(ReadBenchOptions { scale: 5, .. })
        ));
        assert!(matches!(
            Benchmark::from_flags(false, true, false, Some(vec![3])),
            Benchmark::Writes(WriteBenchOptions { scale: 20, .. })
        ));
        match Benchmark::from_flags(false, false, true, Some(vec![3, 7])) {
            Benchmark::Creation(options) => {
                assert_eq!(options.scales, vec![3, 7]);
                assert_eq!(options.runs, 1);
            }
            _ => panic!("the creation benchmark is the default"),
        }
    }
}
