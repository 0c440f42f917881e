//! Blocklist feeds: the formats (parsed sans-IO, bounded) and the thread that reads feed
//! files and fetches HTTPS feeds, so the daemon's loop never waits for the disk or the
//! network.
//!
//! Formats, told apart by the first non-blank character:
//! - **lines**: one address or network per line; `#` or `;` starts a comment; blank lines
//!   are skipped; only the first word of a line counts (`203.0.113.9  # scanner`,
//!   `198.51.100.0/24 ; SBL123`).
//! - **JSON**: an array of strings (`["203.0.113.9", "2001:db8::/120"]`), or the document
//!   `outpostctl fw export` writes, `{"generated": ms, "bans": [{"addr": "…", "until": ms,
//!   "rule": "…", "reason": "…"}]}`; a ban whose `until` has passed is skipped.
//!
//! Networks are expanded into their addresses, because the kernel's ban sets and the
//! detector hold addresses (plain sets with a timeout per element; an interval set cannot
//! hold a host inside a banned network with another timeout): a network of at most 256
//! addresses (an IPv4 /24, an IPv6 /120) is expanded, a wider one is skipped, counted and
//! logged. Bounds: a feed is at most 1 MiB of text and yields at most 100,000 addresses;
//! the rest is counted as truncated. Nothing here panics on any input.
//!
//! An HTTPS feed is fetched with the daemon's one HTTP client (`crate::http`): Mozilla roots
//! plus the feed's optional `ca`, at most [`FETCH_TIMEOUT`] and [`MAX_FEED_BYTES`], three
//! redirects, status 200 only. The thread reads one feed at a time, so a slow server delays
//! the other feeds' reads by at most that timeout.

use std::collections::HashSet;
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};

use firewall::net::{canonical, Cidr};
use pbx_core::Millis;
use serde_json::Value;

/// Largest feed accepted, bytes.
pub const MAX_FEED_BYTES: usize = 1024 * 1024;
/// Longest an HTTPS feed fetch may take, connection to last byte.
pub const FETCH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// Most addresses taken from one feed (after expanding networks).
pub const MAX_FEED_ENTRIES: usize = 100_000;
/// Widest network expanded: 256 addresses.
pub const MAX_NETWORK_ADDRS: u32 = 256;
/// Problems quoted (with their line or item number) per parse; the rest are only counted.
const MAX_PROBLEMS: usize = 5;
/// Longest piece of a bad entry quoted in a problem.
const MAX_QUOTED: usize = 60;

/// Why a whole feed could not be used (single bad entries are only counted).
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    /// The file could not be opened or read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// An HTTPS feed could not be fetched (unreachable, certificate, status, too large).
    #[error("cannot fetch {url}: {reason}")]
    Fetch {
        /// The URL.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// Something other than a regular file (a FIFO would block the reader).
    #[error("{0} is not a regular file")]
    NotAFile(String),
    /// Over [`MAX_FEED_BYTES`].
    #[error("larger than 1 MiB ({MAX_FEED_BYTES} bytes), the most a feed may hold")]
    TooLarge,
    /// Not UTF-8.
    #[error("not UTF-8 text")]
    NotText,
    /// Starts like JSON but does not parse.
    #[error("not valid JSON: {0}")]
    Json(String),
    /// Valid JSON of another shape.
    #[error("a JSON feed must be an array of addresses or an object with a `bans` array")]
    Shape,
}

/// What one feed lists, and what was wrong with it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParsedFeed {
    /// The addresses (canonical, networks expanded), sorted, without duplicates.
    pub addrs: Vec<IpAddr>,
    /// Lines or JSON items that are not an address or network.
    pub invalid: usize,
    /// Networks wider than [`MAX_NETWORK_ADDRS`], skipped.
    pub too_wide: usize,
    /// Exported bans whose `until` has passed, skipped.
    pub expired: usize,
    /// Addresses past [`MAX_FEED_ENTRIES`], skipped.
    pub truncated: usize,
    /// The first few problems, with their line (lines) or item (JSON) number.
    pub problems: Vec<String>,
}

/// Parses a feed held in memory (the admin's `fw import`, or a file's bytes).
pub fn parse_bytes(bytes: &[u8], now: Millis) -> Result<ParsedFeed, FeedError> {
    if bytes.len() > MAX_FEED_BYTES {
        return Err(FeedError::TooLarge);
    }
    let text = std::str::from_utf8(bytes).map_err(|_| FeedError::NotText)?;
    parse(text, now)
}

/// Parses feed text of either format; `now` decides which exported bans have ended.
pub fn parse(text: &str, now: Millis) -> Result<ParsedFeed, FeedError> {
    if text.len() > MAX_FEED_BYTES {
        return Err(FeedError::TooLarge);
    }
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut c = Collector::default();
    match text.trim_start().chars().next() {
        Some('[' | '{') => parse_json(text, now, &mut c)?,
        _ => parse_lines(text, &mut c),
    }
    Ok(c.finish())
}

/// Where a feed comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeedSource {
    /// A file on the box.
    File(PathBuf),
    /// An HTTPS URL, with extra CA certificates to trust.
    Https {
        /// The URL.
        url: String,
        /// PEM file of extra roots.
        ca: Option<PathBuf>,
    },
}

impl FeedSource {
    /// The source of a `[[firewall.feeds]]` entry (already checked by the configuration).
    pub fn of(source: &str, ca: Option<&Path>) -> FeedSource {
        if source
            .get(..8)
            .is_some_and(|p| p.eq_ignore_ascii_case("https://"))
        {
            FeedSource::Https {
                url: source.to_owned(),
                ca: ca.map(Path::to_path_buf),
            }
        } else {
            FeedSource::File(PathBuf::from(source))
        }
    }

    /// Reads or fetches the feed and parses it (blocking: call it off the daemon's loop).
    pub fn read(&self, now: Millis) -> Result<ParsedFeed, FeedError> {
        match self {
            FeedSource::File(path) => read(path, now),
            FeedSource::Https { url, ca } => {
                let limit = u64::try_from(MAX_FEED_BYTES).unwrap_or(u64::MAX);
                let bytes = crate::http::get_bounded(url, ca.as_deref(), limit, FETCH_TIMEOUT)
                    .map_err(|e| match e {
                        crate::http::HttpError::TooLarge { .. } => FeedError::TooLarge,
                        other => FeedError::Fetch {
                            url: crate::http::shown(url),
                            reason: other.to_string(),
                        },
                    })?;
                parse_bytes(&bytes, now)
            }
        }
    }
}

/// Reads and parses the feed file at `path` (blocking: call it off the daemon's loop).
pub fn read(path: &Path, now: Millis) -> Result<ParsedFeed, FeedError> {
    let shown = || path.display().to_string();
    let io = |source| FeedError::Io {
        path: shown(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    if !meta.is_file() {
        return Err(FeedError::NotAFile(shown()));
    }
    if meta.len() > MAX_FEED_BYTES as u64 {
        return Err(FeedError::TooLarge);
    }
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_FEED_BYTES as u64 + 1).read_to_end(&mut bytes))
        .map_err(io)?;
    parse_bytes(&bytes, now)
}

fn parse_lines(text: &str, c: &mut Collector) {
    for (i, raw) in text.lines().enumerate() {
        let data = raw.split(['#', ';']).next().unwrap_or("");
        let Some(word) = data.split_whitespace().next() else {
            continue;
        };
        c.entry(word, || format!("line {}", i + 1));
    }
}

fn parse_json(text: &str, now: Millis, c: &mut Collector) -> Result<(), FeedError> {
    let doc: Value = serde_json::from_str(text).map_err(|e| FeedError::Json(e.to_string()))?;
    let items = match &doc {
        Value::Array(items) => items,
        Value::Object(o) => match o.get("bans") {
            Some(Value::Array(items)) => items,
            _ => return Err(FeedError::Shape),
        },
        _ => return Err(FeedError::Shape),
    };
    for (i, item) in items.iter().enumerate() {
        let at = || format!("item {}", i + 1);
        match item {
            Value::String(s) => c.entry(s, at),
            Value::Object(o) => match o.get("addr").and_then(Value::as_str) {
                Some(addr) => match o.get("until") {
                    None | Some(Value::Null) => c.entry(addr, at),
                    Some(until) => match until.as_u64() {
                        Some(until) if until <= now => c.out.expired += 1,
                        Some(_) => c.entry(addr, at),
                        None => c.problem(at(), "`until` is not a time in ms"),
                    },
                },
                None => c.problem(at(), "no `addr` string"),
            },
            _ => c.problem(at(), "neither an address string nor a ban object"),
        }
    }
    Ok(())
}

/// Accumulates addresses with their bounds and counts the problems.
#[derive(Debug, Default)]
struct Collector {
    seen: HashSet<IpAddr>,
    out: ParsedFeed,
}

impl Collector {
    fn entry(&mut self, text: &str, at: impl Fn() -> String) {
        let text = text.trim();
        let unbracketed = text
            .strip_prefix('[')
            .and_then(|t| t.strip_suffix(']'))
            .unwrap_or(text);
        let net = match unbracketed.parse::<Cidr>() {
            Ok(net) => net,
            Err(_) => {
                let quoted: String = text.chars().take(MAX_QUOTED).collect();
                self.problem(
                    at(),
                    &format!("`{}` is not an address or network", quoted.escape_default()),
                );
                return;
            }
        };
        let Some(count) = network_size(net) else {
            self.out.too_wide += 1;
            self.note(format!(
                "{}: {net} is wider than {MAX_NETWORK_ADDRS} addresses, skipped",
                at()
            ));
            return;
        };
        for i in 0..count {
            let Some(addr) = nth_address(net, i) else {
                break;
            };
            if self.seen.contains(&addr) {
                continue;
            }
            if self.seen.len() >= MAX_FEED_ENTRIES {
                self.out.truncated += 1;
                continue;
            }
            self.seen.insert(addr);
        }
    }

    fn problem(&mut self, at: String, what: &str) {
        self.out.invalid += 1;
        self.note(format!("{at}: {what}"));
    }

    fn note(&mut self, text: String) {
        if self.out.problems.len() < MAX_PROBLEMS {
            self.out.problems.push(text);
        }
    }

    fn finish(mut self) -> ParsedFeed {
        let mut addrs: Vec<IpAddr> = self.seen.into_iter().collect();
        addrs.sort_unstable();
        self.out.addrs = addrs;
        self.out
    }
}

/// Addresses in `net`, when it holds at most [`MAX_NETWORK_ADDRS`].
fn network_size(net: Cidr) -> Option<u32> {
    let bits: u32 = if net.network().is_ipv4() { 32 } else { 128 };
    let host_bits = bits.saturating_sub(u32::from(net.prefix()));
    let limit_bits = MAX_NETWORK_ADDRS.trailing_zeros();
    (host_bits <= limit_bits).then(|| 1u32 << host_bits)
}

/// The `i`-th address of `net` (0 = the network address).
fn nth_address(net: Cidr, i: u32) -> Option<IpAddr> {
    Some(canonical(match net.network() {
        IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a).checked_add(i)?)),
        IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a).checked_add(u128::from(i))?)),
    }))
}

// -----------------------------------------------------------------------------------------
// The reader thread
// -----------------------------------------------------------------------------------------

/// A read the daemon asked for.
#[derive(Debug)]
struct ReadJob {
    feed: usize,
    source: FeedSource,
    now: Millis,
}

/// A finished read: the feed's index and what came of it.
pub type ReadResult = (usize, Result<ParsedFeed, FeedError>);

/// The daemon's side of the thread that reads feed files (one read at a time; a feed has
/// at most one read in flight, so both queues stay within the number of feeds).
#[derive(Debug)]
pub struct FeedReader {
    jobs: SyncSender<ReadJob>,
    results: Receiver<ReadResult>,
}

impl FeedReader {
    /// Starts the thread for `feeds` feeds.
    pub fn spawn(feeds: usize) -> std::io::Result<FeedReader> {
        let depth = feeds.max(1);
        let (jobs, job_rx) = mpsc::sync_channel::<ReadJob>(depth);
        let (result_tx, results) = mpsc::sync_channel::<ReadResult>(depth);
        std::thread::Builder::new()
            .name("feed-reader".into())
            .spawn(move || {
                while let Ok(job) = job_rx.recv() {
                    let result = job.source.read(job.now);
                    if result_tx.send((job.feed, result)).is_err() {
                        break;
                    }
                }
            })?;
        Ok(FeedReader { jobs, results })
    }

    /// Asks for feed `feed` to be read from `source`; false if the thread cannot take it.
    pub fn request(&self, feed: usize, source: &FeedSource, now: Millis) -> bool {
        match self.jobs.try_send(ReadJob {
            feed,
            source: source.clone(),
            now,
        }) {
            Ok(()) => true,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => false,
        }
    }

    /// A finished read, if any.
    pub fn poll(&self) -> Option<ReadResult> {
        self.results.try_recv().ok()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE.md: unwrap is fine in tests
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn lines_with_comments_networks_and_bad_entries() {
        let text = "# blocklist\n\
                    203.0.113.9\n\
                    \n\
                    198.51.100.8/30 ; SBL1\n\
                    2001:db8::7   # scanner\n\
                    ::ffff:192.0.2.1\n\
                    not-an-address\n\
                    10.0.0.0/8\n\
                    999.1.1.1 extra words\n\
                    203.0.113.9\n";
        let f = parse(text, 0).unwrap();
        assert_eq!(
            f.addrs,
            [
                "192.0.2.1",
                "198.51.100.8",
                "198.51.100.9",
                "198.51.100.10",
                "198.51.100.11",
                "203.0.113.9",
                "2001:db8::7"
            ]
            .map(ip),
            "mapped IPv6 becomes IPv4, the /30 is expanded, duplicates go"
        );
        assert_eq!((f.invalid, f.too_wide, f.truncated), (2, 1, 0));
        assert_eq!(f.problems.len(), 3);
        assert!(
            f.problems[0].starts_with("line 7: `not-an-address`"),
            "{:?}",
            f.problems
        );
        assert!(
            f.problems[1].contains("10.0.0.0/8 is wider"),
            "{:?}",
            f.problems
        );
        assert!(f.problems[2].starts_with("line 9:"), "{:?}", f.problems);
    }

    #[test]
    fn json_arrays_and_our_export_document() {
        let f = parse(r#"["203.0.113.9", "2001:db8::/127", 7, "bogus"]"#, 0).unwrap();
        assert_eq!(
            f.addrs,
            ["203.0.113.9", "2001:db8::", "2001:db8::1"].map(ip)
        );
        assert_eq!(f.invalid, 2);

        let export = r#"{"generated": 1000, "bans": [
            {"addr": "203.0.113.9", "until": 5000, "rule": "scanner", "reason": "x"},
            {"addr": "203.0.113.10", "until": 1500, "rule": "flood", "reason": "y"},
            {"addr": "2001:db8::5", "rule": "manual"},
            {"until": 9000},
            {"addr": "203.0.113.11", "until": "soon"}
        ]}"#;
        let f = parse(export, 2000).unwrap();
        assert_eq!(f.addrs, ["203.0.113.9", "2001:db8::5"].map(ip));
        assert_eq!((f.expired, f.invalid), (1, 2), "{:?}", f.problems);

        assert!(matches!(parse("[1, 2", 0), Err(FeedError::Json(_))));
        assert!(matches!(
            parse(r#"{"addrs": []}"#, 0),
            Err(FeedError::Shape)
        ));
        assert_eq!(parse("", 0).unwrap(), ParsedFeed::default());
        assert_eq!(parse("\u{feff}[]", 0).unwrap(), ParsedFeed::default());
    }

    #[test]
    fn bounds_on_size_entries_and_network_width() {
        assert!(matches!(
            parse_bytes(&vec![b'#'; MAX_FEED_BYTES + 1], 0),
            Err(FeedError::TooLarge)
        ));
        assert!(matches!(
            parse_bytes(b"\xff\xfe1.2.3.4", 0),
            Err(FeedError::NotText)
        ));
        // 500 /24 networks would be 128,000 addresses: capped at 100,000.
        let text: String = (0..500)
            .map(|n| format!("10.{}.{}.0/24\n", n / 256, n % 256))
            .collect();
        let f = parse(&text, 0).unwrap();
        assert_eq!(f.addrs.len(), MAX_FEED_ENTRIES);
        assert_eq!(f.truncated, 500 * 256 - MAX_FEED_ENTRIES);
        // Widths: /24 and /120 are expanded, /23 and /119 are not.
        assert_eq!(network_size("10.0.0.0/24".parse().unwrap()), Some(256));
        assert_eq!(network_size("10.0.0.0/23".parse().unwrap()), None);
        assert_eq!(network_size("2001:db8::/120".parse().unwrap()), Some(256));
        assert_eq!(network_size("2001:db8::/119".parse().unwrap()), None);
        assert_eq!(network_size("::/0".parse().unwrap()), None);
        let top = parse(
            "255.255.255.255/32\nffff:ffff:ffff:ffff:ffff:ffff:ffff:ff00/120\n",
            0,
        )
        .unwrap();
        assert_eq!(
            top.addrs.len(),
            257,
            "the top of each space expands without overflow"
        );
    }

    #[test]
    fn files_are_read_off_the_loop_and_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("drop.txt");
        std::fs::write(&good, "203.0.113.9\n").unwrap();
        let big = dir.path().join("big.txt");
        std::fs::write(&big, vec![b'#'; MAX_FEED_BYTES + 10]).unwrap();
        let missing = dir.path().join("missing.txt");

        let reader = FeedReader::spawn(3).unwrap();
        assert!(reader.request(0, &FeedSource::File(good.clone()), 0));
        assert!(reader.request(1, &FeedSource::File(big.clone()), 0));
        assert!(reader.request(2, &FeedSource::File(missing.clone()), 0));
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut results = Vec::new();
        while results.len() < 3 && Instant::now() < deadline {
            match reader.poll() {
                Some(r) => results.push(r),
                None => std::thread::sleep(Duration::from_millis(5)),
            }
        }
        results.sort_by_key(|(i, _)| *i);
        assert_eq!(results.len(), 3);
        assert_eq!(results[0].1.as_ref().unwrap().addrs, [ip("203.0.113.9")]);
        assert!(matches!(results[1].1, Err(FeedError::TooLarge)));
        let err = results[2].1.as_ref().unwrap_err().to_string();
        assert!(err.contains("missing.txt"), "{err}");
        assert!(matches!(read(dir.path(), 0), Err(FeedError::NotAFile(_))));
    }
}
