//! The pages wasmhttpd writes for an error or a redirect, and the header
//! fields that go with them: one source for the host (a refused request,
//! a path no route takes, a guest that failed) and for the default guest
//! (a missing file, a bad path), so a visitor cannot tell which of them
//! answered, and neither leaves out a header the other sends.
//!
//! No dependencies, so the guest builds it for wasm32-wasip2 as it is.

/// The content type of every page here.
pub const CONTENT_TYPE: &str = "text/html; charset=utf-8";

/// Header fields on every response the host or the default guest writes
/// itself: the browser takes the declared content type, never a guess
/// from the bytes.
pub const SECURITY_HEADERS: [(&str, &str); 1] = [("x-content-type-options", "nosniff")];

/// A small HTML page for an error or redirect `status`, with its reason
/// phrase as the `title` and `detail` (escaped here) as its text.
pub fn error_page(status: u16, title: &str, detail: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head><meta charset=\"utf-8\">\
         <title>{status} {title}</title></head>\n<body>\n<h1>{status} {title}</h1>\n\
         <p>{}</p>\n<hr><p>wasmhttpd</p>\n</body>\n</html>\n",
        escape(detail)
    )
}

/// What `status` tells a visitor, as the text of its page.
pub fn detail(status: u16) -> &'static str {
    match status {
        400 => "The request is not one this server can read.",
        404 => "The requested page does not exist on this server.",
        405 => "This resource can only be read.",
        408 => "The request took too long to arrive.",
        413 => "The request's body is larger than this server accepts.",
        414 => "The request's address is longer than this server accepts.",
        417 => "This server cannot meet the request's expectation.",
        426 => "This resource needs another protocol.",
        431 => "The request's header fields are larger than this server accepts.",
        500 => "The server failed to produce a response.",
        501 => "The request uses a feature this server does not have.",
        503 => "The server is busy; try again in a moment.",
        504 => "The server took too long to produce a response.",
        505 => "This server speaks HTTP/1.0 and HTTP/1.1 only.",
        _ => "The server could not answer this request.",
    }
}

/// Text made safe for HTML content and quoted attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_escape_their_detail() {
        let page = error_page(400, "Bad Request", "<b>\"it's\" & more</b>");
        assert!(page.contains("<p>&lt;b&gt;&quot;it&#39;s&quot; &amp; more&lt;/b&gt;</p>"));
        assert!(page.contains("<title>400 Bad Request</title>"));
    }

    #[test]
    fn every_status_the_host_writes_has_its_own_text() {
        let statuses = [
            400, 404, 405, 408, 413, 414, 417, 426, 431, 500, 501, 503, 504, 505,
        ];
        for status in statuses {
            assert_ne!(detail(status), detail(999), "{status}");
        }
    }
}
