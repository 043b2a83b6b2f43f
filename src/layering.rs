//! The layering rules of the library, checked by reading `src/` (a unit test, so `cargo test` and CI run it).
//!
//! 1. Each top-level module may import only the modules [`ALLOWED`] lists for it. The list is a hierarchy
//!    (helpers, then queue, channels, workflow, bridge, api, then config and app), so the modules form no cycle:
//!    the queue imports no other domain module, channels never import api or workflow, workflow never imports
//!    api, and only `config` and `app` see the whole settings.
//! 2. Within a module, no two files import each other through a cycle (a parent and its children may refer to
//!    each other: a parent re-exports, a child uses its parent's types).
//! 3. Each table belongs to one module ([`TABLES`]); only that module's files name it. Another module asks the
//!    owner's API. A new migration's table must be added to the list, or this test fails.
//!
//! What counts as an import: every `crate::…`, `super::…` and `self::…` path in the code (not in comments),
//! with `use` groups expanded. A path through the crate root itself (`crate::*`, `use crate as x`) is refused,
//! since what it reaches could not be checked.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Which top-level modules each one may import. A module not listed may import nothing of herald's.
const ALLOWED: &[(&str, &[&str])] = &[
    ("db", &["embedded_postgres", "setting"]),
    ("metrics", &["db", "setting"]),
    (
        "alerts",
        &[
            "bridge", "channels", "clock", "queue", "db", "setting", "metrics",
        ],
    ),
    ("dataset", &["partitions"]),
    (
        "queue",
        &[
            "setting",
            "coalesce",
            "db",
            "dataset",
            "partitions",
            "audit",
            "telemetry",
            "metrics",
        ],
    ),
    (
        "channels",
        &[
            "queue",
            "setting",
            "coalesce",
            "db",
            "dataset",
            "audit",
            "metrics",
            "telemetry",
        ],
    ),
    (
        "recipients",
        &["channels", "setting", "db", "audit", "metrics"],
    ),
    (
        "feed",
        &[
            "recipients",
            "channels",
            "setting",
            "db",
            "dataset",
            "metrics",
        ],
    ),
    (
        "templates",
        &["channels", "setting", "db", "audit", "metrics"],
    ),
    (
        "workflow",
        &[
            "feed",
            "templates",
            "recipients",
            "channels",
            "queue",
            "setting",
            "coalesce",
            "db",
            "dataset",
            "audit",
            "metrics",
            "telemetry",
        ],
    ),
    (
        "bridge",
        &[
            "recipients",
            "workflow",
            "queue",
            "setting",
            "coalesce",
            "db",
            "dataset",
            "audit",
            "telemetry",
        ],
    ),
    (
        "clock",
        &[
            "feed",
            "recipients",
            "bridge",
            "workflow",
            "channels",
            "queue",
            "setting",
            "coalesce",
            "db",
            "dataset",
            "partitions",
            "audit",
            "metrics",
        ],
    ),
    (
        "status",
        &["alerts", "bridge", "channels", "clock", "queue"],
    ),
    (
        "api",
        &[
            "status",
            "feed",
            "templates",
            "recipients",
            "clock",
            "workflow",
            "channels",
            "queue",
            "setting",
            "coalesce",
            "db",
            "metrics",
            "audit",
            "telemetry",
        ],
    ),
    (
        "config",
        &[
            "api",
            "bridge",
            "channels",
            "alerts",
            "clock",
            "db",
            "embedded_postgres",
            "feed",
            "metrics",
            "queue",
            "recipients",
            "setting",
            "templates",
            "workflow",
        ],
    ),
    (
        "app",
        &[
            "alerts",
            "api",
            "audit",
            "bridge",
            "channels",
            "clock",
            "config",
            "db",
            "feed",
            "metrics",
            "queue",
            "recipients",
            "setting",
            "shutdown",
            "templates",
            "workflow",
        ],
    ),
];

/// The owner of each table (from `migrations/`).
const TABLES: &[(&str, &str)] = &[
    ("herald_jobs", "queue"),
    ("herald_job_history", "queue"),
    ("herald_job_history_default", "queue"),
    ("herald_dead_letters", "queue"),
    ("herald_queues", "queue"),
    ("herald_queue_stats", "queue"),
    ("herald_alerts", "alerts"),
    ("herald_workers", "queue"),
    ("herald_idempotency_keys", "queue"),
    ("herald_workflows", "workflow"),
    ("herald_runs", "workflow"),
    ("herald_run_steps", "workflow"),
    ("herald_events", "workflow"),
    ("herald_waits", "workflow"),
    ("herald_fanouts", "workflow"),
    ("herald_fanout_lanes", "workflow"),
    ("herald_throttle_grants", "workflow"),
    ("herald_digest_windows", "workflow"),
    ("herald_digest_entries", "workflow"),
    ("herald_templates", "templates"),
    ("herald_feed_items", "feed"),
    ("herald_erasures", "workflow"),
    ("herald_recipients", "recipients"),
    ("herald_recipient_devices", "recipients"),
    ("herald_topic_members", "recipients"),
    ("herald_recipient_secrets", "recipients"),
    ("herald_deliveries", "channels"),
    ("herald_suppressions", "channels"),
    ("herald_provider_circuits", "channels"),
    ("herald_callback_events", "channels"),
    ("herald_bridge_offsets", "bridge"),
    ("herald_bridge_dead_letters", "bridge"),
    ("herald_api_keys", "api"),
    ("herald_audit_log", "audit"),
    ("herald_schedules", "clock"),
    ("herald_rollup_days", "clock"),
    ("herald_rollup_jobs", "clock"),
    ("herald_rollup_runs", "clock"),
    ("herald_rollup_steps", "clock"),
    ("herald_rollup_deliveries", "clock"),
];

/// The library's files: (module path such as `queue::worker::runner`, code without comments).
fn library_files() -> Vec<(Vec<String>, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    // The binary's files, and this file (whose lists name every module and table).
    let skipped = ["main.rs", "commands.rs", "up.rs", "bench", "layering.rs"];
    let mut files = Vec::new();
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read src") {
            let path = entry.expect("dir entry").path();
            let relative = path.strip_prefix(&root).expect("under src").to_path_buf();
            if skipped.iter().any(|b| relative == Path::new(b)) {
                continue;
            }
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") && relative != Path::new("lib.rs")
            {
                let text = std::fs::read_to_string(&path).expect("read file");
                files.push((module_path(&relative), strip_comments(&text)));
            }
        }
    }
    files
}

/// Every module of the library: each file's module path and its ancestors.
fn module_set(files: &[(Vec<String>, String)]) -> BTreeSet<Vec<String>> {
    files
        .iter()
        .flat_map(|(m, _)| (1..=m.len()).map(|n| m[..n].to_vec()))
        .collect()
}

fn module_path(relative: &Path) -> Vec<String> {
    let mut parts: Vec<String> = relative
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts
}

fn strip_comments(text: &str) -> String {
    text.lines()
        .map(|line| match line.find("//") {
            // A `//` inside a string (a URL) is rare in code lines that also hold a path; good enough here.
            Some(at) if !line[..at].contains('"') => &line[..at],
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every path the code refers to through `crate::`, `super::` or `self::`, with `use` groups expanded.
fn paths(code: &str) -> Vec<String> {
    let mut found = Vec::new();
    let bytes = code.as_bytes();
    let mut at = 0;
    while at < code.len() {
        let rest = &code[at..];
        let Some(start) = ["crate::", "super::", "self::"]
            .iter()
            .filter_map(|p| rest.find(p))
            .min()
        else {
            break;
        };
        let begin = at + start;
        let preceded =
            begin > 0 && (bytes[begin - 1].is_ascii_alphanumeric() || bytes[begin - 1] == b'_');
        let end = path_end(code, begin);
        if !preceded {
            expand(&code[begin..end], &mut found);
        }
        at = end.max(begin + 1);
    }
    found
}

/// The end of the path starting at `begin`: identifiers, `::`, and balanced `{…}` groups.
fn path_end(code: &str, begin: usize) -> usize {
    let mut depth = 0usize;
    for (offset, c) in code[begin..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth > 0 => depth -= 1,
            c if depth > 0 && (c.is_whitespace() || c == ',' || c == '*') => {}
            c if c.is_alphanumeric() || c == '_' || c == ':' => {}
            _ => return begin + offset,
        }
        if depth == 0 && c == '}' {
            return begin + offset + 1;
        }
    }
    code.len()
}

/// `a::{b, c::{d, e}}` becomes `a::b`, `a::c::d`, `a::c::e`.
fn expand(path: &str, out: &mut Vec<String>) {
    let path: String = path.chars().filter(|c| !c.is_whitespace()).collect();
    match path.find('{') {
        None => out.push(path.trim_end_matches("::").to_string()),
        Some(open) => {
            let prefix = &path[..open];
            let inner = &path[open + 1..path.len().saturating_sub(1)];
            let mut depth = 0;
            let mut piece = String::new();
            for c in inner.chars().chain(std::iter::once(',')) {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        if !piece.is_empty() && piece != "self" {
                            expand(&format!("{prefix}{piece}"), out);
                        } else if piece == "self" {
                            out.push(prefix.trim_end_matches("::").to_string());
                        }
                        piece.clear();
                        continue;
                    }
                    _ => {}
                }
                piece.push(c);
            }
        }
    }
}

/// The module a path from `file` lands in: the longest prefix that is a module of the library.
fn resolve(file: &[String], path: &str, modules: &BTreeSet<Vec<String>>) -> Option<Vec<String>> {
    let mut segments = path.split("::");
    let mut base: Vec<String> = match segments.next()? {
        "crate" => Vec::new(),
        "self" => file.to_vec(),
        "super" => file[..file.len().saturating_sub(1)].to_vec(),
        _ => return None,
    };
    let mut rest: Vec<&str> = segments.collect();
    while rest.first() == Some(&"super") {
        base.pop();
        rest.remove(0);
    }
    for segment in rest {
        let mut next = base.clone();
        next.push(segment.to_string());
        if !modules.contains(&next) {
            break;
        }
        base = next;
    }
    Some(base)
}

#[test]
fn modules_import_only_what_their_layer_allows() {
    let files = library_files();
    let modules = module_set(&files);
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    let mut broken = Vec::new();
    for (module, code) in &files {
        let top = module[0].as_str();
        for path in paths(code) {
            let Some(target) = resolve(module, &path, &modules) else {
                continue;
            };
            let Some(target_top) = target.first().map(String::as_str) else {
                // `crate::*`, `crate as x`, or an item at the crate root: what it reaches cannot be checked, and
                // `lib.rs` holds only modules. (`super::` from a file's inline `mod tests` lands here too.)
                if path.starts_with("crate") {
                    broken.push(format!(
                        "{} uses {path}: import a module by its path",
                        module.join("::")
                    ));
                }
                continue;
            };
            if target_top != top && !allowed.get(top).is_some_and(|a| a.contains(&target_top)) {
                broken.push(format!("{} uses {path} ({target_top})", module.join("::")));
            }
        }
    }
    broken.sort();
    broken.dedup();
    assert!(
        broken.is_empty(),
        "imports the layering forbids (see src/layering.rs):\n{}",
        broken.join("\n")
    );
}

#[test]
fn no_files_import_each_other_in_a_cycle() {
    let files = library_files();
    let modules = module_set(&files);
    let mut edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for (module, code) in &files {
        for path in paths(code) {
            let Some(target) = resolve(module, &path, &modules).filter(|t| !t.is_empty()) else {
                continue;
            };
            let related = target.starts_with(module) || module.starts_with(&target);
            if !related {
                edges.entry(module.clone()).or_default().insert(target);
            }
        }
    }
    let mut cycles = Vec::new();
    let mut done = BTreeSet::new();
    for start in edges.keys() {
        find_cycles(start, &edges, &mut Vec::new(), &mut done, &mut cycles);
    }
    assert!(cycles.is_empty(), "import cycles:\n{}", cycles.join("\n"));
}

/// Depth-first search; a node met again while on `trail` closes a cycle.
fn find_cycles(
    node: &Vec<String>,
    edges: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
    trail: &mut Vec<Vec<String>>,
    done: &mut BTreeSet<Vec<String>>,
    cycles: &mut Vec<String>,
) {
    if let Some(at) = trail.iter().position(|m| m == node) {
        let names: Vec<String> = trail[at..]
            .iter()
            .chain([node])
            .map(|m| m.join("::"))
            .collect();
        cycles.push(names.join(" -> "));
        return;
    }
    if !done.insert(node.clone()) {
        return;
    }
    trail.push(node.clone());
    for next in edges.get(node).into_iter().flatten() {
        find_cycles(next, edges, trail, done, cycles);
    }
    trail.pop();
}

#[test]
fn each_table_is_named_only_by_its_owner() {
    let owners: BTreeMap<&str, &str> = TABLES.iter().copied().collect();
    let migrations = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    let mut unowned = Vec::new();
    for entry in std::fs::read_dir(&migrations).expect("read migrations") {
        let path: PathBuf = entry.expect("entry").path();
        let sql = std::fs::read_to_string(&path).expect("read migration");
        for table in table_names(&sql, "CREATE TABLE") {
            if !owners.contains_key(table.as_str()) {
                unowned.push(table);
            }
        }
    }
    assert!(
        unowned.is_empty(),
        "tables without an owner in src/layering.rs TABLES: {unowned:?}"
    );
    let mut trespass = Vec::new();
    for (module, code) in library_files() {
        let top = module[0].as_str();
        for table in table_names(&code, "") {
            if let Some(owner) = owners.get(table.as_str())
                && *owner != top
            {
                trespass.push(format!(
                    "{} names {table} (owned by {owner})",
                    module.join("::")
                ));
            }
        }
    }
    trespass.sort();
    trespass.dedup();
    assert!(trespass.is_empty(), "{}", trespass.join("\n"));
}

/// `herald_*` identifiers in `text` (after `prefix` when one is given, e.g. `CREATE TABLE`).
fn table_names(text: &str, prefix: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("herald_") {
        let before = &rest[..at];
        let boundary = !before
            .chars()
            .last()
            .is_some_and(|c| c.is_alphanumeric() || c == '_');
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        let wanted = prefix.is_empty()
            || before
                .trim_end()
                .trim_end_matches("IF NOT EXISTS")
                .trim_end()
                .ends_with(prefix);
        if boundary && wanted {
            names.push(name.clone());
        }
        rest = &rest[at + name.len().max(1)..];
    }
    names
}
