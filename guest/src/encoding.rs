//! Content codings: `Accept-Encoding` negotiation (RFC 9110 §12.5.3) and
//! gzip / brotli compression.
//!
//! A file may be sent as a precompressed sibling (`app.js.br` for
//! `app.js`), compressed on the fly, or as it is. Compression runs inside
//! the guest with pure-Rust encoders, so it stays in the sandbox and works
//! the same under any host.

use std::io::{self, Read, Write};

/// A content coding the guest can send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    /// `br` (RFC 7932).
    Brotli,
    /// `gzip` (RFC 1952).
    Gzip,
}

impl Coding {
    /// Both codings, best compression first: the order ties are broken in.
    pub const ALL: [Coding; 2] = [Coding::Brotli, Coding::Gzip];

    /// The `Content-Encoding` token.
    pub fn token(self) -> &'static str {
        match self {
            Coding::Brotli => "br",
            Coding::Gzip => "gzip",
        }
    }

    /// The file name suffix of a precompressed sibling.
    pub fn extension(self) -> &'static str {
        match self {
            Coding::Brotli => ".br",
            Coding::Gzip => ".gz",
        }
    }
}

/// Files smaller than this are sent as they are: the coding's framing
/// would eat most of the saving.
pub const MIN_COMPRESS_SIZE: u64 = 1024;

/// Brotli quality for on-the-fly compression. 11 is for build steps; 5 is
/// close to gzip's speed with a better ratio.
const BROTLI_QUALITY: i32 = 5;
/// Brotli window: 1 MiB.
const BROTLI_WINDOW_BITS: i32 = 20;
/// gzip level, zlib's default.
const GZIP_LEVEL: u32 = 6;

/// A parsed `Accept-Encoding`: the quality the client gives each coding,
/// in thousandths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcceptEncoding {
    brotli: Option<u16>,
    gzip: Option<u16>,
    identity: Option<u16>,
    any: Option<u16>,
}

impl AcceptEncoding {
    /// Parses the field value, `None` when the request had none. Members
    /// that do not parse are skipped.
    pub fn parse(value: Option<&str>) -> AcceptEncoding {
        let mut accept = AcceptEncoding {
            brotli: None,
            gzip: None,
            identity: None,
            any: None,
        };
        for member in value.unwrap_or_default().split(',') {
            let mut parts = member.split(';');
            let token = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
            let mut quality = Some(1000);
            for param in parts {
                if let Some((name, value)) = param.split_once('=')
                    && name.trim().eq_ignore_ascii_case("q")
                {
                    quality = parse_quality(value.trim());
                }
            }
            let Some(quality) = quality else { continue };
            let slot = match token.as_str() {
                "br" => &mut accept.brotli,
                "gzip" | "x-gzip" => &mut accept.gzip,
                "identity" => &mut accept.identity,
                "*" => &mut accept.any,
                _ => continue,
            };
            *slot = Some(quality);
        }
        accept
    }

    /// The quality of `coding`: named, else `*`, else not acceptable.
    pub fn quality(&self, coding: Coding) -> u16 {
        let named = match coding {
            Coding::Brotli => self.brotli,
            Coding::Gzip => self.gzip,
        };
        named.or(self.any).unwrap_or(0)
    }

    /// The quality of sending the content as it is: acceptable unless
    /// excluded by `identity;q=0` or by `*;q=0` without naming it. When the
    /// client gives it no quality, identity is acceptable but ranks below
    /// every coding the client lists (`br;q=0.5` still means "send br").
    pub fn identity_quality(&self) -> u16 {
        self.identity.or(self.any).unwrap_or(1)
    }

    /// Picks among `offered` (codings the server can send, most preferred
    /// first) and returns the index of the one with the highest quality,
    /// the first on ties; `None` means send the content as it is. A coding
    /// wins over identity at equal quality, since that is the point of
    /// offering it.
    pub fn choose(&self, offered: &[Coding]) -> Option<usize> {
        let mut best: Option<(usize, u16)> = None;
        for (index, &coding) in offered.iter().enumerate() {
            let quality = self.quality(coding);
            if quality > 0 && best.is_none_or(|(_, q)| quality > q) {
                best = Some((index, quality));
            }
        }
        best.filter(|&(_, quality)| quality >= self.identity_quality())
            .map(|(index, _)| index)
    }
}

/// A qvalue (RFC 9110 §12.4.2) in thousandths.
fn parse_quality(value: &str) -> Option<u16> {
    let (whole, fraction) = value.split_once('.').unwrap_or((value, ""));
    if fraction.len() > 3 || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let thousandths: u16 = format!("{fraction:0<3}").parse().ok()?;
    match whole {
        "0" => Some(thousandths),
        "1" if thousandths == 0 => Some(1000),
        _ => None,
    }
}

/// Whether a file of this media type is worth compressing: text and
/// text-like formats. Images, audio, video, archives and web fonts other
/// than TrueType/OpenType are compressed already.
pub fn compressible(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let Some((kind, subtype)) = essence.split_once('/') else {
        return false;
    };
    match kind {
        "text" => true,
        "application" => {
            matches!(
                subtype,
                "javascript" | "json" | "xml" | "wasm" | "xhtml+xml" | "rss+xml" | "atom+xml"
            ) || subtype.ends_with("+json")
                || subtype.ends_with("+xml")
        }
        "image" => matches!(subtype, "svg+xml" | "x-icon" | "vnd.microsoft.icon" | "bmp"),
        "font" => matches!(subtype, "ttf" | "otf"),
        _ => false,
    }
}

/// Compresses all of `input` into `output` with `coding`.
pub fn compress(coding: Coding, input: &mut impl Read, output: &mut impl Write) -> io::Result<()> {
    match coding {
        Coding::Brotli => {
            let params = brotli::enc::BrotliEncoderParams {
                quality: BROTLI_QUALITY,
                lgwin: BROTLI_WINDOW_BITS,
                ..Default::default()
            };
            brotli::enc::BrotliCompress(input, output, &params)?;
        }
        Coding::Gzip => {
            let mut encoder =
                flate2::write::GzEncoder::new(&mut *output, flate2::Compression::new(GZIP_LEVEL));
            io::copy(input, &mut encoder)?;
            encoder.finish()?;
        }
    }
    output.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn choose(header: Option<&str>) -> Option<Coding> {
        AcceptEncoding::parse(header)
            .choose(&Coding::ALL)
            .map(|index| Coding::ALL[index])
    }

    #[test]
    fn qualities() {
        assert_eq!(parse_quality("1"), Some(1000));
        assert_eq!(parse_quality("1.000"), Some(1000));
        assert_eq!(parse_quality("0.5"), Some(500));
        assert_eq!(parse_quality("0.05"), Some(50));
        assert_eq!(parse_quality("0"), Some(0));
        assert_eq!(parse_quality("1.5"), None);
        assert_eq!(parse_quality("0.0001"), None);
        assert_eq!(parse_quality("2"), None);
        assert_eq!(parse_quality("x"), None);
    }

    #[test]
    fn negotiation() {
        assert_eq!(choose(None), None);
        assert_eq!(choose(Some("")), None);
        assert_eq!(
            choose(Some("gzip, deflate, br, zstd")),
            Some(Coding::Brotli)
        );
        assert_eq!(choose(Some("gzip")), Some(Coding::Gzip));
        assert_eq!(choose(Some("x-gzip")), Some(Coding::Gzip));
        assert_eq!(choose(Some("br;q=0.5, gzip;q=0.8")), Some(Coding::Gzip));
        assert_eq!(choose(Some("br;q=0.001")), Some(Coding::Brotli));
        assert_eq!(choose(Some("br;q=0, gzip;q=0")), None);
        assert_eq!(choose(Some("BR ; Q=1")), Some(Coding::Brotli));
        assert_eq!(choose(Some("*")), Some(Coding::Brotli));
        assert_eq!(choose(Some("*;q=0.5, br;q=0")), Some(Coding::Gzip));
        assert_eq!(choose(Some("deflate")), None);
        // Identity preferred over the codings.
        assert_eq!(choose(Some("identity, gzip;q=0.5")), None);
        // A malformed quality drops that member only.
        assert_eq!(choose(Some("br;q=high, gzip")), Some(Coding::Gzip));
    }

    #[test]
    fn identity_can_be_excluded() {
        assert_eq!(AcceptEncoding::parse(None).identity_quality(), 1);
        assert_eq!(
            AcceptEncoding::parse(Some("identity;q=0")).identity_quality(),
            0
        );
        assert_eq!(AcceptEncoding::parse(Some("*;q=0")).identity_quality(), 0);
        assert_eq!(
            AcceptEncoding::parse(Some("*;q=0, identity")).identity_quality(),
            1000
        );
    }

    #[test]
    fn ties_go_to_the_first_offer() {
        let offer = [Coding::Gzip, Coding::Brotli, Coding::Gzip];
        let accept = AcceptEncoding::parse(Some("gzip, br"));
        assert_eq!(accept.choose(&offer), Some(0));
        let accept = AcceptEncoding::parse(Some("gzip;q=0.5, br"));
        assert_eq!(accept.choose(&offer), Some(1));
    }

    #[test]
    fn compressible_types() {
        for yes in [
            "text/html; charset=utf-8",
            "text/css",
            "application/javascript",
            "application/json",
            "application/manifest+json",
            "application/wasm",
            "image/svg+xml",
            "font/ttf",
        ] {
            assert!(compressible(yes), "{yes}");
        }
        for no in [
            "image/png",
            "image/jpeg",
            "video/mp4",
            "application/zip",
            "application/gzip",
            "application/octet-stream",
            "font/woff2",
            "nonsense",
        ] {
            assert!(!compressible(no), "{no}");
        }
    }

    #[test]
    fn round_trips() {
        let text = "wasmhttpd compresses text. ".repeat(500);
        for coding in Coding::ALL {
            let mut packed = Vec::new();
            compress(coding, &mut text.as_bytes(), &mut packed).unwrap();
            assert!(packed.len() < text.len() / 10, "{coding:?}");
            let mut unpacked = Vec::new();
            match coding {
                Coding::Brotli => {
                    brotli::BrotliDecompress(&mut packed.as_slice(), &mut unpacked).unwrap();
                }
                Coding::Gzip => {
                    flate2::read::GzDecoder::new(packed.as_slice())
                        .read_to_end(&mut unpacked)
                        .unwrap();
                }
            }
            assert_eq!(unpacked, text.as_bytes(), "{coding:?}");
        }
    }
}
