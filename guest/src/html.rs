//! The HTML the guest generates: error pages and directory listings. Every
//! piece of text that comes from a request or a file name is escaped.

use std::time::{Duration, UNIX_EPOCH};

use percent_encoding::utf8_percent_encode;

use crate::path::SEGMENT;

/// A small page for an error or redirect status, the same as the host's.
pub fn error_page(status: u16, title: &str, detail: &str) -> Vec<u8> {
    wasmhttpd_pages::error_page(status, title, detail).into_bytes()
}

pub use wasmhttpd_pages::escape;

/// One row of a directory listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The name in its directory.
    pub name: String,
    /// A directory (linked with a trailing slash, no size).
    pub directory: bool,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, seconds since the epoch.
    pub modified: Option<u64>,
}

/// The listing page of the directory at URL path `path` (decoded, with a
/// trailing slash). Directories come first, then files, each by name.
pub fn listing(path: &str, mut entries: Vec<Entry>) -> Vec<u8> {
    entries.sort_by(|a, b| b.directory.cmp(&a.directory).then(a.name.cmp(&b.name)));
    let title = escape(&format!("Index of {path}"));
    let mut page = format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head><meta charset=\"utf-8\">\
         <title>{title}</title></head>\n<body>\n<h1>{title}</h1>\n<table>\n\
         <thead><tr><th>Name</th><th>Size</th><th>Modified</th></tr></thead>\n<tbody>\n"
    );
    if path != "/" {
        page.push_str("<tr><td><a href=\"../\">../</a></td><td></td><td></td></tr>\n");
    }
    for entry in &entries {
        let slash = if entry.directory { "/" } else { "" };
        // Relative to the listed directory; `./` keeps a name with a colon
        // from reading as a URL scheme.
        let href = escape(&utf8_percent_encode(&entry.name, SEGMENT).to_string());
        let size = if entry.directory {
            "-".to_owned()
        } else {
            entry.size.to_string()
        };
        let modified = entry
            .modified
            .map(|secs| httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(secs)))
            .unwrap_or_default();
        page.push_str(&format!(
            "<tr><td><a href=\"./{href}{slash}\">{}{slash}</a></td><td>{size}</td><td>{modified}</td></tr>\n",
            escape(&entry.name),
        ));
    }
    page.push_str("</tbody>\n</table>\n<hr><p>wasmhttpd</p>\n</body>\n</html>\n");
    page.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, directory: bool, size: u64) -> Entry {
        Entry {
            name: name.to_owned(),
            directory,
            size,
            modified: Some(1_700_000_000),
        }
    }

    #[test]
    fn names_are_escaped_in_text_and_links() {
        let page = String::from_utf8(listing(
            "/a&b/",
            vec![
                entry("<script>.txt", false, 12),
                entry("x\" onclick=\"y", false, 1),
            ],
        ))
        .unwrap();
        assert!(page.contains("<title>Index of /a&amp;b/</title>"));
        assert!(page.contains(
            "<a href=\"./%3Cscript%3E.txt\">&lt;script&gt;.txt</a></td><td>12</td>\
             <td>Tue, 14 Nov 2023 22:13:20 GMT</td>"
        ));
        assert!(page.contains("href=\"./x%22%20onclick=%22y\">x&quot; onclick=&quot;y</a>"));
        assert!(!page.contains("<script>"));
    }

    #[test]
    fn directories_first_then_names() {
        let page = String::from_utf8(listing(
            "/",
            vec![
                entry("b.txt", false, 2),
                entry("z", true, 0),
                entry("a.txt", false, 1),
            ],
        ))
        .unwrap();
        let z = page.find("./z/").unwrap();
        let a = page.find("./a.txt").unwrap();
        let b = page.find("./b.txt").unwrap();
        assert!(z < a && a < b, "{page}");
        assert!(!page.contains("../"), "the root has no parent link");
        assert!(page.contains("<td>-</td>"), "a directory has no size");
    }

    #[test]
    fn subdirectories_link_to_their_parent() {
        let page = String::from_utf8(listing("/docs/", Vec::new())).unwrap();
        assert!(page.contains("<a href=\"../\">../</a>"));
    }

    #[test]
    fn error_pages_escape_their_detail() {
        let page = String::from_utf8(error_page(400, "Bad Request", "<b>")).unwrap();
        assert!(page.contains("<p>&lt;b&gt;</p>"));
    }
}
