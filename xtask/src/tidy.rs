//! Tidy checks over the workspace's Rust sources (`src/`, `api/src/`,
//! `xtask/src/`, `tests/`, `examples/`, `build.rs`) and the README, run by
//! `cargo test -p xtask`:
//!
//! - every `.rs` file starts with a `//!` doc comment saying what it is;
//! - no file is longer than [`MAX_LINES`], except the files of
//!   [`LONG_FILES`], which may not grow past their listed length;
//! - `.unwrap()` outside tests carries a `// unwrap: <reason>` comment on
//!   its line or the line before, except in the files of [`UNWRAPS`],
//!   which may not gain more;
//! - the README's layout table names every top-level folder of the
//!   repository (`target/` and dot-folders aside).
//!
//! A failure names the file and the rule.

use std::fs;
use std::path::{Path, PathBuf};

use crate::project_root;

/// The longest a source file may be, in lines.
const MAX_LINES: usize = 500;

/// Files longer than [`MAX_LINES`] today, with their length as a ceiling:
/// they may shrink (lower the number, or drop the entry once under the
/// limit) but not grow. Empty: every file is under the limit, and a file
/// that outgrows it should be split rather than come here. An entry for a
/// file that no longer exists is ignored (so drop it when a file is split).
const LONG_FILES: &[(&str, usize)] = &[];

/// Files allowed unjustified `.unwrap()`s outside tests, with their count
/// as a ceiling (the same rules as [`LONG_FILES`]). Empty: no file has one
/// today, and a new one should say why rather than come here.
const UNWRAPS: &[(&str, usize)] = &[];

/// The top-level source locations the checks walk.
const ROOTS: &[&str] = &["src", "api/src", "xtask/src", "tests", "examples", "build.rs"];

/// Every `.rs` file under [`ROOTS`], relative to the project root, sorted.
fn rust_files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for top in ROOTS {
        collect(root, Path::new(top), &mut out);
    }
    out.sort();
    out
}

fn collect(root: &Path, rel: &Path, out: &mut Vec<PathBuf>) {
    let path = root.join(rel);
    if path.is_file() {
        if rel.extension().is_some_and(|e| e == "rs") {
            out.push(rel.to_path_buf());
        }
        return;
    }
    let Ok(entries) = fs::read_dir(&path) else {
        return;
    };
    for entry in entries.flatten() {
        collect(root, &rel.join(entry.file_name()), out);
    }
}

/// `rel` as a `/`-separated string, the way the lists above spell it.
fn name(rel: &Path) -> String {
    rel.to_string_lossy().replace('\\', "/")
}

fn ceiling(list: &[(&str, usize)], file: &str) -> Option<usize> {
    list.iter().find(|(f, _)| *f == file).map(|&(_, n)| n)
}

/// Whether the first line that is not blank is a `//!` comment.
fn has_module_doc(text: &str) -> bool {
    text.lines()
        .find(|l| !l.trim().is_empty())
        .is_some_and(|l| l.trim_start().starts_with("//!"))
}

/// Whether the whole file is test code: integration tests, `tests.rs`
/// modules and the files of `tests/` module folders, and this file
/// (compiled for tests only; it also spells the pattern it looks for).
fn is_test_file(rel: &Path) -> bool {
    rel.components().any(|c| c.as_os_str() == "tests")
        || rel.file_name().is_some_and(|f| f == "tests.rs")
        || rel == Path::new("xtask/src/tidy.rs")
}

/// The 1-based line numbers of `.unwrap()` calls outside `#[cfg(test)]`
/// items and without a `// unwrap: <reason>` comment on the line or the
/// line before. A `#[cfg(test)]` item ends at its line if that ends with
/// `;`, otherwise at the first line after it that is only `}` at the
/// item's indentation.
fn unjustified_unwraps(text: &str) -> Vec<usize> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let trimmed = line.trim_start();
        if trimmed.starts_with("#[cfg(test)]") {
            let indent = &line[..line.len() - trimmed.len()];
            let mut j = i + 1;
            while j < lines.len() && lines[j].trim_start().starts_with("#[") {
                j += 1;
            }
            if j < lines.len() && !lines[j].trim_end().ends_with(';') {
                let close = format!("{indent}}}");
                while j < lines.len() && lines[j].trim_end() != close {
                    j += 1;
                }
            }
            i = j + 1;
            continue;
        }
        let code = trimmed.split("//").next().unwrap_or_default();
        if code.contains(".unwrap()") {
            let justified = |l: &str| l.contains("// unwrap:");
            let previous = i.checked_sub(1).map(|p| lines[p]);
            if !justified(line) && !previous.is_some_and(justified) {
                out.push(i + 1);
            }
        }
        i += 1;
    }
    out
}

/// The paths in the first column of the README's `## Layout` table.
fn layout_paths(readme: &str) -> Vec<String> {
    let Some(start) = readme.find("\n## Layout") else {
        return Vec::new();
    };
    readme[start + 1..]
        .lines()
        .skip(1)
        .take_while(|l| !l.starts_with("## "))
        .filter(|l| l.starts_with('|'))
        .filter_map(|l| l.split('|').nth(1))
        .flat_map(|cell| cell.split('`').skip(1).step_by(2).map(str::to_string).collect::<Vec<_>>())
        .collect()
}

/// The repository's top-level folders, `target/` and dot-folders aside.
fn top_level_folders(root: &Path) -> Vec<String> {
    let mut out: Vec<String> = fs::read_dir(root)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.path().is_dir())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n != "target" && !n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

#[test]
fn every_module_has_a_doc_comment() {
    let root = project_root();
    let missing: Vec<String> = rust_files(&root)
        .iter()
        .filter(|rel| !has_module_doc(&fs::read_to_string(root.join(rel)).unwrap_or_default()))
        .map(|rel| name(rel))
        .collect();
    assert!(missing.is_empty(), "no leading `//!` doc comment in: {}", missing.join(", "));
}

#[test]
fn no_file_is_too_long() {
    let root = project_root();
    let mut errors = Vec::new();
    for rel in rust_files(&root) {
        let file = name(&rel);
        let lines = fs::read_to_string(root.join(&rel)).unwrap_or_default().lines().count();
        match ceiling(LONG_FILES, &file) {
            Some(max) if lines > max => {
                errors.push(format!("{file}: {lines} lines, more than its ceiling of {max} in tidy.rs's LONG_FILES"))
            }
            Some(_) => {}
            None if lines > MAX_LINES => errors.push(format!("{file}: {lines} lines, more than {MAX_LINES}")),
            None => {}
        }
    }
    assert!(errors.is_empty(), "files too long:\n{}", errors.join("\n"));
}

#[test]
fn unwraps_outside_tests_say_why() {
    let root = project_root();
    let mut errors = Vec::new();
    for rel in rust_files(&root) {
        if is_test_file(&rel) {
            continue;
        }
        let file = name(&rel);
        let found = unjustified_unwraps(&fs::read_to_string(root.join(&rel)).unwrap_or_default());
        let allowed = ceiling(UNWRAPS, &file).unwrap_or(0);
        if found.len() > allowed {
            let at: Vec<String> = found.iter().map(|n| format!("{file}:{n}")).collect();
            errors.push(format!(
                "{file}: {} `.unwrap()` without a `// unwrap: <reason>` comment (allowed: {allowed}): {}",
                found.len(),
                at.join(", ")
            ));
        }
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}

#[test]
fn the_readme_layout_names_every_top_level_folder() {
    let root = project_root();
    let readme = fs::read_to_string(root.join("README.md")).unwrap_or_default();
    let paths = layout_paths(&readme);
    assert!(!paths.is_empty(), "README.md: no `## Layout` table");
    let missing: Vec<String> = top_level_folders(&root)
        .into_iter()
        .filter(|dir| !paths.iter().any(|p| p.starts_with(&format!("{dir}/"))))
        .collect();
    assert!(missing.is_empty(), "README.md's layout table does not name: {}", missing.join(", "));
}

#[test]
fn the_unwrap_scan_skips_tests_and_justified_calls() {
    let text = "//! x\nfn a() { x.unwrap(); }\n// unwrap: the lock is never poisoned\nfn b() { y.unwrap(); }\nfn c() { z.unwrap(); // unwrap: checked above\n}\n// a comment about .unwrap()\n#[cfg(test)]\nmod tests {\n    fn t() { w.unwrap(); }\n}\nfn d() { v.unwrap(); }\n";
    assert_eq!(unjustified_unwraps(text), vec![2, 12]);
}

#[test]
fn the_layout_table_is_read_from_its_first_column() {
    let readme = "# x\n\n## Layout\n\n| path | what |\n|---|---|\n| `src/a.rs`, `docs/` | the `b/` |\n| `vm/` | guest |\n\n## Next\n| `no/` | |\n";
    assert_eq!(layout_paths(readme), vec!["src/a.rs", "docs/", "vm/"]);
}
