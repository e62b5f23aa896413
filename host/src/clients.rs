//! The server's clients, told apart, and held to their share: who a
//! client is (its address, or the one a trusted proxy forwards), how often
//! it may call a route (`--rate`, `--burst`: governor's keyed GCRA, checked
//! before any guest runs), and how many connections it may hold open
//! (`--max-client-connections`).
//!
//! A client is its IPv4 address, or its IPv6 /64: one host's block, which
//! a client changes at will within, so that it cannot multiply its share
//! by its addresses. Behind a load balancer every connection comes from
//! the balancer: for a peer listed with `--trusted-proxy`, the client is
//! the address its `Forwarded` (or, without one, `X-Forwarded-For`) header
//! names, the rightmost one not itself a listed proxy (what the nearest
//! proxy saw, which a client cannot forge); from any other peer those
//! headers are ignored.
//!
//! Each route's table of clients is bounded (`--rate-clients`): entries
//! are dropped once their client is back at a full burst (swept every
//! second), and while the table is full the clients it has no room for
//! share one budget, so a flood of addresses costs memory up to the bound
//! and no more, and cannot pass the limit.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::StateStore;
use governor::state::keyed::{DashMapStateStore, ShrinkableKeyedStateStore};
use governor::{Quota, RateLimiter};
use http::HeaderMap;
use ipnet::IpNet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tracing::warn;

/// How often each table drops the clients back at a full burst.
pub const SWEEP: Duration = Duration::from_secs(1);
/// A client whose requests a limit refuses is logged at most once in this
/// long, with the count refused since.
const LOG_EVERY: Duration = Duration::from_secs(60);

/// Who a client is, for its limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Client {
    /// An IPv4 address.
    V4([u8; 4]),
    /// The first 64 bits of an IPv6 address (an IPv4-mapped one is its
    /// IPv4 address).
    V6([u8; 8]),
    /// The clients a full table has no room for, together.
    Overflow,
}

impl Client {
    /// The client at `addr`.
    pub fn of(addr: IpAddr) -> Client {
        match addr {
            IpAddr::V4(v4) => Client::V4(v4.octets()),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Client::V4(v4.octets()),
                None => {
                    let mut prefix = [0; 8];
                    prefix.copy_from_slice(&v6.octets()[..8]);
                    Client::V6(prefix)
                }
            },
        }
    }
}

impl fmt::Display for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Client::V4(octets) => write!(f, "{}", std::net::Ipv4Addr::from(*octets)),
            Client::V6(prefix) => {
                let mut octets = [0; 16];
                octets[..8].copy_from_slice(prefix);
                write!(f, "{}/64", std::net::Ipv6Addr::from(octets))
            }
            Client::Overflow => f.write_str("(clients past the table's bound)"),
        }
    }
}

/// The operator's proxies, whose forwarding headers name the client.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(pub Vec<IpNet>);

impl TrustedProxies {
    /// Parses `--trusted-proxy`: an address (`10.0.0.5`, `::1`) or a range
    /// (`10.0.0.0/8`, `fd00::/8`).
    pub fn parse(text: &str) -> Result<IpNet, String> {
        let text = text.trim();
        text.parse::<IpNet>()
            .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
            .map_err(|_| {
                format!("takes an address or a range such as 10.0.0.0/8 or fd00::/8, not {text:?}")
            })
    }

    fn trusts(&self, addr: IpAddr) -> bool {
        let addr = match addr {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
            v4 => v4,
        };
        self.0.iter().any(|net| net.contains(&addr))
    }

    /// The client of a request from `peer` with `headers`: `peer` itself,
    /// unless it is a listed proxy; then the rightmost address its
    /// `Forwarded` header (or else its `X-Forwarded-For`) names that is not
    /// a listed proxy, or `peer` when it names none that can be read.
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if self.0.is_empty() || !self.trusts(peer) {
            return peer;
        }
        let mut hops: Vec<&str> = Vec::new();
        let forwarded = headers.get_all(http::header::FORWARDED);
        if forwarded.iter().next().is_some() {
            for value in forwarded.iter().filter_map(|value| value.to_str().ok()) {
                for element in value.split(',') {
                    let hop = element.split(';').find_map(|pair| {
                        let (name, value) = pair.split_once('=')?;
                        name.trim().eq_ignore_ascii_case("for").then_some(value)
                    });
                    // An element without `for` says nothing of the hop.
                    hops.push(hop.unwrap_or(""));
                }
            }
        } else {
            for value in headers
                .get_all("x-forwarded-for")
                .iter()
                .filter_map(|value| value.to_str().ok())
            {
                hops.extend(value.split(','));
            }
        }
        for hop in hops.iter().rev() {
            match hop_address(hop) {
                Some(addr) if self.trusts(addr) => continue,
                Some(addr) => return addr,
                // An obfuscated or unknown hop, as `Forwarded` allows:
                // nothing to its left can be taken on its word.
                None => return peer,
            }
        }
        peer
    }
}

/// The address of one hop of a forwarding header: `192.0.2.43`,
/// `"[2001:db8::17]:4711"`, `192.0.2.43:80`.
fn hop_address(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim().trim_matches('"');
    if let Ok(addr) = hop.parse::<IpAddr>() {
        return Some(addr);
    }
    if let Some(rest) = hop.strip_prefix('[') {
        return rest.split(']').next()?.parse().ok();
    }
    hop.parse::<SocketAddr>().ok().map(|addr| addr.ip())
}

/// A route's requests a second (`N/s`) or a minute (`N/m`) per client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Requests in each period.
    pub count: NonZeroU32,
    /// The period.
    pub per: Duration,
}

impl Rate {
    /// Parses `10/s`, `600/m`.
    pub fn parse(text: &str) -> Result<Rate, String> {
        let wrong =
            || format!("takes requests a second or a minute, such as 10/s or 600/m, not {text:?}");
        let (count, per) = text.trim().split_once('/').ok_or_else(wrong)?;
        let count = count.trim().parse::<NonZeroU32>().map_err(|_| wrong())?;
        let per = match per.trim() {
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            _ => return Err(wrong()),
        };
        Ok(Rate { count, per })
    }

    /// The GCRA quota: one request each `per / count`, and `burst` at once
    /// (by default, the rate's count).
    fn quota(&self, burst: Option<u32>) -> Quota {
        let burst = burst.and_then(NonZeroU32::new).unwrap_or(self.count);
        Quota::with_period(self.per / self.count.get())
            .unwrap_or_else(|| Quota::per_second(self.count))
            .allow_burst(burst)
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let per = if self.per >= Duration::from_secs(60) {
            "m"
        } else {
            "s"
        };
        write!(f, "{}/{per}", self.count)
    }
}

/// One route's clients, keyed by [`Client`], at most `bound` of them.
struct Table {
    clients: DashMapStateStore<Client>,
    bound: usize,
}

impl StateStore for Table {
    type Key = Client;

    fn measure_and_replace<T, F, E>(&self, key: &Client, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let key = if self.clients.len() < self.bound || self.clients.contains_key(key) {
            key
        } else {
            &Client::Overflow
        };
        self.clients.measure_and_replace(key, f)
    }
}

impl ShrinkableKeyedStateStore<Client> for Table {
    fn retain_recent(&self, drop_below: Nanos) {
        ShrinkableKeyedStateStore::retain_recent(&self.clients, drop_below);
    }

    fn shrink_to_fit(&self) {
        self.clients.shrink_to_fit();
    }

    fn len(&self) -> usize {
        self.clients.len()
    }

    fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }
}

/// A keyed rate limiter over a bounded [`Table`].
type Limiter =
    RateLimiter<Client, Table, DefaultClock, NoOpMiddleware<<DefaultClock as Clock>::Instant>>;

fn limiter(quota: Quota, bound: usize) -> Limiter {
    let table = Table {
        clients: DashMapStateStore::default(),
        bound,
    };
    RateLimiter::new(quota, table, DefaultClock::default())
}

/// A route's rate limit.
pub struct RateLimit {
    rate: Rate,
    limiter: Limiter,
    /// One pass every [`LOG_EVERY`] per client, for its log line.
    log_gate: Limiter,
    /// Requests refused on the route since its last log line, for it.
    refused_since_logged: AtomicU64,
    clock: DefaultClock,
    refused: Counter,
    tracked: Gauge,
}

impl RateLimit {
    /// `rate` with `burst`, for at most `bound` clients at once, counting
    /// refusals in `refused` and the clients tracked in `tracked`.
    pub fn new(
        rate: Rate,
        burst: Option<u32>,
        bound: usize,
        refused: Counter,
        tracked: Gauge,
    ) -> RateLimit {
        let every = Quota::with_period(LOG_EVERY).expect("a period above zero");
        RateLimit {
            rate,
            limiter: limiter(rate.quota(burst), bound),
            log_gate: limiter(every, bound),
            refused_since_logged: AtomicU64::new(0),
            clock: DefaultClock::default(),
            refused,
            tracked,
        }
    }

    /// Admits one request of the client at `addr` to the route at `route`,
    /// or says how long until it may send again.
    pub fn check(&self, addr: IpAddr, route: &str) -> Result<(), Duration> {
        let client = Client::of(addr);
        let Err(not_until) = self.limiter.check_key(&client) else {
            return Ok(());
        };
        self.refused.inc();
        let refused = self.refused_since_logged.fetch_add(1, Ordering::Relaxed) + 1;
        if self.log_gate.check_key(&client).is_ok() {
            self.refused_since_logged.store(0, Ordering::Relaxed);
            warn!(
                client = %client,
                route = %route,
                rate = %self.rate,
                refused,
                "a client passed its rate limit; its requests get 429 until it slows down \
                 (--rate and --burst, or the route's rate= and burst=)"
            );
        }
        Err(not_until.wait_time_from(self.clock.now()))
    }

    /// Drops the clients back at a full burst, and updates the gauge.
    fn sweep(&self) {
        self.limiter.retain_recent();
        self.log_gate.retain_recent();
        self.tracked.set(self.limiter.len() as i64);
    }

    /// Clients tracked now.
    pub fn clients(&self) -> usize {
        self.limiter.len()
    }
}

/// Every route's rate limit, swept together.
#[derive(Default)]
pub struct RateLimits(Mutex<Vec<std::sync::Weak<RateLimit>>>);

impl RateLimits {
    /// Adds `limit` to the sweep.
    pub fn add(&self, limit: &Arc<RateLimit>) {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(Arc::downgrade(limit));
    }

    /// Sweeps every limit each [`SWEEP`], for as long as it runs.
    pub async fn sweep(self: Arc<Self>) {
        let mut ticks = tokio::time::interval(SWEEP);
        loop {
            ticks.tick().await;
            let limits: Vec<_> = self
                .0
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .iter()
                .filter_map(std::sync::Weak::upgrade)
                .collect();
            for limit in limits {
                limit.sweep();
            }
        }
    }
}

/// The connections each client holds open, held to
/// `--max-client-connections`; a listed proxy's are not.
pub struct Connections {
    open: Mutex<std::collections::HashMap<Client, usize>>,
    max: usize,
    proxies: TrustedProxies,
    /// One pass every [`LOG_EVERY`] per client, for its log line.
    log_gate: Limiter,
    refused: Counter,
}

impl Connections {
    /// At most `max` connections a client, but for `proxies`; refusals
    /// counted in `refused`.
    pub fn new(max: usize, proxies: TrustedProxies, refused: Counter) -> Connections {
        let every = Quota::with_period(LOG_EVERY).expect("a period above zero");
        Connections {
            open: Mutex::default(),
            max,
            proxies,
            // A client logged holds a connection, so the gate never has
            // more clients than connections are open.
            log_gate: limiter(every, usize::MAX),
            refused,
        }
    }

    /// A new connection from `peer`, held until the guard is dropped; or
    /// `None` when its client holds as many as it may.
    pub fn open(self: &Arc<Self>, peer: IpAddr) -> Option<ClientConnection> {
        if self.proxies.trusts(peer) {
            return Some(ClientConnection {
                connections: None,
                client: Client::of(peer),
            });
        }
        let client = Client::of(peer);
        {
            let mut open = self
                .open
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let held = open.entry(client).or_default();
            if *held < self.max {
                *held += 1;
                return Some(ClientConnection {
                    connections: Some(self.clone()),
                    client,
                });
            }
        }
        self.refused.inc();
        if self.log_gate.check_key(&client).is_ok() {
            warn!(
                client = %client,
                max = self.max,
                "a client holds as many connections as it may; a new one is refused \
                 (--max-client-connections)"
            );
        }
        None
    }

    fn close(&self, client: Client) {
        let mut open = self
            .open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let std::collections::hash_map::Entry::Occupied(mut held) = open.entry(client) {
            *held.get_mut() -= 1;
            if *held.get() == 0 {
                held.remove();
            }
        }
    }

    /// Clients with a connection open now.
    pub fn clients(&self) -> usize {
        self.open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .len()
    }
}

/// One client's open connection, counted until dropped.
pub struct ClientConnection {
    connections: Option<Arc<Connections>>,
    client: Client,
}

impl Drop for ClientConnection {
    fn drop(&mut self) {
        if let Some(connections) = &self.connections {
            connections.close(self.client);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        headers
    }

    #[test]
    fn a_client_is_its_address_or_its_ipv6_block() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(Client::of(a), Client::of(b));
        assert_ne!(Client::of(a), Client::of(c));
        assert_eq!(Client::of(a).to_string(), "2001:db8:1:2::/64");
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(Client::of(mapped), Client::of("192.0.2.7".parse().unwrap()));
    }

    #[test]
    fn only_a_listed_proxy_names_the_client() {
        let proxies = TrustedProxies(vec![
            TrustedProxies::parse("10.0.0.0/8").unwrap(),
            TrustedProxies::parse("::1").unwrap(),
        ]);
        let proxy: IpAddr = "10.1.2.3".parse().unwrap();
        let stranger: IpAddr = "198.51.100.1".parse().unwrap();
        let client =
            |peer, pairs: &[(&str, &str)]| proxies.client(peer, &headers(pairs)).to_string();
        let xff = [("x-forwarded-for", "203.0.113.9, 10.0.0.7")];
        // The rightmost hop that is not a listed proxy.
        assert_eq!(client(proxy, &xff), "203.0.113.9");
        // What a client forges to the left of it is passed over.
        let forged = [("x-forwarded-for", "1.2.3.4, 203.0.113.9")];
        assert_eq!(client(proxy, &forged), "203.0.113.9");
        // Headers from anyone else are ignored.
        assert_eq!(client(stranger, &xff), "198.51.100.1");
        // Forwarded wins over X-Forwarded-For, in any of its forms.
        for (value, expected) in [
            ("for=192.0.2.60;proto=http;by=203.0.113.43", "192.0.2.60"),
            ("for=\"[2001:db8:cafe::17]:4711\"", "2001:db8:cafe::17"),
            ("for=192.0.2.43, for=198.51.100.17", "198.51.100.17"),
            ("For=\"192.0.2.43:80\"", "192.0.2.43"),
        ] {
            let pairs = [("forwarded", value), xff[0]];
            assert_eq!(client(proxy, &pairs), expected, "{value}");
        }
        // A hop that cannot be read stops the walk at the proxy.
        assert_eq!(client(proxy, &[("forwarded", "for=unknown")]), "10.1.2.3");
        assert_eq!(client(proxy, &[("x-forwarded-for", "garbage")]), "10.1.2.3");
        // Nothing forwarded: the proxy itself.
        assert_eq!(client(proxy, &[]), "10.1.2.3");
        assert!(TrustedProxies::parse("10.0.0.0/33").is_err());
        assert!(TrustedProxies::parse("example.com").is_err());
    }

    #[test]
    fn rates_are_counts_a_second_or_a_minute() {
        let rate = Rate::parse("10/s").unwrap();
        assert_eq!((rate.count.get(), rate.per), (10, Duration::from_secs(1)));
        assert_eq!(Rate::parse(" 600/m ").unwrap().to_string(), "600/m");
        for bad in ["0/s", "10", "10/h", "-1/s", "x/s", ""] {
            assert!(Rate::parse(bad).is_err(), "{bad}");
        }
        let quota = rate.quota(None);
        assert_eq!(quota.burst_size().get(), 10);
        assert_eq!(quota.replenish_interval(), Duration::from_millis(100));
        assert_eq!(rate.quota(Some(25)).burst_size().get(), 25);
    }

    #[test]
    fn a_full_table_gives_the_clients_it_has_no_room_for_one_budget() {
        let limit = RateLimit::new(
            Rate::parse("1/m").unwrap(),
            None,
            100,
            Counter::default(),
            Gauge::default(),
        );
        for i in 0..1000u32 {
            let addr = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            let passed = limit.check(addr, "/").is_ok();
            // The first hundred get a place, and one request; of the rest,
            // sharing one budget, only the first passes.
            assert_eq!(passed, i <= 100, "client {i}");
        }
        assert_eq!(limit.clients(), 101);
    }
}
