//! The extension's source tree keeps its shape: each folder of `src/` uses
//! only the folders its `mod.rs` says it may ("May use: ..."), those
//! statements allow no cycle, `compat` uses nothing of cowclone's own and is
//! the only place with a version `cfg`, and no file grows past 800 lines
//! unless its header says why.
//!
//! Reads the source as text: no cluster, no build of the extension.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

const LONG_FILE_LINES: usize = 800;
/// A file longer than `LONG_FILE_LINES` must say why in its header, with this phrase.
const LONG_FILE_REASON: &str = "is longer than 800 lines because";

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../src")
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).expect("src/ is readable") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files.sort();
    files
}

/// The folders of `src/`, each a stage of a clone's life.
fn folders() -> BTreeSet<String> {
    fs::read_dir(src_dir())
        .expect("src/ is readable")
        .filter_map(|e| {
            let path = e.ok()?.path();
            path.is_dir()
                .then(|| path.file_name()?.to_str().map(str::to_string))?
        })
        .collect()
}

/// The folder a file belongs to, or None for the top-level files.
fn folder_of(file: &Path) -> Option<String> {
    let relative = file.strip_prefix(src_dir()).expect("under src/");
    let mut parts = relative.components();
    let first = parts.next()?.as_os_str().to_str()?.to_string();
    parts.next().map(|_| first)
}

/// The leading `//!` lines of a file, without the markers.
fn header(text: &str) -> Vec<&str> {
    text.lines()
        .take_while(|l| l.starts_with("//!"))
        .map(|l| l.trim_start_matches("//!").trim())
        .collect()
}

/// The folders a folder's `mod.rs` allows it, from its "May use:" sentence:
/// the backquoted names up to the sentence's end.
fn allowed_uses(folder: &str) -> BTreeSet<String> {
    let path = src_dir().join(folder).join("mod.rs");
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let header = header(&text).join(" ");
    let start = header
        .find("May use:")
        .unwrap_or_else(|| panic!("{} states no \"May use:\"", path.display()));
    let sentence = &header[start + "May use:".len()..];
    let sentence = sentence
        .find(". ")
        .map_or(sentence, |end| &sentence[..end])
        .trim_end_matches('.');
    sentence
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

/// Every folder a source text names through `crate::`, including grouped
/// imports (`use crate::{a, b::c}`).
fn named_folders(text: &str, folders: &BTreeSet<String>) -> BTreeSet<String> {
    let mut named = BTreeSet::new();
    let code: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        let names: Vec<&str> = if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            group[..end]
                .split(',')
                .map(|item| item.trim().split("::").next().unwrap_or(""))
                .collect()
        } else {
            vec![rest
                .split(|c: char| !(c.is_alphanumeric() || c == '_'))
                .next()
                .unwrap_or("")]
        };
        named.extend(
            names
                .into_iter()
                .filter(|n| folders.contains(*n))
                .map(str::to_string),
        );
    }
    named
}

#[test]
fn each_folder_uses_only_what_its_module_doc_allows() {
    let folders = folders();
    assert!(
        folders.len() >= 7,
        "src/ has its stage folders: {folders:?}"
    );
    let allowed: BTreeMap<String, BTreeSet<String>> = folders
        .iter()
        .map(|f| (f.clone(), allowed_uses(f)))
        .collect();
    let mut violations = Vec::new();
    let mut checked = 0;
    for file in rust_files(&src_dir()) {
        let Some(folder) = folder_of(&file) else {
            continue; // lib.rs and api.rs wire the stages together
        };
        let text = fs::read_to_string(&file).expect("a readable source file");
        for used in named_folders(&text, &folders) {
            checked += 1;
            if used != folder && !allowed[&folder].contains(&used) {
                violations.push(format!(
                    "{} (in {folder}/) uses {used}/, which {folder}/mod.rs does not allow",
                    file.display()
                ));
            }
        }
    }
    assert!(
        checked > 20,
        "found only {checked} cross-references: is the parser blind?"
    );
    assert!(violations.is_empty(), "{}", violations.join("\n"));
}

#[test]
fn the_allowed_directions_have_no_cycle() {
    let folders = folders();
    let allowed: BTreeMap<String, BTreeSet<String>> = folders
        .iter()
        .map(|f| (f.clone(), allowed_uses(f)))
        .collect();
    for (folder, uses) in &allowed {
        for used in uses {
            assert!(
                folders.contains(used),
                "{folder}/mod.rs allows {used}, no such folder"
            );
        }
    }
    // Kahn's algorithm: a folder is placed once everything it uses is.
    let mut placed: Vec<String> = Vec::new();
    while placed.len() < folders.len() {
        let next = folders
            .iter()
            .find(|f| !placed.contains(f) && allowed[*f].iter().all(|u| placed.contains(u)));
        match next {
            Some(folder) => placed.push(folder.clone()),
            None => panic!("the allowed uses form a cycle among the folders not in {placed:?}"),
        }
    }
}

#[test]
fn compat_uses_nothing_of_cowclone() {
    let compat = src_dir().join("pg/compat");
    let files = rust_files(&compat);
    assert!(!files.is_empty(), "src/pg/compat/ exists");
    for file in files {
        let text = fs::read_to_string(&file).expect("a readable source file");
        for line in text.lines().filter(|l| !l.trim_start().starts_with("//")) {
            assert!(
                !line.contains("crate::"),
                "{} names cowclone's own code: {line}",
                file.display()
            );
            let in_mod_rs = file.file_name().is_some_and(|n| n == "mod.rs");
            assert!(
                !(line.contains("super::") && (in_mod_rs || line.contains("super::super"))),
                "{} reaches outside compat: {line}",
                file.display()
            );
        }
    }
}

#[test]
fn only_compat_knows_the_major() {
    let compat = src_dir().join("pg/compat");
    for file in rust_files(&src_dir()) {
        if file.starts_with(&compat) {
            continue;
        }
        let text = fs::read_to_string(&file).expect("a readable source file");
        for line in text.lines().filter(|l| !l.trim_start().starts_with("//")) {
            assert!(
                !line.contains("before_pg") && !line.contains("feature = \"pg1"),
                "{} has a version cfg outside compat: {line}",
                file.display()
            );
        }
    }
}

#[test]
fn long_files_say_why() {
    for file in rust_files(&src_dir()) {
        let text = fs::read_to_string(&file).expect("a readable source file");
        let lines = text.lines().count();
        if lines > LONG_FILE_LINES {
            assert!(
                header(&text).join(" ").contains(LONG_FILE_REASON),
                "{} has {lines} lines; split it, or say in its header why one concept needs them (\"{LONG_FILE_REASON} ...\")",
                file.display()
            );
        }
    }
}

/// The parser itself, on text with each form of reference.
#[test]
fn references_are_found_in_every_form() {
    let folders: BTreeSet<String> = ["pg", "read", "write", "state"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let text = "use crate::pg::compat;\nuse crate::{read, state::tid};\n// crate::write in a comment\nlet x = crate::read::f();";
    let found = named_folders(text, &folders);
    let expected: BTreeSet<String> = ["pg", "read", "state"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(found, expected);
}
