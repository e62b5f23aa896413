//! Which guest serves which path: route prefixes, longest first.
//!
//! Prefixes match whole path segments of the request's path as sent
//! (before percent-decoding): `/api` takes `/api`, `/api/` and `/api/x`,
//! not `/apix`. The guest sees the request's full path, prefix included,
//! so the URLs it builds need no rewriting.

use std::sync::Arc;

use crate::wasm::reload::GuestSlot;

/// The route table.
pub struct Routes {
    /// Longest prefix first; each request's exchange keeps its route's
    /// prefix without a copy.
    table: Vec<(Arc<str>, Arc<GuestSlot>)>,
}

impl Routes {
    /// A table of `(prefix, slot)` pairs; prefixes are distinct.
    pub fn new(table: Vec<(String, Arc<GuestSlot>)>) -> Routes {
        let mut table: Vec<(Arc<str>, _)> = table
            .into_iter()
            .map(|(prefix, slot)| (prefix.into(), slot))
            .collect();
        table.sort_by_key(|(prefix, _)| std::cmp::Reverse(prefix.len()));
        Routes { table }
    }

    /// The slot for `path`, if a route takes it.
    pub fn find(&self, path: &str) -> Option<&Arc<GuestSlot>> {
        self.route(path).map(|(_, slot)| slot)
    }

    /// The prefix and slot of the route that takes `path`, if any.
    pub fn route(&self, path: &str) -> Option<(&Arc<str>, &Arc<GuestSlot>)> {
        self.table
            .iter()
            .find(|(prefix, _)| takes(prefix, path))
            .map(|(prefix, slot)| (prefix, slot))
    }

    /// Every route's slot.
    pub fn slots(&self) -> impl Iterator<Item = &Arc<GuestSlot>> {
        self.table.iter().map(|(_, slot)| slot)
    }
}

/// Whether the route at `prefix` takes `path`.
fn takes(prefix: &str, path: &str) -> bool {
    prefix == "/"
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::takes;

    #[test]
    fn prefixes_match_whole_segments() {
        assert!(takes("/", "/anything"));
        assert!(takes("/api", "/api"));
        assert!(takes("/api", "/api/"));
        assert!(takes("/api", "/api/v1/users"));
        assert!(!takes("/api", "/apix"));
        assert!(!takes("/api", "/ap"));
        assert!(!takes("/api/v1", "/api"));
        assert!(takes("/api/v1", "/api/v1/x"));
    }
}
