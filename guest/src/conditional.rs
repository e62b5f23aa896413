//! Validators and conditional requests (RFC 9110 §8.8, §13).
//!
//! The ETag is strong and cheap: it is made from the file's size and
//! modification time, so no file is read or hashed to compute it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A file's validators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Validators {
    /// Entity tag, quoted: `"<size hex>-<mtime seconds hex>.<nanoseconds hex>"`,
    /// strong for files as they are (see [`Validators::encoded`]).
    pub etag: String,
    /// Modification time, whole seconds since the epoch, if the file system has one.
    pub modified: Option<u64>,
}

impl Validators {
    /// Validators for a file of `size` bytes last modified at `modified`
    /// (seconds, nanoseconds since the epoch).
    pub fn new(size: u64, modified: Option<(u64, u32)>) -> Self {
        let (secs, nanos) = modified.unwrap_or((0, 0));
        Validators {
            etag: format!("\"{size:x}-{secs:x}.{nanos:x}\""),
            modified: modified.map(|(secs, _)| secs),
        }
    }

    /// The validators of another representation of the same file, told
    /// apart by `coding` in the tag: `"…-br"`. `weak` when the bytes are
    /// generated and a later guest could generate different ones.
    pub fn encoded(&self, coding: &str, weak: bool) -> Validators {
        let opaque = self.etag.trim_start_matches("W/").trim_end_matches('"');
        let prefix = if weak { "W/" } else { "" };
        Validators {
            etag: format!("{prefix}{opaque}-{coding}\""),
            modified: self.modified,
        }
    }

    /// Whether an `If-Range` value still names this file: a strong entity
    /// tag equal to ours, or exactly our `Last-Modified` date (RFC 9110 §13.1.5).
    pub fn matches_if_range(&self, value: &str) -> bool {
        let value = value.trim();
        if value.starts_with('"') || value.starts_with("W/") {
            return matches_any(value, &self.etag, Comparison::Strong);
        }
        parse_date(value).is_some_and(|date| self.modified == Some(date))
    }

    /// `Last-Modified` as an IMF-fixdate.
    pub fn last_modified(&self) -> Option<String> {
        self.modified
            .map(|secs| httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(secs)))
    }
}

/// The conditional request headers that apply to a file.
#[derive(Debug, Default, Clone)]
pub struct Conditions {
    /// `If-Match`, all field lines joined with commas.
    pub if_match: Option<String>,
    /// `If-None-Match`, all field lines joined with commas.
    pub if_none_match: Option<String>,
    /// `If-Modified-Since`.
    pub if_modified_since: Option<String>,
    /// `If-Unmodified-Since`.
    pub if_unmodified_since: Option<String>,
}

/// What the preconditions decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Serve the file.
    Proceed,
    /// 304 Not Modified.
    NotModified,
    /// 412 Precondition Failed.
    PreconditionFailed,
}

impl Conditions {
    /// Evaluates the preconditions in the order RFC 9110 §13.2.2 gives.
    /// `safe` is true for GET and HEAD.
    pub fn evaluate(&self, file: &Validators, safe: bool) -> Outcome {
        if let Some(if_match) = &self.if_match {
            if !matches_any(if_match, &file.etag, Comparison::Strong) {
                return Outcome::PreconditionFailed;
            }
        } else if let Some(since) = self.if_unmodified_since.as_deref().and_then(parse_date)
            && file.modified.is_some_and(|modified| modified > since)
        {
            return Outcome::PreconditionFailed;
        }
        if let Some(if_none_match) = &self.if_none_match {
            if matches_any(if_none_match, &file.etag, Comparison::Weak) {
                return if safe {
                    Outcome::NotModified
                } else {
                    Outcome::PreconditionFailed
                };
            }
        } else if safe
            && let Some(since) = self.if_modified_since.as_deref().and_then(parse_date)
            && file.modified.is_some_and(|modified| modified <= since)
        {
            return Outcome::NotModified;
        }
        Outcome::Proceed
    }
}

#[derive(Clone, Copy)]
enum Comparison {
    Strong,
    Weak,
}

/// Whether the `*` or entity-tag list `field` matches `etag` (RFC 9110 §8.8.3.2).
fn matches_any(field: &str, etag: &str, comparison: Comparison) -> bool {
    if field.trim() == "*" {
        return true;
    }
    let (ours_weak, ours) = split_weak(etag);
    field.split(',').map(str::trim).any(|candidate| {
        let (weak, tag) = split_weak(candidate);
        match comparison {
            Comparison::Strong => !weak && !ours_weak && tag == ours,
            Comparison::Weak => tag == ours,
        }
    })
}

/// An entity tag's weakness and its quoted opaque part.
fn split_weak(tag: &str) -> (bool, &str) {
    match tag.strip_prefix("W/") {
        Some(opaque) => (true, opaque),
        None => (false, tag),
    }
}

/// An HTTP-date as seconds since the epoch; invalid dates are ignored, as
/// RFC 9110 requires.
fn parse_date(value: &str) -> Option<u64> {
    let time = httpdate::parse_http_date(value.trim()).ok()?;
    let since = time.duration_since(SystemTime::UNIX_EPOCH).ok()?;
    Some(since.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MODIFIED: u64 = 1_700_000_000;

    fn file() -> Validators {
        Validators::new(1234, Some((MODIFIED, 5)))
    }

    fn date(secs: u64) -> String {
        httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(secs))
    }

    fn eval(conditions: Conditions) -> Outcome {
        conditions.evaluate(&file(), true)
    }

    #[test]
    fn etag_is_strong_and_changes_with_size_or_time() {
        assert_eq!(file().etag, "\"4d2-6553f100.5\"");
        assert_ne!(Validators::new(1235, Some((MODIFIED, 5))).etag, file().etag);
        assert_ne!(Validators::new(1234, Some((MODIFIED, 6))).etag, file().etag);
        assert_eq!(
            file().last_modified().unwrap(),
            "Tue, 14 Nov 2023 22:13:20 GMT"
        );
    }

    #[test]
    fn if_none_match() {
        let etag = file().etag;
        let cond = |v: &str| Conditions {
            if_none_match: Some(v.to_owned()),
            ..Default::default()
        };
        assert_eq!(eval(cond(&etag)), Outcome::NotModified);
        assert_eq!(
            eval(cond(&format!("\"x\", W/{etag}"))),
            Outcome::NotModified
        );
        assert_eq!(eval(cond("*")), Outcome::NotModified);
        assert_eq!(eval(cond("\"other\"")), Outcome::Proceed);
        assert_eq!(
            cond(&etag).evaluate(&file(), false),
            Outcome::PreconditionFailed
        );
    }

    #[test]
    fn if_match_uses_strong_comparison() {
        let etag = file().etag;
        let cond = |v: &str| Conditions {
            if_match: Some(v.to_owned()),
            ..Default::default()
        };
        assert_eq!(eval(cond(&etag)), Outcome::Proceed);
        assert_eq!(eval(cond("*")), Outcome::Proceed);
        assert_eq!(
            eval(cond(&format!("W/{etag}"))),
            Outcome::PreconditionFailed
        );
        assert_eq!(eval(cond("\"other\"")), Outcome::PreconditionFailed);
    }

    #[test]
    fn dates() {
        let ims = |secs| Conditions {
            if_modified_since: Some(date(secs)),
            ..Default::default()
        };
        assert_eq!(eval(ims(MODIFIED)), Outcome::NotModified);
        assert_eq!(eval(ims(MODIFIED + 60)), Outcome::NotModified);
        assert_eq!(eval(ims(MODIFIED - 1)), Outcome::Proceed);
        let ius = |secs| Conditions {
            if_unmodified_since: Some(date(secs)),
            ..Default::default()
        };
        assert_eq!(eval(ius(MODIFIED)), Outcome::Proceed);
        assert_eq!(eval(ius(MODIFIED - 1)), Outcome::PreconditionFailed);
        let garbage = Conditions {
            if_modified_since: Some("yesterday".into()),
            ..Default::default()
        };
        assert_eq!(eval(garbage), Outcome::Proceed);
    }

    #[test]
    fn if_range() {
        let file = file();
        assert!(file.matches_if_range(&file.etag));
        assert!(!file.matches_if_range(&format!("W/{}", file.etag)));
        assert!(!file.matches_if_range("\"other\""));
        assert!(file.matches_if_range(&date(MODIFIED)));
        assert!(!file.matches_if_range(&date(MODIFIED + 1)));
        assert!(!file.matches_if_range("garbage"));
    }

    #[test]
    fn encoded_representations_have_their_own_tags() {
        let file = file();
        let static_br = file.encoded("br", false);
        assert_eq!(static_br.etag, "\"4d2-6553f100.5-br\"");
        let dynamic_gzip = file.encoded("gzip", true);
        assert_eq!(dynamic_gzip.etag, "W/\"4d2-6553f100.5-gzip\"");
        // A weak tag matches If-None-Match, never If-Match or If-Range.
        let inm = Conditions {
            if_none_match: Some(dynamic_gzip.etag.clone()),
            ..Default::default()
        };
        assert_eq!(inm.evaluate(&dynamic_gzip, true), Outcome::NotModified);
        assert_eq!(inm.evaluate(&file, true), Outcome::Proceed);
        let im = Conditions {
            if_match: Some(dynamic_gzip.etag.clone()),
            ..Default::default()
        };
        assert_eq!(
            im.evaluate(&dynamic_gzip, true),
            Outcome::PreconditionFailed
        );
        assert!(!dynamic_gzip.matches_if_range(&dynamic_gzip.etag));
        assert!(static_br.matches_if_range(&static_br.etag));
        assert!(!file.matches_if_range(&static_br.etag));
    }

    #[test]
    fn precedence() {
        let etag = file().etag;
        // If-None-Match wins over If-Modified-Since, both ways.
        let inm_miss_ims_hit = Conditions {
            if_none_match: Some("\"other\"".into()),
            if_modified_since: Some(date(MODIFIED)),
            ..Default::default()
        };
        assert_eq!(eval(inm_miss_ims_hit), Outcome::Proceed);
        // If-Match wins over If-Unmodified-Since.
        let im_hit_ius_miss = Conditions {
            if_match: Some(etag.clone()),
            if_unmodified_since: Some(date(MODIFIED - 100)),
            ..Default::default()
        };
        assert_eq!(eval(im_hit_ius_miss), Outcome::Proceed);
        // A failed If-Match is 412 even when If-None-Match would give 304.
        let im_miss_inm_hit = Conditions {
            if_match: Some("\"other\"".into()),
            if_none_match: Some(etag),
            ..Default::default()
        };
        assert_eq!(eval(im_miss_inm_hit), Outcome::PreconditionFailed);
    }
}
