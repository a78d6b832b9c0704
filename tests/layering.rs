//! The import graph, checked: lower layers never import higher ones, and the guest and the
//! device meet only through `abi`, `pages`, `virtq`, `transport` and `memory`, as in a real VM
//! (the device must not be able to tell the modelled guest from a real Linux kernel).
//!
//! Reads the crate's sources as text: every `crate::<module>` path (in `use` lines, grouped
//! `use crate::{a, b}` lists and inline paths) outside comments counts as an import. A new
//! top-level module fails the test until it is given a place in [`allowed`].

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

/// The layers the guest and the device both stand on: the only ones they share.
const SHARED: &[&str] = &["abi", "pages", "virtq", "transport", "memory", "util"];

/// The modules top-level module `module` may import (besides itself); `"*"` for any; `None` for
/// a module with no place in the table yet.
fn allowed(module: &str) -> Option<Vec<&'static str>> {
    Some(match module {
        "util" => vec![],
        "memory" => vec!["util"],
        "virtq" | "pages" => vec!["memory", "util"],
        "abi" => vec!["memory", "pages", "virtq", "util"],
        "transport" => vec!["memory", "virtq", "util"],
        "guest" | "device" => SHARED.to_vec(),
        "migration" => vec!["memory", "pages", "util"],
        "vhost_user" => [SHARED, &["device"]].concat(),
        // The crate-wide error gathers every layer's error type for the machine and bindings.
        "error" => [SHARED, &["guest", "device", "migration", "vhost_user"]].concat(),
        "machine" => [SHARED, &["guest", "device", "migration", "error"]].concat(),
        "bench" => [
            SHARED,
            &["machine", "guest", "device", "migration", "error"],
        ]
        .concat(),
        // The bindings wrap everything and nothing imports them; the test rigs (feature
        // `test-utils`) start drivers against devices.
        "python" | "rig" => vec!["*"],
        _ => return None,
    })
}

fn src_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("rust")
}

/// The top-level module a source file belongs to (`rust/device/batch.rs` -> `device`,
/// `rust/error.rs` -> `error`; `rust/lib.rs` -> `None`).
fn module_of(path: &Path) -> Option<String> {
    let rel = path.strip_prefix(src_root()).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    match first.strip_suffix(".rs") {
        Some("lib") => None,
        Some(m) => Some(m.to_string()),
        None => Some(first.to_string()),
    }
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).expect("read source dir") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The line without its `//` comment (doc links name higher layers on purpose). String
/// literals are not parsed: a `crate::` inside one would count as an import.
fn code_part(line: &str) -> &str {
    match line.find("//") {
        Some(i) => &line[..i],
        None => line,
    }
}

/// Every module named after `crate::` in `src`, including each name in `crate::{a, b::c}`.
fn imported_modules(src: &str) -> BTreeSet<String> {
    let code: String = src.lines().map(code_part).collect::<Vec<_>>().join("\n");
    let mut found = BTreeSet::new();
    let mut rest = code.as_str();
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // A grouped import: each top-level item of the group, up to the matching brace.
            let mut depth = 0usize;
            let mut item = String::new();
            for ch in group.chars() {
                match ch {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        push_head(&mut found, &item);
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                if depth == 0 || ch != '{' {
                    item.push(ch);
                }
            }
            push_head(&mut found, &item);
        } else {
            push_head(&mut found, rest);
        }
    }
    found
}

/// Adds the first path segment of `path` (`device::stats::X` -> `device`).
fn push_head(found: &mut BTreeSet<String>, path: &str) {
    let head: String = path
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    if !head.is_empty() && head != "self" {
        found.insert(head);
    }
}

#[test]
fn test_layers_import_only_what_they_may() {
    let mut files = Vec::new();
    rust_files(&src_root(), &mut files);
    files.sort();
    let mut violations = Vec::new();
    let mut unknown = BTreeSet::new();
    for file in &files {
        let Some(module) = module_of(file) else {
            continue;
        };
        let Some(allowed) = allowed(&module) else {
            unknown.insert(module);
            continue;
        };
        if allowed.contains(&"*") {
            continue;
        }
        let src = fs::read_to_string(file).expect("read source");
        for imported in imported_modules(&src) {
            if imported != module && !allowed.contains(&imported.as_str()) {
                violations.push(format!(
                    "{} imports crate::{imported}",
                    file.strip_prefix(src_root()).unwrap().display()
                ));
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "top-level modules with no place in the layer table: {unknown:?}"
    );
    assert!(
        violations.is_empty(),
        "layer violations:\n{}",
        violations.join("\n")
    );
}

#[test]
fn test_guest_and_device_share_no_import() {
    for (side, other) in [("guest", "device"), ("device", "guest")] {
        let allowed = allowed(side).unwrap();
        assert!(!allowed.contains(&other), "{side} may import {other}");
        for m in allowed {
            assert!(SHARED.contains(&m), "{side} may import {m}");
        }
    }
}

#[test]
fn test_import_scanner_reads_grouped_and_inline_paths() {
    let src = "use crate::pages::PageSet;\n\
               use crate::{memory::{GuestAddress, Pfn}, virtq};\n\
               // see [`crate::machine`]\n\
               let x = crate::abi::bit(3); // crate::device in a comment\n";
    let found: Vec<String> = imported_modules(src).into_iter().collect();
    assert_eq!(found, ["abi", "memory", "pages", "virtq"]);
}
