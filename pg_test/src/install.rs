//! Where each PostgreSQL major version lives on this kind of machine.

use std::path::PathBuf;

use crate::bail;
use crate::error::Result;

/// The default major: packaged by Debian 12, and the one CI runs.
pub const DEFAULT_MAJOR: u32 = 15;

/// One PostgreSQL installation the harness can build against and run.
#[derive(Clone, Debug)]
pub struct PgInstall {
    pub major: u32,
    pub bin_dir: PathBuf,
}

impl PgInstall {
    pub fn for_major(major: u32) -> Result<Self> {
        match major {
            15 => Ok(Self {
                major,
                bin_dir: PathBuf::from("/usr/lib/postgresql/15/bin"),
            }),
            14 | 16 | 17 | 18 => bail!(
                "PostgreSQL {major} is not provisioned by this harness yet; only {DEFAULT_MAJOR} is"
            ),
            _ => bail!("PostgreSQL {major} is not a supported major version (14 to 18)"),
        }
    }

    pub fn tool(&self, name: &str) -> PathBuf {
        self.bin_dir.join(name)
    }

    pub fn pg_config(&self) -> PathBuf {
        self.tool("pg_config")
    }

    /// The cargo feature that builds the extension for this major.
    pub fn feature(&self) -> String {
        format!("pg{}", self.major)
    }
}

/// Parses a `--pg N` value.
pub fn parse_major(value: &str) -> Result<u32> {
    match value.trim().parse::<u32>() {
        Ok(n) => Ok(n),
        Err(_) => bail!("--pg expects a major version number such as 15, not '{value}'"),
    }
}
