//! The book's "Layout" page (`docs/src/layout.md`) names only what exists: every path it gives (a
//! `src/…`, `tests/…`, `deploy/…` path, a file at the top, or a file or
//! folder named within a bullet under one of those) is in the tree.

use std::path::Path;

/// Prefixes and top-level names that make a backquoted word a path.
const ROOTS: [&str; 8] = [
    "vendor/",
    "src/",
    "tests/",
    "benches/",
    "deploy/",
    "examples/",
    "docs/",
    "scripts/",
];

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The backquoted words of `text`.
fn quoted(text: &str) -> Vec<&str> {
    text.split('`').skip(1).step_by(2).collect()
}

/// A word that names a file or folder: no spaces, and a path or a file
/// name with an extension the tree uses.
fn is_path(word: &str) -> bool {
    let named = [".rs", ".toml", ".yml", ".yaml", ".py", "/"]
        .iter()
        .any(|e| word.ends_with(e));
    !word.contains(' ') && !word.starts_with('.') && (named || word == "Dockerfile")
}

/// Checks one bullet's paths; relative ones are found under a folder the
/// bullet named before them. The paths checked.
fn check_bullet(bullet: &str, missing: &mut Vec<String>) -> usize {
    let mut bases: Vec<String> = Vec::new();
    let mut checked = 0;
    for word in quoted(bullet).into_iter().filter(|w| is_path(w)) {
        let absolute =
            ROOTS.iter().any(|r| word.starts_with(r)) || !word.contains('/') && bases.is_empty();
        let candidates: Vec<String> = match absolute {
            true => vec![word.to_owned()],
            false => bases.iter().map(|b| format!("{b}{word}")).collect(),
        };
        checked += 1;
        match candidates.into_iter().find(|c| exists(c)) {
            Some(found) if found.ends_with('/') => bases.push(found),
            Some(_) => {}
            None => missing.push(format!(
                "`{word}` in: {}",
                bullet.lines().next().unwrap_or("")
            )),
        }
    }
    checked
}

/// Whether `path` is in the tree; a `*` in its file name matches any
/// text (`tests/it/bucket*.rs`).
fn exists(path: &str) -> bool {
    let Some((before, after)) = path.split_once('*') else {
        return root().join(path).exists();
    };
    let (dir, prefix) = before.rsplit_once('/').unwrap_or(("", before));
    let names = std::fs::read_dir(root().join(dir))
        .into_iter()
        .flatten()
        .flatten();
    names
        .filter_map(|e| e.file_name().into_string().ok())
        .any(|n| n.starts_with(prefix) && n.ends_with(after))
}

#[test]
fn every_path_the_readme_layout_gives_exists() {
    let layout = std::fs::read_to_string(root().join("docs/src/layout.md")).unwrap();
    let mut missing = Vec::new();
    let mut checked = 0;
    for bullet in layout.split("\n- ").skip(1) {
        checked += check_bullet(bullet, &mut missing);
    }
    assert!(checked >= 30, "the layout's paths were read: {checked}");
    assert!(
        missing.is_empty(),
        "docs/src/layout.md names what does not exist:\n{}",
        missing.join("\n")
    );
}
