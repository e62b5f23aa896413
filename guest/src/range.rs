//! Byte ranges (RFC 9110 §14).
//!
//! One range is served as `206 Partial Content`. A request for several
//! ranges gets the whole file with `200`: RFC 9110 allows it, it is what
//! many static servers do, and it spares clients that never ask for
//! `multipart/byteranges` from parsing one. A `Range` header that does not
//! parse is ignored, as the RFC requires.

/// What a `Range` header asks of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ranged {
    /// Serve the whole file.
    Full,
    /// Serve bytes `start..=end`.
    Partial {
        /// First byte.
        start: u64,
        /// Last byte, inclusive.
        end: u64,
    },
    /// No byte of the file is in the range: 416.
    Unsatisfiable,
}

/// Evaluates `header` (a `Range` value) against a file of `size` bytes.
pub fn evaluate(header: &str, size: u64) -> Ranged {
    let Some(spec) = header
        .trim()
        .split_once('=')
        .filter(|(unit, _)| unit.trim().eq_ignore_ascii_case("bytes"))
        .map(|(_, spec)| spec.trim())
    else {
        return Ranged::Full;
    };
    if spec.contains(',') {
        return Ranged::Full;
    }
    let Some((first, last)) = spec.split_once('-') else {
        return Ranged::Full;
    };
    let (first, last) = (first.trim(), last.trim());
    match (number(first), number(last)) {
        // bytes=-n: the last n bytes.
        (None, Some(suffix)) if first.is_empty() => {
            if suffix == 0 || size == 0 {
                Ranged::Unsatisfiable
            } else {
                Ranged::Partial {
                    start: size.saturating_sub(suffix),
                    end: size - 1,
                }
            }
        }
        // bytes=a- and bytes=a-b.
        (Some(start), end) if last.is_empty() || end.is_some() => {
            let end = end.unwrap_or(u64::MAX);
            if end < start {
                Ranged::Full
            } else if start >= size {
                Ranged::Unsatisfiable
            } else {
                Ranged::Partial {
                    start,
                    end: end.min(size - 1),
                }
            }
        }
        _ => Ranged::Full,
    }
}

/// `1*DIGIT` as a number; anything else (signs, spaces, overflow) is `None`.
fn number(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    macro_rules! ranges {
        ($($name:ident: $header:expr, $size:expr => $expected:expr;)*) => {$(
            #[test]
            fn $name() {
                assert_eq!(evaluate($header, $size), $expected, "{:?}", $header);
            }
        )*};
    }

    use Ranged::{Full, Partial, Unsatisfiable};

    ranges! {
        closed: "bytes=0-9", 100 => Partial { start: 0, end: 9 };
        single_byte: "bytes=5-5", 100 => Partial { start: 5, end: 5 };
        open_ended: "bytes=90-", 100 => Partial { start: 90, end: 99 };
        end_clamped: "bytes=90-1000", 100 => Partial { start: 90, end: 99 };
        suffix: "bytes=-10", 100 => Partial { start: 90, end: 99 };
        suffix_longer_than_file: "bytes=-1000", 100 => Partial { start: 0, end: 99 };
        unit_case: "Bytes=0-0", 100 => Partial { start: 0, end: 0 };
        start_past_end: "bytes=100-", 100 => Unsatisfiable;
        start_past_end_closed: "bytes=200-300", 100 => Unsatisfiable;
        zero_suffix: "bytes=-0", 100 => Unsatisfiable;
        empty_file: "bytes=0-", 0 => Unsatisfiable;
        empty_file_suffix: "bytes=-5", 0 => Unsatisfiable;
        several: "bytes=0-1,5-6", 100 => Full;
        reversed: "bytes=9-0", 100 => Full;
        other_unit: "items=0-1", 100 => Full;
        no_dash: "bytes=5", 100 => Full;
        signed: "bytes=+1-5", 100 => Full;
        garbage: "bytes=a-b", 100 => Full;
        empty_spec: "bytes=-", 100 => Full;
        overflow: "bytes=0-99999999999999999999999", 100 => Full;
    }
}
