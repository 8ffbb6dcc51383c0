//! The book's metrics are the daemon's: every row of its metrics table
//! (`docs/src/metrics.md`) names a metric of `src/ops/metrics.rs`'s table
//! with the same type and labels (and every metric there has a row), and
//! every sample the README and the book write out (`esr_export_runs_total{outcome="failed"}`) uses a label the
//! metric has. `deploy::promtool_check_metrics_passes_over_a_real_scrape_of_the_daemon`
//! holds the source's table to a real scrape.

use std::collections::BTreeMap;

/// A metric's type and labels, as a table row gives them.
#[derive(Debug, PartialEq)]
struct Row {
    kind: String,
    labels: Vec<String>,
}

fn read(path: &str) -> String {
    std::fs::read_to_string(format!("{}/{path}", env!("CARGO_MANIFEST_DIR")))
        .unwrap_or_else(|err| panic!("{path}: {err}"))
}

/// The README and every page of the book, one after the other.
fn documentation() -> String {
    let mut pages = vec!["README.md".to_owned()];
    for dir in ["docs/src", "docs/src/runbooks"] {
        let listed = std::fs::read_dir(format!("{}/{dir}", env!("CARGO_MANIFEST_DIR"))).unwrap();
        let mut names: Vec<String> = listed
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.ends_with(".md"))
            .map(|n| format!("{dir}/{n}"))
            .collect();
        names.sort();
        pages.extend(names);
    }
    pages
        .iter()
        .map(|page| read(page))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The label names of a cell: each backquoted word outside parentheses
/// (which give a label's values).
fn labels(cell: &str) -> Vec<String> {
    let mut outside = String::new();
    let mut depth = 0;
    for c in cell.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            _ if depth == 0 => outside.push(c),
            _ => {}
        }
    }
    outside
        .split(',')
        .filter_map(|part| part.trim().strip_prefix('`')?.split('`').next())
        .map(str::to_owned)
        .collect()
}

/// The `| \`esr_…\` | type | labels |` rows of `text`, lines first
/// stripped of `prefix`.
fn metric_rows(text: &str, prefix: &str) -> BTreeMap<String, Row> {
    text.lines()
        .filter_map(|line| line.strip_prefix(prefix)?.strip_prefix("| `esr_"))
        .filter_map(|rest| {
            let (name, rest) = rest.split_once('`')?;
            let cells: Vec<&str> = rest.trim_start_matches([' ', '|']).split('|').collect();
            let row = Row {
                kind: cells.first()?.trim().to_owned(),
                labels: labels(cells.get(1)?),
            };
            Some((format!("esr_{name}"), row))
        })
        .collect()
}

#[test]
fn the_books_metrics_table_is_the_daemons() {
    let source = metric_rows(&read("src/ops/metrics.rs"), "//! ");
    let book = metric_rows(&read("docs/src/metrics.md"), "");
    assert!(source.len() >= 20, "{source:?}");
    for (name, row) in &book {
        let exported = source.get(name);
        assert_eq!(exported, Some(row), "docs/src/metrics.md's row for {name}");
    }
    let missing: Vec<&String> = source.keys().filter(|n| !book.contains_key(*n)).collect();
    assert!(
        missing.is_empty(),
        "docs/src/metrics.md has no row for {missing:?}"
    );
}

#[test]
fn every_sample_the_documentation_writes_uses_labels_its_metric_has() {
    let source = metric_rows(&read("src/ops/metrics.rs"), "//! ");
    let readme = documentation();
    let mut checked = 0;
    for (start, _) in readme.match_indices("esr_") {
        let rest = &readme[start..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let Some(selector) = rest[name.len()..].strip_prefix('{') else {
            continue;
        };
        let selector = selector.split('}').next().unwrap_or_default();
        let base = ["_bucket", "_count", "_sum"]
            .iter()
            .find_map(|suffix| {
                name.strip_suffix(suffix)
                    .filter(|b| source.contains_key(*b))
            })
            .unwrap_or(&name);
        let row = source.get(base).unwrap_or_else(|| {
            panic!("the documentation writes {name}{{…}}, which the daemon does not export")
        });
        for matcher in selector.split(',').filter(|m| !m.trim().is_empty()) {
            let label = matcher
                .split(['=', '!', '~'])
                .next()
                .unwrap_or_default()
                .trim();
            assert!(
                row.labels.iter().any(|l| l == label)
                    || label == "le"
                    || label == "instance"
                    || label == "job",
                "the documentation: {name}{{{selector}}} uses the label {label:?}; {base} has {:?}",
                row.labels
            );
            checked += 1;
        }
    }
    assert!(
        checked >= 3,
        "the documentation's samples were found: {checked}"
    );
}
