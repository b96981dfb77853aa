//! Debian's package manager, for `setup` and `provision`: installing the
//! packages that are missing, and fetching a source package's files from
//! the Debian mirror this machine's apt already uses. Everything goes
//! through apt itself, so the proxies, credentials and trusted keys apt is
//! configured with apply, and no host name lives in this code.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::bail;
use crate::error::{Context, Result};
use crate::process::{is_root, run_visible};

fn is_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

/// Installs whichever of `packages` are not installed yet (as root; as
/// anyone else, says which are missing). Nothing to do costs one
/// `dpkg-query` per package.
pub fn ensure_debian_packages(packages: &[String]) -> Result<()> {
    let missing: Vec<&String> = packages.iter().filter(|p| !is_installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let list = missing
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(" ");
    if !is_root() {
        bail!("missing Debian packages: {list} (run setup as root, or install them)");
    }
    println!("setup: installing Debian packages: {list}");
    run_visible(
        Command::new("apt-get").args(["update", "-qq"]),
        "apt-get update",
    )?;
    run_visible(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(missing.iter().map(|s| s.as_str())),
        "apt-get install",
    )
}

/// Where apt reads its sources: this file (one-line style), then this
/// directory's `*.list` (one-line) and `*.sources` (deb822) files in name
/// order.
const SOURCES_LIST: &str = "/etc/apt/sources.list";
const SOURCES_PARTS: &str = "/etc/apt/sources.list.d";

/// The suites of Debian's own archive: its releases' code names and their
/// aliases.
const DEBIAN_SUITES: &[&str] = &[
    "buster",
    "bullseye",
    "bookworm",
    "trixie",
    "forky",
    "duke",
    "sid",
    "oldoldstable",
    "oldstable",
    "stable",
    "testing",
    "unstable",
];

/// One entry of apt's sources, from either format.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceEntry {
    /// `deb` and/or `deb-src`.
    pub types: Vec<String>,
    pub uri: String,
    pub suites: Vec<String>,
    pub components: Vec<String>,
    /// The keyring files the entry restricts itself to (comma-separated),
    /// if it names any.
    pub signed_by: Option<String>,
}

/// The entries of a one-line-style file (`sources.list`, `*.list`).
pub fn parse_one_line_sources(text: &str) -> Vec<SourceEntry> {
    text.lines().filter_map(parse_one_line).collect()
}

fn parse_one_line(line: &str) -> Option<SourceEntry> {
    let line = line.split('#').next()?.trim();
    let (kind, rest) = line.split_once(char::is_whitespace)?;
    if kind != "deb" && kind != "deb-src" {
        return None;
    }
    let rest = rest.trim_start();
    let (options, rest) = match rest.strip_prefix('[') {
        Some(inner) => inner.split_once(']')?,
        None => ("", rest),
    };
    let mut words = rest.split_whitespace();
    let uri = words.next()?.to_string();
    let suite = words.next()?.to_string();
    let signed_by = options.split_whitespace().find_map(|option| {
        let (name, value) = option.split_once('=')?;
        name.eq_ignore_ascii_case("signed-by")
            .then(|| keyring_list(value))
            .flatten()
    });
    Some(SourceEntry {
        types: vec![kind.to_string()],
        uri,
        suites: vec![suite],
        components: words.map(String::from).collect(),
        signed_by,
    })
}

/// The enabled entries of a deb822-style file (`*.sources`).
pub fn parse_deb822_sources(text: &str) -> Vec<SourceEntry> {
    deb822_stanzas(text)
        .iter()
        .filter(|stanza| !field(stanza, "enabled").is_some_and(|v| v.eq_ignore_ascii_case("no")))
        .filter_map(|stanza| {
            let words = |name: &str| -> Vec<String> {
                field(stanza, name)
                    .unwrap_or_default()
                    .split_whitespace()
                    .map(String::from)
                    .collect()
            };
            Some(SourceEntry {
                types: words("types"),
                uri: words("uris").into_iter().next()?,
                suites: words("suites"),
                components: words("components"),
                signed_by: field(stanza, "signed-by").and_then(keyring_list),
            })
        })
        .collect()
}

/// A Signed-By value as a one-line-style list of keyring files; `None` for
/// a key embedded in the sources file (apt's other trusted keys then apply).
fn keyring_list(value: &str) -> Option<String> {
    if value.contains("BEGIN PGP") {
        return None;
    }
    let files: Vec<&str> = value
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|f| !f.is_empty())
        .collect();
    (!files.is_empty()).then(|| files.join(","))
}

/// The stanzas of a deb822 text (`*.sources`, `apt-cache showsrc`), each a
/// list of (lower-cased field name, value); continuation lines are joined
/// to their field's value with newlines; comment lines are dropped.
fn deb822_stanzas(text: &str) -> Vec<Vec<(String, String)>> {
    let mut stanzas = Vec::new();
    let mut current: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        if line.trim().is_empty() {
            if !current.is_empty() {
                stanzas.push(std::mem::take(&mut current));
            }
        } else if line.starts_with([' ', '\t']) {
            if let Some((_, value)) = current.last_mut() {
                value.push('\n');
                value.push_str(line.trim());
            }
        } else if let Some((name, value)) = line.split_once(':') {
            current.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
    }
    if !current.is_empty() {
        stanzas.push(current);
    }
    stanzas
}

fn field<'a>(stanza: &'a [(String, String)], name: &str) -> Option<&'a str> {
    stanza
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// The first entry that is Debian's own archive: a suite named after a
/// Debian release (not its -security or -updates suites), component main.
pub fn debian_mirror(entries: &[SourceEntry]) -> Option<&SourceEntry> {
    entries.iter().find(|entry| {
        entry.types.iter().any(|t| t == "deb" || t == "deb-src")
            && entry
                .suites
                .iter()
                .any(|s| DEBIAN_SUITES.contains(&s.as_str()))
            && entry.components.iter().any(|c| c == "main")
            && !entry.uri.starts_with("cdrom:")
    })
}

/// Every entry of the machine's apt sources, in the order apt reads them.
pub fn configured_sources() -> Result<Vec<SourceEntry>> {
    let mut entries = match fs::read_to_string(SOURCES_LIST) {
        Ok(text) => parse_one_line_sources(&text),
        Err(_) => Vec::new(),
    };
    let mut parts: Vec<PathBuf> = match fs::read_dir(SOURCES_PARTS) {
        Ok(dir) => dir.filter_map(|entry| Some(entry.ok()?.path())).collect(),
        Err(_) => Vec::new(),
    };
    parts.sort();
    for part in parts {
        let parse = match part.extension().and_then(|e| e.to_str()) {
            Some("list") => parse_one_line_sources,
            Some("sources") => parse_deb822_sources,
            _ => continue,
        };
        let text = fs::read_to_string(&part).context(|| format!("reading {}", part.display()))?;
        entries.extend(parse(&text));
    }
    Ok(entries)
}

/// The Debian mirror the machine's apt is configured with.
pub fn configured_debian_mirror() -> Result<SourceEntry> {
    match debian_mirror(&configured_sources()?) {
        Some(entry) => Ok(entry.clone()),
        None => bail!(
            "apt has no Debian mirror configured: no entry in {SOURCES_LIST} or \
             {SOURCES_PARTS}/ names a Debian release's suite with component main"
        ),
    }
}

/// One version of a source package, as a source index lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceVersion {
    /// The Debian version, e.g. `17.12-0+deb13u1`.
    pub version: String,
    /// Where the package's files lie on the mirror, e.g.
    /// `pool/main/p/postgresql-17` (the same for all its versions).
    pub directory: String,
    /// (file name, SHA-256) of each of its files.
    pub files: Vec<(String, String)>,
}

impl SourceVersion {
    /// The upstream version: the Debian version without epoch or revision.
    pub fn upstream(&self) -> &str {
        upstream_version(&self.version)
    }

    pub fn sha256_of(&self, file: &str) -> Option<&str> {
        self.files
            .iter()
            .find(|(name, _)| name == file)
            .map(|(_, sha)| sha.as_str())
    }
}

pub fn upstream_version(debian_version: &str) -> &str {
    let without_epoch = debian_version
        .split_once(':')
        .map_or(debian_version, |(_, rest)| rest);
    without_epoch
        .rsplit_once('-')
        .map_or(without_epoch, |(upstream, _)| upstream)
}

/// The versions of source package `package` in `apt-cache showsrc` output.
fn parse_showsrc(text: &str, package: &str) -> Vec<SourceVersion> {
    deb822_stanzas(text)
        .iter()
        .filter(|stanza| field(stanza, "package") == Some(package))
        .filter_map(|stanza| {
            let files = field(stanza, "checksums-sha256")
                .unwrap_or_default()
                .lines()
                .filter_map(|line| {
                    let mut words = line.split_whitespace();
                    let sha = words.next()?;
                    let name = words.nth(1)?;
                    Some((name.to_string(), sha.to_string()))
                })
                .collect();
            Some(SourceVersion {
                version: field(stanza, "version")?.to_string(),
                directory: field(stanza, "directory")?.to_string(),
                files,
            })
        })
        .collect()
}

/// The index of one suite's source packages on one mirror, in a private
/// apt state under `dir` (its own sources list, lists and cache): the
/// machine's apt sources, lists and cache are neither read nor changed,
/// while the rest of its configuration (proxies, credentials, trusted keys)
/// applies.
pub struct SourceIndex {
    dir: PathBuf,
    mirror: String,
}

impl SourceIndex {
    /// Writes the private sources list (one `deb-src` line for `suite` and
    /// `component` on `mirror`'s URI, trusting the keyrings `mirror` trusts)
    /// and downloads its index.
    pub fn fetch(dir: &Path, mirror: &SourceEntry, suite: &str, component: &str) -> Result<Self> {
        fs::create_dir_all(dir.join("lists/partial"))?;
        fs::create_dir_all(dir.join("cache/archives/partial"))?;
        let options = mirror
            .signed_by
            .as_ref()
            .map(|keyrings| format!("[signed-by={keyrings}] "))
            .unwrap_or_default();
        fs::write(
            dir.join("sources.list"),
            source_line(&options, &mirror.uri, suite, component),
        )?;
        let index = Self {
            dir: dir.to_path_buf(),
            mirror: mirror.uri.clone(),
        };
        run_apt(
            index
                .apt("apt-get")
                .args(["update", "-qq", "--error-on=any"]),
            "apt-get update (source index)",
        )
        .context(|| {
            format!(
                "indexing {suite}/{component} source packages on {}",
                mirror.uri
            )
        })?;
        Ok(index)
    }

    /// `program` (apt-get, apt-cache, apt-helper) on the private state.
    fn apt(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        for option in apt_options(&self.dir) {
            cmd.arg("-o").arg(option);
        }
        cmd
    }

    /// Every version of source package `package` the index lists (none if
    /// it lists no such package).
    pub fn versions(&self, package: &str) -> Result<Vec<SourceVersion>> {
        let out = run_apt(
            self.apt("apt-cache")
                .args(["showsrc", "--only-source"])
                .arg(package),
            "apt-cache showsrc",
        )?;
        Ok(parse_showsrc(&out, package))
    }

    /// `apt-get source --download-only` of `package` at Debian version
    /// `version` into `dest` (apt checks every file against the signed
    /// index; `dpkg-dev` is installed first if missing).
    pub fn download_source(&self, package: &str, version: &str, dest: &Path) -> Result<()> {
        ensure_debian_packages(&["dpkg-dev".to_string()])?;
        fs::create_dir_all(dest)?;
        run_apt(
            self.apt("apt-get")
                .current_dir(dest)
                .args(["source", "--download-only", "--only-source", "-qq"])
                .arg(format!("{package}={version}")),
            "apt-get source",
        )
        .map(|_| ())
    }

    /// Downloads `path` (relative to the mirror's root, e.g. a pool file
    /// the index no longer lists) to `target` through apt's own
    /// downloader. Unchecked: the caller checks it against its pin.
    pub fn download_from_mirror(&self, path: &str, target: &Path) -> Result<()> {
        let uri = format!("{}/{path}", self.mirror.trim_end_matches('/'));
        run_apt(
            self.apt("/usr/lib/apt/apt-helper")
                .arg("download-file")
                .arg(&uri)
                .arg(target),
            "apt-helper download-file",
        )
        .context(|| format!("downloading {uri}"))
        .map(|_| ())
    }
}

/// Runs an apt program quietly and returns its stdout; on failure the error
/// carries apt's first error line (the cause: the last one is often a
/// summary such as "Failed to fetch some archives.").
fn run_apt(cmd: &mut Command, what: &str) -> Result<String> {
    let out = cmd
        .stdin(std::process::Stdio::null())
        .output()
        .context(|| format!("{what}: cannot start {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}",
            out.status,
            apt_failure(&String::from_utf8_lossy(&out.stderr))
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The first `E:` line of apt's stderr, else its last line.
fn apt_failure(stderr: &str) -> &str {
    let lines = || stderr.lines().map(str::trim).filter(|l| !l.is_empty());
    lines()
        .find_map(|l| l.strip_prefix("E: "))
        .or_else(|| lines().next_back())
        .unwrap_or("no output")
}

fn source_line(options: &str, uri: &str, suite: &str, component: &str) -> String {
    format!("deb-src {options}{uri} {suite} {component}\n")
}

/// The `-o` options that point apt at the private state in `dir`.
fn apt_options(dir: &Path) -> Vec<String> {
    vec![
        format!(
            "Dir::Etc::SourceList={}",
            dir.join("sources.list").display()
        ),
        "Dir::Etc::SourceParts=/dev/null".to_string(),
        format!("Dir::State::Lists={}", dir.join("lists").display()),
        format!("Dir::Cache={}", dir.join("cache").display()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This kind of machine's /etc/apt/sources.list.d/debian.sources (host
    /// names replaced).
    const DEBIAN_SOURCES: &str = "Types: deb
# http://snapshot.example/archive/debian/20250520T000000Z
URIs: http://debian-mirror.example/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
# http://snapshot.example/archive/debian-security/20250520T000000Z
URIs: http://debian-mirror.example/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
";

    #[test]
    fn reads_the_mirror_from_deb822_sources() {
        let entries = parse_deb822_sources(DEBIAN_SOURCES);
        assert_eq!(entries.len(), 2);
        assert_eq!(
            debian_mirror(&entries),
            Some(&SourceEntry {
                types: vec!["deb".into()],
                uri: "http://debian-mirror.example/debian".into(),
                suites: vec!["bookworm".into(), "bookworm-updates".into()],
                components: vec!["main".into()],
                signed_by: Some("/usr/share/keyrings/debian-archive-keyring.gpg".into()),
            })
        );
        // Security alone is no mirror of the main archive; third-party
        // repositories, disabled entries and embedded keys are passed over.
        let others = "Types: deb\nURIs: https://node.example/node_20.x\nSuites: nodistro\nComponents: main\n\n\
                      Types: deb deb-src\nURIs: http://mirror.example/debian\nSuites: trixie\nComponents: main contrib\nEnabled: no\n\n\
                      Types: deb\nURIs: http://ftp.example/debian/\nSuites: trixie\nComponents: contrib main\n\
                      Signed-By:\n -----BEGIN PGP PUBLIC KEY BLOCK-----\n .\n mQINBF\n -----END PGP PUBLIC KEY BLOCK-----\n";
        let mut entries = parse_deb822_sources(
            &DEBIAN_SOURCES.replace("bookworm bookworm-updates", "bookworm-updates"),
        );
        assert_eq!(debian_mirror(&entries), None);
        entries.extend(parse_deb822_sources(others));
        let mirror = debian_mirror(&entries).expect("the last stanza");
        assert_eq!(mirror.uri, "http://ftp.example/debian/");
        assert_eq!(mirror.signed_by, None);
    }

    #[test]
    fn reads_the_mirror_from_one_line_sources() {
        let list = "# deb http://commented.example/debian bookworm main\n\
                    deb https://cloud.example/apt cloud-sdk-bookworm main\n\
                    deb http://apt.postgresql.example/pub/repos/apt bookworm-pgdg main\n\
                    deb http://security.example/debian-security bookworm-security main\n\
                    deb [arch=amd64 signed-by=/usr/share/keyrings/a.gpg,/usr/share/keyrings/b.gpg] \
                    http://mirror.example/debian/ bookworm main contrib # the mirror\n\
                    deb-src http://second.example/debian bookworm main\n";
        let entries = parse_one_line_sources(list);
        assert_eq!(entries.len(), 5);
        assert_eq!(
            debian_mirror(&entries),
            Some(&SourceEntry {
                types: vec!["deb".into()],
                uri: "http://mirror.example/debian/".into(),
                suites: vec!["bookworm".into()],
                components: vec!["main".into(), "contrib".into()],
                signed_by: Some("/usr/share/keyrings/a.gpg,/usr/share/keyrings/b.gpg".into()),
            })
        );
        assert_eq!(
            debian_mirror(&parse_one_line_sources(
                "deb cdrom:[Debian 12]/ bookworm main\n"
            )),
            None
        );
    }

    #[test]
    fn reads_source_versions_from_showsrc() {
        let showsrc = "Package: postgresql-17
Binary: libpq-dev, libpq5,
 postgresql-17
Version: 17.12-0+deb13u1
Files:
 2e82313ca27317b2a6c7fef34c50f3f4 22292547 postgresql-17_17.12.orig.tar.bz2
Checksums-Sha256:
 e406fdcde8e58a616e65b84237ca1f1d92605ad4c3fc5a5264815439b8fc1611 4522 postgresql-17_17.12-0+deb13u1.dsc
 9cf136a703d8ee2f83465c43be4e9e8e7930c82b0bfba13be7e2537be769ac55 22292547 postgresql-17_17.12.orig.tar.bz2
Directory: pool/main/p/postgresql-17

Package: postgresql-common
Version: 1:278
Directory: pool/main/p/postgresql-common
";
        let versions = parse_showsrc(showsrc, "postgresql-17");
        assert_eq!(versions.len(), 1);
        assert_eq!(versions[0].version, "17.12-0+deb13u1");
        assert_eq!(versions[0].upstream(), "17.12");
        assert_eq!(versions[0].directory, "pool/main/p/postgresql-17");
        assert_eq!(
            versions[0].sha256_of("postgresql-17_17.12.orig.tar.bz2"),
            Some("9cf136a703d8ee2f83465c43be4e9e8e7930c82b0bfba13be7e2537be769ac55")
        );
        assert_eq!(upstream_version("1:2.3-4-1"), "2.3-4");
        assert_eq!(upstream_version("278"), "278");
        assert!(parse_showsrc("", "postgresql-17").is_empty());
    }

    #[test]
    fn apt_failures_report_the_first_error() {
        let stderr = "W: Download is performed unsandboxed as root\n\
                      E: Failed to fetch http://m.example/debian/pool/x.dsc  404  Not Found\n\
                      E: Failed to fetch some archives.\n";
        assert_eq!(
            apt_failure(stderr),
            "Failed to fetch http://m.example/debian/pool/x.dsc  404  Not Found"
        );
        assert_eq!(
            apt_failure("Err:1 http://m.example/x\n  404  Not Found\n"),
            "404  Not Found"
        );
        assert_eq!(apt_failure(""), "no output");
    }

    #[test]
    fn the_private_state_has_one_source_line() {
        assert_eq!(
            source_line(
                "[signed-by=/k.gpg] ",
                "http://mirror.example/debian",
                "trixie",
                "main"
            ),
            "deb-src [signed-by=/k.gpg] http://mirror.example/debian trixie main\n"
        );
        let options = apt_options(Path::new("/w/apt"));
        assert_eq!(
            options,
            [
                "Dir::Etc::SourceList=/w/apt/sources.list",
                "Dir::Etc::SourceParts=/dev/null",
                "Dir::State::Lists=/w/apt/lists",
                "Dir::Cache=/w/apt/cache",
            ]
        );
    }
}
