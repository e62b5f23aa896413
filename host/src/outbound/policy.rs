//! Which outgoing requests a guest may make: the `--allow-outbound`
//! patterns, in the vocabulary of Spin's `allowed_outbound_hosts`, and the
//! addresses no wildcard reaches.
//!
//! A pattern is `SCHEME://HOST[:PORT]`:
//!
//! - SCHEME is `http`, `https` or `*`;
//! - HOST is a name (`api.example.com`), `*.example.com` (any subdomain),
//!   `*` (any host), an IPv4 literal (`10.0.0.5`), a bracketed IPv6 literal
//!   (`[fd00::5]`), or a CIDR range (`10.0.0.0/8`, `[fd00::/8]`);
//! - PORT is a number or `*`; left out, it is the scheme's (80, 443).
//!
//! An address that is not public ([`is_public`]: loopback, private,
//! link-local, this machine's own, ...) is reached only through an entry
//! that names it or a range that covers it: a name or a wildcard that
//! resolves to one is refused.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use crate::config::file::ConfigFile;
use crate::config::setting::Unit;

/// The schemes a guest may send to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// `http`.
    Http,
    /// `https`.
    Https,
}

impl Scheme {
    /// The port a URL without one means.
    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }
}

/// One `--allow-outbound` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    /// As written, for logs.
    text: String,
    /// `None` for `*`.
    scheme: Option<Scheme>,
    host: HostPattern,
    /// `None` for `*`.
    port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    /// `*`: any host with a public address.
    Any,
    /// `*.example.com`, kept as `.example.com`: its subdomains.
    Subdomains(String),
    /// `example.com`, lowercase.
    Name(String),
    /// An address or a range of them: `10.0.0.5`, `10.0.0.0/8`.
    Net(Net),
}

/// An address range: `prefix` bits of `addr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Net {
    addr: IpAddr,
    prefix: u8,
}

impl Net {
    fn contains(self, ip: IpAddr) -> bool {
        match (self.addr, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::str::FromStr for Pattern {
    type Err = String;

    fn from_str(text: &str) -> Result<Pattern, String> {
        let bad = |why: &str| {
            format!(
                "outbound pattern {text:?} {why}: write SCHEME://HOST[:PORT], such as \
                 https://api.example.com, http://*.internal:8080, https://*:* or http://10.0.0.0/8:*"
            )
        };
        let (scheme, rest) = text.split_once("://").ok_or_else(|| bad("has no scheme"))?;
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "http" => Some(Scheme::Http),
            "https" => Some(Scheme::Https),
            "*" => None,
            _ => return Err(bad("has a scheme other than http, https or *")),
        };
        if rest.contains(['/', '?', '#', '@']) && !is_cidr(rest) {
            return Err(bad("has more than a host and a port"));
        }
        let (host, port) = split_port(rest).ok_or_else(|| bad("has an unreadable host or port"))?;
        let port = match port {
            Some("*") => None,
            Some(port) => Some(
                port.parse::<u16>()
                    .ok()
                    .filter(|port| *port != 0)
                    .ok_or_else(|| bad("has a port that is not a number from 1 to 65535 or *"))?,
            ),
            None => match scheme {
                Some(scheme) => Some(scheme.default_port()),
                None => return Err(bad("has scheme * but no port: give a port or *")),
            },
        };
        let host = parse_host(host).ok_or_else(|| bad("has an unreadable host"))?;
        Ok(Pattern {
            text: text.to_owned(),
            scheme,
            host,
            port,
        })
    }
}

/// Whether `rest` (after the scheme) is a CIDR range with an optional
/// port, whose `/` is not a path.
fn is_cidr(rest: &str) -> bool {
    split_port(rest)
        .and_then(|(host, _)| parse_host(host))
        .is_some_and(|host| matches!(host, HostPattern::Net(_)))
        && !rest.contains(['?', '#', '@'])
}

/// `host[:port]`, where an IPv6 host is bracketed.
fn split_port(rest: &str) -> Option<(&str, Option<&str>)> {
    if let Some(inner) = rest.strip_prefix('[') {
        let (host, after) = inner.split_once(']')?;
        return match after {
            "" => Some((host, None)),
            after => Some((host, Some(after.strip_prefix(':')?))),
        };
    }
    match rest.rsplit_once(':') {
        Some((host, port)) => Some((host, Some(port))),
        None => Some((rest, None)),
    }
}

fn parse_host(host: &str) -> Option<HostPattern> {
    if host == "*" {
        return Some(HostPattern::Any);
    }
    if let Some((addr, prefix)) = host.split_once('/') {
        let addr: IpAddr = addr.parse().ok()?;
        let prefix: u8 = prefix.parse().ok()?;
        let bits = if addr.is_ipv4() { 32 } else { 128 };
        return (prefix <= bits).then_some(HostPattern::Net(Net {
            addr: canonical(addr),
            prefix,
        }));
    }
    if let Ok(addr) = host.parse::<IpAddr>() {
        let addr = canonical(addr);
        let prefix = if addr.is_ipv4() { 32 } else { 128 };
        return Some(HostPattern::Net(Net { addr, prefix }));
    }
    let (subdomains, name) = match host.strip_prefix("*.") {
        Some(name) => (true, name),
        None => (false, host),
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    let label = |label: &str| {
        !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if name.is_empty() || !name.split('.').all(label) {
        return None;
    }
    Some(if subdomains {
        HostPattern::Subdomains(format!(".{name}"))
    } else {
        HostPattern::Name(name)
    })
}

/// Where a request goes, as its URL says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// A name the host resolves, lowercase, without a trailing dot.
    Name(String),
    /// An address literal.
    Addr(IpAddr),
}

impl Host {
    /// The URL's host (an IPv6 literal in brackets or not).
    pub fn parse(host: &str) -> Host {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        match bare.parse::<IpAddr>() {
            Ok(addr) => Host::Addr(canonical(addr)),
            Err(_) => Host::Name(host.trim_end_matches('.').to_ascii_lowercase()),
        }
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
    /// The list is empty: nothing is allowed.
    NoList,
    /// No entry takes this scheme, host and port.
    NoEntry,
    /// The host is, or resolves to, an address that is not public, and no
    /// entry names it.
    NotPublic(IpAddr),
}

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Denial::NoList => {
                f.write_str("no --allow-outbound entry: outgoing requests are denied")
            }
            Denial::NoEntry => {
                f.write_str("no --allow-outbound entry takes this scheme, host and port")
            }
            Denial::NotPublic(addr) => write!(
                f,
                "{addr} is not a public address: only an --allow-outbound entry naming it (or a range covering it) reaches it"
            ),
        }
    }
}

/// The entries of one route (or of the server); empty denies everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList {
    patterns: Arc<[Pattern]>,
}

impl AllowList {
    /// A list of `patterns`.
    pub fn new(patterns: Vec<Pattern>) -> AllowList {
        AllowList {
            patterns: patterns.into(),
        }
    }

    /// The entries, in order.
    pub fn patterns(&self) -> &[Pattern] {
        &self.patterns
    }

    /// The entries that may take a request to `host` before its addresses
    /// are known: none means the request is refused without a lookup.
    pub fn candidates(
        &self,
        scheme: Scheme,
        host: &Host,
        port: u16,
    ) -> Result<Candidates<'_>, Denial> {
        if self.patterns.is_empty() {
            return Err(Denial::NoList);
        }
        let matching: Vec<&Pattern> = self
            .patterns
            .iter()
            .filter(|pattern| pattern.scheme.is_none_or(|s| s == scheme))
            .filter(|pattern| pattern.port.is_none_or(|p| p == port))
            .filter(|pattern| match (&pattern.host, host) {
                (HostPattern::Any, _) => true,
                (HostPattern::Net(_), Host::Name(_)) => true,
                (HostPattern::Net(net), Host::Addr(addr)) => net.contains(*addr),
                (HostPattern::Name(name), Host::Name(host)) => name == host,
                (HostPattern::Subdomains(suffix), Host::Name(host)) => {
                    host.len() > suffix.len() && host.ends_with(suffix.as_str())
                }
                (HostPattern::Name(_) | HostPattern::Subdomains(_), Host::Addr(_)) => false,
            })
            .collect();
        if matching.is_empty() {
            return Err(Denial::NoEntry);
        }
        Ok(Candidates {
            host: host.clone(),
            matching,
        })
    }
}

/// The entries that may take one request, before its addresses are
/// checked.
#[derive(Debug)]
pub struct Candidates<'a> {
    host: Host,
    matching: Vec<&'a Pattern>,
}

impl Candidates<'_> {
    /// The entry that lets the request connect to `addr`, one of its host's
    /// addresses: an entry naming the address (or a range covering it)
    /// always; a name or a wildcard only for a public address.
    pub fn admit(&self, addr: IpAddr, public: bool) -> Result<&Pattern, Denial> {
        let addr = canonical(addr);
        let by_address = self.matching.iter().find(|pattern| match pattern.host {
            HostPattern::Net(net) => net.contains(addr),
            _ => false,
        });
        if let Some(pattern) = by_address {
            return Ok(pattern);
        }
        let by_name = self
            .matching
            .iter()
            .find(|pattern| match (&pattern.host, &self.host) {
                (HostPattern::Net(_), _) => false,
                // A literal's wildcard entry; a name's entry matched already.
                (_, Host::Addr(_)) => matches!(pattern.host, HostPattern::Any),
                (_, Host::Name(_)) => true,
            });
        match by_name {
            Some(pattern) if public => Ok(pattern),
            Some(_) => Err(Denial::NotPublic(addr)),
            None if !public => Err(Denial::NotPublic(addr)),
            None => Err(Denial::NoEntry),
        }
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is.
pub fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// Whether `addr` is on the public internet as far as its number says:
/// not loopback, private (RFC 1918, shared 100.64/10, ULA), link-local
/// (the cloud metadata service at 169.254.169.254 and `fd00:ec2::254`),
/// unspecified, multicast, broadcast, reserved or documentation ranges,
/// nor an IPv4-mapped or NAT64 form of one. The machine's own public
/// addresses are checked apart ([`super::is_own`]).
pub fn is_public(addr: IpAddr) -> bool {
    match canonical(addr) {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(v4: Ipv4Addr) -> bool {
    let [a, b, c, _] = v4.octets();
    !(v4.is_loopback()
        || v4.is_private()
        || v4.is_link_local()
        || v4.is_unspecified()
        || v4.is_multicast()
        || v4.is_broadcast()
        || v4.is_documentation()
        || a == 0
        || a >= 240
        // Shared address space (carrier-grade NAT), RFC 6598.
        || (a == 100 && (64..128).contains(&b))
        // IETF protocol assignments, RFC 6890.
        || (a == 192 && b == 0 && c == 0)
        // Benchmarking, RFC 2544.
        || (a == 198 && (18..20).contains(&b)))
}

fn is_public_v6(v6: Ipv6Addr) -> bool {
    let segments = v6.segments();
    // NAT64 (64:ff9b::/96) carries an IPv4 address in its last 32 bits.
    if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        let low = u128::from(v6) as u32;
        return is_public_v4(Ipv4Addr::from(low));
    }
    !(v6.is_loopback()
        || v6.is_unspecified()
        || v6.is_multicast()
        // Unique local, fc00::/7 (fd00:ec2::254 is one).
        || (segments[0] & 0xfe00) == 0xfc00
        // Link-local, fe80::/10, and the old site-local, fec0::/10.
        || (segments[0] & 0xffc0) == 0xfe80
        || (segments[0] & 0xffc0) == 0xfec0
        // IPv4-compatible (deprecated) ::a.b.c.d.
        || segments[..6] == [0; 6]
        // Documentation, 2001:db8::/32.
        || (segments[0] == 0x2001 && segments[1] == 0xdb8))
}

/// The `--allow-outbound` setting: patterns, repeated or separated by
/// spaces; an array of strings in the configuration file.
pub struct Patterns;

impl Unit for Patterns {
    type Value = AllowList;
    const VALUE_NAME: &'static str = "PATTERN";

    fn parse(text: &str) -> Result<AllowList, String> {
        text.split_whitespace()
            .map(str::parse)
            .collect::<Result<Vec<Pattern>, String>>()
            .map(AllowList::new)
    }

    fn from_file(value: &toml::Value, _: &ConfigFile) -> Result<AllowList, String> {
        match value {
            toml::Value::Array(items) => items
                .iter()
                .map(|item| match item {
                    toml::Value::String(text) => text.parse(),
                    other => Err(format!("expected patterns in strings, not {other}")),
                })
                .collect::<Result<Vec<Pattern>, String>>()
                .map(AllowList::new),
            toml::Value::String(text) => Self::parse(text),
            other => Err(format!("expected an array of patterns, not {other}")),
        }
    }

    fn show(value: &AllowList) -> Option<String> {
        (!value.patterns.is_empty()).then(|| {
            let texts: Vec<&str> = value.patterns.iter().map(|p| p.text.as_str()).collect();
            texts.join(" ")
        })
    }

    fn arg(arg: clap::Arg) -> clap::Arg {
        arg.value_name(Self::VALUE_NAME)
            .action(clap::ArgAction::Append)
            .value_parser(|text: &str| Self::parse(text))
    }

    fn given(matches: &clap::ArgMatches, id: &str) -> Option<AllowList> {
        let lists = matches.get_many::<AllowList>(id)?;
        lists.cloned().reduce(Self::combine)
    }

    fn combine(earlier: AllowList, later: AllowList) -> AllowList {
        let mut patterns = earlier.patterns.to_vec();
        patterns.extend_from_slice(&later.patterns);
        AllowList::new(patterns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(patterns: &[&str]) -> AllowList {
        AllowList::new(patterns.iter().map(|p| p.parse().unwrap()).collect())
    }

    fn allows(list: &AllowList, scheme: Scheme, host: &str, port: u16, addr: &str) -> bool {
        let addr: IpAddr = addr.parse().unwrap();
        list.candidates(scheme, &Host::parse(host), port)
            .and_then(|c| c.admit(addr, is_public(addr)).map(|_| ()))
            .is_ok()
    }

    #[test]
    fn patterns_parse_as_spin_writes_them() {
        for good in [
            "https://api.example.com",
            "http://api.example.com:8080",
            "https://*.example.com",
            "*://example.com:*",
            "http://*:*",
            "https://*:*",
            "http://10.0.0.5:9000",
            "http://[fd00::5]:80",
            "http://10.0.0.0/8:*",
            "http://[fd00::/8]:*",
            "http://127.0.0.1",
        ] {
            assert!(good.parse::<Pattern>().is_ok(), "{good}");
        }
        for bad in [
            "",
            "example.com",
            "ftp://example.com",
            "*://example.com",
            "http://",
            "http://exa mple.com",
            "http://example.com:0",
            "http://example.com:99999",
            "http://example.com/path",
            "http://user@example.com",
            "http://10.0.0.0/33",
            "http://[::1",
            "http://*.*.com",
        ] {
            let error = bad.parse::<Pattern>().unwrap_err();
            assert!(error.contains("SCHEME://HOST[:PORT]"), "{bad}: {error}");
        }
    }

    #[test]
    fn an_empty_list_denies_before_any_lookup() {
        let empty = AllowList::default();
        let denied = empty.candidates(Scheme::Https, &Host::parse("example.com"), 443);
        assert_eq!(denied.unwrap_err(), Denial::NoList);
    }

    #[test]
    fn an_exact_entry_takes_its_scheme_host_and_port_only() {
        let list = list(&["https://api.example.com"]);
        assert!(allows(
            &list,
            Scheme::Https,
            "api.example.com",
            443,
            "93.184.215.14"
        ));
        assert!(allows(
            &list,
            Scheme::Https,
            "API.Example.com.",
            443,
            "93.184.215.14"
        ));
        assert!(!allows(
            &list,
            Scheme::Http,
            "api.example.com",
            80,
            "93.184.215.14"
        ));
        assert!(!allows(
            &list,
            Scheme::Https,
            "api.example.com",
            8443,
            "93.184.215.14"
        ));
        assert!(!allows(
            &list,
            Scheme::Https,
            "www.example.com",
            443,
            "93.184.215.14"
        ));
        let denied = list.candidates(Scheme::Https, &Host::parse("other.org"), 443);
        assert_eq!(denied.unwrap_err(), Denial::NoEntry);
    }

    #[test]
    fn subdomain_wildcards_take_subdomains_only() {
        let list = list(&["https://*.example.com"]);
        assert!(allows(
            &list,
            Scheme::Https,
            "a.example.com",
            443,
            "93.184.215.14"
        ));
        assert!(allows(
            &list,
            Scheme::Https,
            "a.b.example.com",
            443,
            "93.184.215.14"
        ));
        assert!(!allows(
            &list,
            Scheme::Https,
            "example.com",
            443,
            "93.184.215.14"
        ));
        assert!(!allows(
            &list,
            Scheme::Https,
            "badexample.com",
            443,
            "93.184.215.14"
        ));
    }

    #[test]
    fn no_wildcard_or_name_reaches_a_private_address() {
        let list = list(&["http://*:*", "http://*.internal:*", "http://localhost:*"]);
        for (host, addr) in [
            ("localhost", "127.0.0.1"),
            ("localhost", "::1"),
            ("db.internal", "10.1.2.3"),
            ("169.254.169.254", "169.254.169.254"),
            ("[fd00:ec2::254]", "fd00:ec2::254"),
            ("127.0.0.1", "127.0.0.1"),
            ("[::ffff:127.0.0.1]", "::ffff:127.0.0.1"),
            ("0.0.0.0", "0.0.0.0"),
            ("x.internal", "192.168.1.1"),
            ("x.internal", "172.16.0.1"),
            ("x.internal", "100.64.0.1"),
            ("x.internal", "fe80::1"),
            ("x.internal", "224.0.0.1"),
            ("x.internal", "64:ff9b::a00:1"),
        ] {
            assert!(
                !allows(&list, Scheme::Http, host, 80, addr),
                "{host} {addr}"
            );
        }
        assert!(allows(
            &list,
            Scheme::Http,
            "example.com",
            80,
            "93.184.215.14"
        ));
        assert!(allows(
            &list,
            Scheme::Http,
            "[2606:2800::1]",
            80,
            "2606:2800::1"
        ));
    }

    #[test]
    fn an_entry_naming_an_address_or_a_range_reaches_it() {
        let list = list(&[
            "http://127.0.0.1:9000",
            "http://10.0.0.0/8:*",
            "http://[fd00::/8]:*",
        ]);
        assert!(allows(&list, Scheme::Http, "127.0.0.1", 9000, "127.0.0.1"));
        assert!(allows(
            &list,
            Scheme::Http,
            "[::ffff:127.0.0.1]",
            9000,
            "::ffff:127.0.0.1"
        ));
        // A name that resolves into the entry's address.
        assert!(allows(&list, Scheme::Http, "localhost", 9000, "127.0.0.1"));
        assert!(!allows(&list, Scheme::Http, "localhost", 9000, "::1"));
        assert!(!allows(&list, Scheme::Http, "127.0.0.1", 9001, "127.0.0.1"));
        assert!(!allows(
            &list,
            Scheme::Https,
            "127.0.0.1",
            9000,
            "127.0.0.1"
        ));
        assert!(allows(&list, Scheme::Http, "10.9.8.7", 5432, "10.9.8.7"));
        assert!(allows(&list, Scheme::Http, "db.corp", 5432, "10.9.8.7"));
        assert!(allows(&list, Scheme::Http, "[fd12::1]", 80, "fd12::1"));
        assert!(!allows(&list, Scheme::Http, "11.0.0.1", 80, "11.0.0.1"));
        // A name matched by no name entry, resolving to a public address
        // outside every range.
        assert!(!allows(
            &list,
            Scheme::Http,
            "example.com",
            80,
            "93.184.215.14"
        ));
    }

    #[test]
    fn settings_read_patterns_from_every_source() {
        let parsed = Patterns::parse("https://a.example.com http://10.0.0.0/8:*").unwrap();
        assert_eq!(parsed.patterns().len(), 2);
        assert!(Patterns::parse("https://a.example.com nonsense").is_err());
        assert_eq!(Patterns::parse("").unwrap(), AllowList::default());
    }
}
