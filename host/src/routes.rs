//! Which guest serves which path: route prefixes, longest first.
//!
//! Prefixes match whole path segments of the request's path as sent
//! (before percent-decoding): `/api` takes `/api`, `/api/` and `/api/x`,
//! not `/apix`. The guest sees the request's full path, prefix included,
//! so the URLs it builds need no rewriting.

use std::sync::Arc;

use crate::clients::RateLimit;
use crate::wasm::reload::GuestSlot;

/// A guest mounted at a prefix, and the rate limit its clients are held
/// to.
pub struct Mount {
    /// Each request's exchange keeps it without a copy.
    pub prefix: Arc<str>,
    /// The guest, and its versions as they are swapped in.
    pub slot: Arc<GuestSlot>,
    /// The route's rate limit, if it has one.
    pub rate: Option<Arc<RateLimit>>,
}

/// The route table.
pub struct Routes {
    /// Longest prefix first.
    table: Vec<Mount>,
}

impl Routes {
    /// A table of mounts; prefixes are distinct.
    pub fn new(mut table: Vec<Mount>) -> Routes {
        table.sort_by_key(|mount| std::cmp::Reverse(mount.prefix.len()));
        Routes { table }
    }

    /// The slot for `path`, if a route takes it.
    pub fn find(&self, path: &str) -> Option<&Arc<GuestSlot>> {
        self.route(path).map(|mount| &mount.slot)
    }

    /// The route that takes `path`, if any.
    pub fn route(&self, path: &str) -> Option<&Mount> {
        self.table.iter().find(|mount| takes(&mount.prefix, path))
    }

    /// Every route's slot.
    pub fn slots(&self) -> impl Iterator<Item = &Arc<GuestSlot>> {
        self.table.iter().map(|mount| &mount.slot)
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
