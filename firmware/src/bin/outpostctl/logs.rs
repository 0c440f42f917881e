//! `outpostctl log`: the newest lines of the daemon's persistent log, then with `--follow`
//! every new line, by asking again every half second with the cursor of the last answer.
//! Polling keeps the daemon free of per-follower state: a follower that stops reading
//! costs it nothing, and one that follows across a daemon restart just reconnects (the
//! cursor names the file, which survives the restart).

use std::io::Write;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use firmware::admin::proto::{Command, LogCursor, LogPage, LogQuery, Reply};
use firmware::backup::schedule::parse_date;

use crate::cli::LogArgs;
use crate::failure::Failure;
use crate::link::Link;
use crate::render::text::sanitize;

/// How often `--follow` asks for new lines.
const POLL: Duration = Duration::from_millis(500);
/// Lines shown before following when `--lines` is not given.
const FOLLOW_LINES: usize = 10;

/// Runs `outpostctl log`.
pub fn log_cmd(socket: &Path, args: &LogArgs, json: bool) -> Result<(), Failure> {
    let since = args
        .since
        .as_deref()
        .map(|s| parse_since(s, now_ms()).map_err(Failure::Usage))
        .transpose()?;
    let level = args.level.map(|l| l.as_str().to_owned());
    // 0 asks for the daemon's default: every line since `since`, else the newest 100.
    let lines = args.lines.unwrap_or(if args.follow && since.is_none() {
        FOLLOW_LINES
    } else {
        0
    });
    let mut link = Link::connect(socket)?;
    let first = request(
        &mut link,
        LogQuery {
            since,
            level: level.clone(),
            lines,
            after: None,
        },
    )?;
    if json && !args.follow && !first.more {
        let text = serde_json::to_string_pretty(&first)
            .map_err(|e| Failure::Usage(format!("cannot encode the reply: {e}")))?;
        println!("{text}");
        return Ok(());
    }
    if print(&first, json).is_err() {
        return Ok(());
    }
    let mut cursor = first.cursor.unwrap_or(LogCursor {
        file: 0,
        offset: 0,
        head: 0,
    });
    let mut more = first.more;
    loop {
        if !more {
            if !args.follow {
                return Ok(());
            }
            std::thread::sleep(POLL);
        }
        let query = LogQuery {
            since: None,
            level: level.clone(),
            lines: 0,
            after: Some(cursor),
        };
        let page = match request(&mut link, query) {
            Ok(page) => page,
            Err(Failure::Unreachable(_)) => {
                // The daemon restarts (or is gone for now): keep trying, the cursor stays.
                match Link::connect(socket) {
                    Ok(l) => link = l,
                    Err(_) => std::thread::sleep(POLL),
                }
                more = false;
                continue;
            }
            Err(e) => return Err(e),
        };
        if page.missed && cursor.file != 0 {
            eprintln!("outpostctl: lines were rotated out of the log before they could be shown");
        }
        if print(&page, json).is_err() {
            // Standard output closed (a pager quit): done.
            return Ok(());
        }
        more = page.more;
        cursor = page.cursor.unwrap_or(cursor);
    }
}

fn request(link: &mut Link, query: LogQuery) -> Result<LogPage, Failure> {
    match link.request(&Command::Log(query))? {
        Reply::Log(page) => Ok(page),
        Reply::Error { message } => Err(Failure::Refused(sanitize(&message))),
        other => Err(Failure::unexpected(&other)),
    }
}

/// Writes the page's lines (as JSON strings with `json`), flushed at once for followers.
fn print(page: &LogPage, json: bool) -> std::io::Result<()> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for line in &page.lines {
        if json {
            let encoded = serde_json::to_string(line).map_err(std::io::Error::other)?;
            writeln!(out, "{encoded}")?;
        } else {
            writeln!(out, "{}", sanitize(line))?;
        }
    }
    out.flush()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// `--since`: an age (`90s`, `15m`, `2h`, `7d`) before `now`, a date or an RFC 3339 time.
fn parse_since(s: &str, now: u64) -> Result<u64, String> {
    let s = s.trim();
    let unit = |c: char| match c {
        's' => Some(1_000u64),
        'm' => Some(60_000),
        'h' => Some(3_600_000),
        'd' => Some(86_400_000),
        _ => None,
    };
    if let Some(last) = s.chars().last() {
        if let (Some(ms), Ok(n)) = (unit(last), s[..s.len() - last.len_utf8()].parse::<u64>()) {
            return Ok(now.saturating_sub(n.saturating_mul(ms)));
        }
    }
    parse_date(s)
        .map(|(t, _)| t)
        .map_err(|e| format!("--since: {e}, nor an age such as 30s, 15m, 2h or 7d"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE.md: unwrap is fine in tests
mod tests {
    use super::*;

    #[test]
    fn since_takes_ages_dates_and_times() {
        let now = 1_796_584_752_345;
        assert_eq!(parse_since("90s", now).unwrap(), now - 90_000);
        assert_eq!(parse_since("2h", now).unwrap(), now - 7_200_000);
        assert_eq!(parse_since("7d", now).unwrap(), now - 7 * 86_400_000);
        assert_eq!(parse_since("2026-12-06", now).unwrap(), 1_796_515_200_000);
        assert_eq!(
            parse_since("2026-12-06T19:19:12Z", now).unwrap(),
            1_796_584_752_000
        );
        assert!(parse_since("yesterday", now).is_err());
        assert!(parse_since("5w", now).is_err());
        assert!(parse_since("", now).is_err());
    }
}
