//! Request target → path inside the web root.
//!
//! The target is percent-decoded once, then split into segments; `.` and
//! empty segments are dropped and `..` removes the previous segment, as
//! nginx does. Anything that would climb above the root, decode to NUL or
//! invalid UTF-8, or contain a backslash is refused before the file system
//! is touched. The WASI preopen is the second wall, not the only one.

use std::fmt;

/// Why a request target cannot name a file in the root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// Not in origin form (`/…`).
    NotOrigin,
    /// `%` not followed by two hex digits, or bytes that are not UTF-8.
    BadEncoding,
    /// A decoded NUL byte.
    Nul,
    /// A backslash, which some file systems take as a separator.
    Backslash,
    /// `..` segments that climb above the root.
    Escapes,
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PathError::NotOrigin => "request target is not an absolute path",
            PathError::BadEncoding => "invalid percent-encoding or UTF-8 in path",
            PathError::Nul => "NUL byte in path",
            PathError::Backslash => "backslash in path",
            PathError::Escapes => "path climbs above the web root",
        })
    }
}

/// A request path resolved against the root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// Path segments below the root, each a plain file name.
    pub segments: Vec<String>,
    /// The decoded path ended in `/` (or named the root itself).
    pub trailing_slash: bool,
}

impl Resolved {
    /// The path relative to the root, as WASI `open-at` takes it (`.` for the root).
    pub fn relative(&self) -> String {
        if self.segments.is_empty() {
            ".".to_owned()
        } else {
            self.segments.join("/")
        }
    }

    /// The canonical URL path of this location as a directory (with the
    /// trailing slash), percent-encoded, for a redirect's `Location`.
    pub fn directory_url(&self) -> String {
        let mut url = String::from("/");
        for segment in &self.segments {
            url.extend(percent_encoding::utf8_percent_encode(segment, SEGMENT));
            url.push('/');
        }
        url
    }
}

/// Bytes that are percent-encoded when a segment is written back into a URL.
pub(crate) const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'/')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'\\')
    .add(b'^')
    .add(b'`')
    .add(b'{')
    .add(b'|')
    .add(b'}');

/// Resolves a request target (`/a/b?q`) to segments below the root.
pub fn resolve(target: &str) -> Result<Resolved, PathError> {
    let path = target.split(['?', '#']).next().unwrap_or_default();
    if !path.starts_with('/') {
        return Err(PathError::NotOrigin);
    }
    let decoded = percent_decode(path)?;
    if decoded.contains('\0') {
        return Err(PathError::Nul);
    }
    if decoded.contains('\\') {
        return Err(PathError::Backslash);
    }
    let mut segments: Vec<String> = Vec::new();
    for segment in decoded.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop().ok_or(PathError::Escapes)?;
            }
            name => segments.push(name.to_owned()),
        }
    }
    let trailing_slash = segments.is_empty() || decoded.ends_with('/');
    Ok(Resolved {
        segments,
        trailing_slash,
    })
}

/// Strict percent-decoding: every `%` must start a two-digit hex escape.
fn percent_decode(path: &str) -> Result<String, PathError> {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or(PathError::BadEncoding)?;
            let hex = std::str::from_utf8(hex).map_err(|_| PathError::BadEncoding)?;
            if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(PathError::BadEncoding);
            }
            out.push(u8::from_str_radix(hex, 16).map_err(|_| PathError::BadEncoding)?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| PathError::BadEncoding)
}

#[cfg(test)]
mod tests {
    use super::*;

    macro_rules! resolves {
        ($($name:ident: $target:expr => $expected:expr;)*) => {$(
            #[test]
            fn $name() {
                let got = resolve($target).map(|r| (r.relative(), r.trailing_slash));
                let expected: Result<(&str, bool), PathError> = $expected;
                assert_eq!(got, expected.map(|(p, s)| (p.to_owned(), s)), "target {:?}", $target);
            }
        )*};
    }

    resolves! {
        root: "/" => Ok((".", true));
        file: "/index.html" => Ok(("index.html", false));
        nested: "/css/site.css" => Ok(("css/site.css", false));
        directory_slash: "/css/" => Ok(("css", true));
        query_ignored: "/a.html?x=/../../etc/passwd" => Ok(("a.html", false));
        fragment_ignored: "/a.html#top" => Ok(("a.html", false));
        dot_segments: "/./a/./b" => Ok(("a/b", false));
        doubled_slashes: "//a///b" => Ok(("a/b", false));
        dotdot_inside: "/a/../b.html" => Ok(("b.html", false));
        dotdot_to_root: "/a/.." => Ok((".", true));
        dotdot_escapes: "/../etc/passwd" => Err(PathError::Escapes);
        dotdot_escapes_deep: "/a/../../etc/passwd" => Err(PathError::Escapes);
        encoded_dotdot: "/%2e%2e/etc/passwd" => Err(PathError::Escapes);
        encoded_dotdot_upper: "/%2E%2E%2Fetc%2Fpasswd" => Err(PathError::Escapes);
        encoded_slash_dotdot: "/a%2f..%2f..%2fetc" => Err(PathError::Escapes);
        double_encoded_is_literal: "/%252e%252e/etc" => Ok(("%2e%2e/etc", false));
        backslash: "/..\\..\\etc\\passwd" => Err(PathError::Backslash);
        encoded_backslash: "/..%5c..%5cetc" => Err(PathError::Backslash);
        nul: "/index.html%00.png" => Err(PathError::Nul);
        truncated_escape: "/a%2" => Err(PathError::BadEncoding);
        bad_hex: "/a%zz" => Err(PathError::BadEncoding);
        signed_hex: "/a%+1" => Err(PathError::BadEncoding);
        invalid_utf8: "/%ff%fe" => Err(PathError::BadEncoding);
        utf8_name: "/caf%C3%A9.txt" => Ok(("café.txt", false));
        space: "/a%20b.txt" => Ok(("a b.txt", false));
        not_origin: "http://example.com/" => Err(PathError::NotOrigin);
        asterisk: "*" => Err(PathError::NotOrigin);
    }

    #[test]
    fn directory_url_is_encoded_and_never_protocol_relative() {
        let r = resolve("//evil.example/%20x").unwrap();
        assert_eq!(r.directory_url(), "/evil.example/%20x/");
        let r = resolve("/").unwrap();
        assert_eq!(r.directory_url(), "/");
    }
}
