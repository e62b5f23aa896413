//! The README and the pages in `docs/`: every relative link resolves to a
//! file of the repository, and every anchor to a heading of its page.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// The repository's root.
fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// `README.md` and every page of `docs/`.
fn pages() -> Vec<PathBuf> {
    let root = repository();
    let mut pages = vec![root.join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "md"))
        .collect();
    docs.sort();
    pages.extend(docs);
    pages
}

/// The text of `markdown` outside fenced code blocks and code spans.
fn prose(markdown: &str) -> String {
    let mut out = String::new();
    let mut fenced = false;
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        // Drop code spans: the text between each pair of backticks.
        let mut code = false;
        for piece in line.split('`') {
            if !code {
                out.push_str(piece);
            }
            code = !code;
        }
        out.push('\n');
    }
    out
}

/// The targets of the inline links (`[text](target)`) and the reference
/// definitions (`[name]: target`) in `markdown`.
fn links(markdown: &str) -> Vec<String> {
    let text = prose(markdown);
    let mut found = Vec::new();
    let mut rest = text.as_str();
    while let Some(at) = rest.find("](") {
        rest = &rest[at + 2..];
        let end = rest.find(')').expect("a link's target ends with )");
        found.push(rest[..end].to_owned());
        rest = &rest[end..];
    }
    for line in text.lines() {
        if let Some((name, target)) = line.split_once("]: ")
            && name.starts_with('[')
            && !name.contains(' ')
        {
            found.push(target.trim().to_owned());
        }
    }
    found
}

/// The anchors GitHub gives the headings of `markdown`: lower case,
/// spaces to hyphens, punctuation dropped, a repeated one numbered.
fn anchors(markdown: &str) -> HashSet<String> {
    let mut anchors = HashSet::new();
    let mut fenced = false;
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        }
        if fenced || !line.starts_with('#') {
            continue;
        }
        let heading = line.trim_start_matches('#').trim();
        let slug: String = heading
            .to_lowercase()
            .chars()
            .filter_map(|c| match c {
                ' ' => Some('-'),
                c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
                _ => None,
            })
            .collect();
        let mut unique = slug.clone();
        let mut n = 0;
        while !anchors.insert(unique.clone()) {
            n += 1;
            unique = format!("{slug}-{n}");
        }
    }
    anchors
}

#[test]
fn the_anchors_are_githubs() {
    let page = "# A page\n## What bad input gets\n## HTTPS and HTTP/2\n\
                ## Ceilings: what a guest call leaves\n## Logs\n## Logs\n\
                ```\n# not a heading\n```\n";
    let found = anchors(page);
    for anchor in [
        "a-page",
        "what-bad-input-gets",
        "https-and-http2",
        "ceilings-what-a-guest-call-leaves",
        "logs",
        "logs-1",
    ] {
        assert!(found.contains(anchor), "{anchor} in {found:?}");
    }
    assert!(!found.contains("not-a-heading"), "{found:?}");
}

#[test]
fn every_relative_link_in_the_readme_and_docs_resolves() {
    let pages = pages();
    assert!(pages.len() >= 10, "README.md and the docs: {pages:?}");
    let mut checked = 0;
    let mut broken = Vec::new();
    for page in &pages {
        let text = std::fs::read_to_string(page).unwrap();
        for target in links(&text) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            checked += 1;
            let (file, anchor) = match target.split_once('#') {
                Some((file, anchor)) => (file, Some(anchor)),
                None => (target.as_str(), None),
            };
            let linked = if file.is_empty() {
                page.clone()
            } else {
                page.parent().unwrap().join(file)
            };
            if !linked.exists() {
                broken.push(format!("{}: {target}: no such file", page.display()));
                continue;
            }
            if let Some(anchor) = anchor {
                let linked_text = std::fs::read_to_string(&linked).unwrap_or_default();
                if !anchors(&linked_text).contains(anchor) {
                    broken.push(format!("{}: {target}: no such heading", page.display()));
                }
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
    assert!(checked >= 30, "only {checked} relative links found");
}

#[test]
fn each_page_of_the_docs_opens_with_what_it_covers() {
    for page in pages().iter().skip(1) {
        let text = std::fs::read_to_string(page).unwrap();
        let mut paragraphs = text.split("\n\n");
        let title = paragraphs.next().unwrap();
        assert!(
            title.starts_with("# ") && !title.contains('\n'),
            "{}: a title first",
            page.display()
        );
        let opening = paragraphs.next().unwrap_or_default();
        assert!(
            !opening.starts_with('#') && !opening.starts_with("```") && opening.len() > 80,
            "{}: a paragraph saying what the page covers, before anything else",
            page.display()
        );
    }
}
