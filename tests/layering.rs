//! The crate's top-level modules form no cycle (docs/design.md, "Pieces"): a module that
//! names `crate::x` outside comments and tests depends on `x`, and no module may reach
//! itself through those dependencies.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("src is readable") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `crate::name` paths in `line`.
fn named_modules(line: &str) -> impl Iterator<Item = &str> {
    line.match_indices("crate::").map(move |(at, prefix)| {
        let rest = &line[at + prefix.len()..];
        let end = rest
            .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
            .unwrap_or(rest.len());
        &rest[..end]
    })
}

fn dependencies(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut deps: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let relative = file.strip_prefix(src).expect("under src");
        let first = relative.components().next().expect("a path");
        let module = first
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        if ["lib", "main", "fuzz"].contains(&module.as_str()) {
            continue;
        }
        let text = std::fs::read_to_string(&file).expect("a source file");
        let code = text
            .split("#[cfg(test)]\nmod tests")
            .next()
            .unwrap_or_default();
        for line in code.lines().filter(|l| !l.trim_start().starts_with("//")) {
            for used in named_modules(line).filter(|m| !m.is_empty() && *m != module) {
                deps.entry(module.clone())
                    .or_default()
                    .insert(used.to_string());
            }
        }
    }
    deps
}

fn reachable(deps: &BTreeMap<String, BTreeSet<String>>, from: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut stack = vec![from.to_string()];
    while let Some(module) = stack.pop() {
        for next in deps.get(&module).into_iter().flatten() {
            if seen.insert(next.clone()) {
                stack.push(next.clone());
            }
        }
    }
    seen
}

#[test]
fn no_module_depends_on_itself() {
    let deps = dependencies(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    assert!(
        deps.contains_key("node") && deps.contains_key("admin"),
        "{deps:?}"
    );
    let cycles: Vec<&String> = deps
        .keys()
        .filter(|m| reachable(&deps, m).contains(*m))
        .collect();
    assert!(
        cycles.is_empty(),
        "modules on a dependency cycle: {cycles:?}\n{deps:#?}"
    );
}
