//! The persistent log on `/data`: `<data_dir>/log/outpostd.log`, rotated to
//! `outpostd.log.1` .. `outpostd.log.<files-1>` when it would pass its size, so the log
//! never takes more than `files × file_kib`.
//!
//! Lines are queued (at most [`QUEUE_BYTES`]; the oldest are dropped and counted when the
//! disk cannot keep up) and appended by one thread, a batch per write, without fsync: a
//! power cut loses what the kernel had not yet written back (normally up to its dirty
//! writeback interval, about 30 s) and the lines still queued; a clean stop writes the queue
//! out first ([`FileLog::drain`]).
//!
//! Each line is `TIMESTAMP LEVEL TARGET: MESSAGE`, the timestamp in RFC 3339 UTC with
//! milliseconds, so a time filter compares text; the reader ([`read`]) serves `outpostctl
//! log` with bounded memory whatever the files hold.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::api::{LogCursor, LogPage, LogQuery, MAX_PAGE_BYTES, MAX_PAGE_LINES};
use super::rfc5424::timestamp;

/// The current file's name in the log directory.
pub const FILE_NAME: &str = "outpostd.log";
/// Bytes of lines waiting for the writer at most (1 MiB).
pub const QUEUE_BYTES: usize = 1024 * 1024;
/// Longest line written (longer ones are cut at a character boundary).
pub const MAX_LINE: usize = 4096;
/// Lines a `log` request returns when it names no number.
pub const DEFAULT_LINES: usize = 100;

/// The writer's side, shared by the logging layer and its thread.
#[derive(Debug)]
pub struct FileLog {
    dir: PathBuf,
    max_bytes: u64,
    files: u32,
    queue: Mutex<Queue>,
    ready: Condvar,
    idle: Condvar,
    dropped: AtomicU64,
}

#[derive(Debug, Default)]
struct Queue {
    lines: VecDeque<String>,
    bytes: usize,
    /// The writer holds a batch it has not finished writing.
    busy: bool,
}

impl FileLog {
    /// Creates the directory (mode 0700) and starts the writer thread.
    pub fn start(dir: PathBuf, max_bytes: u64, files: u32) -> io::Result<Arc<FileLog>> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)?;
        let log = Arc::new(FileLog {
            dir,
            max_bytes: max_bytes.max(1024),
            files: files.max(1),
            queue: Mutex::new(Queue::default()),
            ready: Condvar::new(),
            idle: Condvar::new(),
            dropped: AtomicU64::new(0),
        });
        let file = log.open_current()?;
        let worker = Arc::clone(&log);
        std::thread::Builder::new()
            .name("log-file".to_owned())
            .spawn(move || worker.run(file))?;
        Ok(log)
    }

    /// The current file's path.
    pub fn path(&self) -> PathBuf {
        self.dir.join(FILE_NAME)
    }

    /// Lines dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Queues one line (without its newline); never blocks beyond a short lock.
    pub fn push(&self, mut line: String) {
        cut(&mut line, MAX_LINE - 1);
        line.push('\n');
        let mut q = lock(&self.queue);
        while q.bytes + line.len() > QUEUE_BYTES {
            let Some(old) = q.lines.pop_front() else {
                break;
            };
            q.bytes -= old.len();
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        q.bytes += line.len();
        q.lines.push_back(line);
        drop(q);
        self.ready.notify_one();
    }

    /// Waits (at most `timeout`) until every queued line is written: at a clean stop.
    pub fn drain(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut q = lock(&self.queue);
        while !q.lines.is_empty() || q.busy {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            q = self
                .idle
                .wait_timeout(q, left)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
    }

    fn open_current(&self) -> io::Result<File> {
        OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(self.path())
    }

    fn rotated(&self, n: u32) -> PathBuf {
        self.dir.join(format!("{FILE_NAME}.{n}"))
    }

    /// `outpostd.log` becomes `.1`, `.1` becomes `.2`, ...; the oldest goes.
    fn rotate(&self) -> io::Result<File> {
        if self.files > 1 {
            let _ = std::fs::remove_file(self.rotated(self.files - 1));
            for n in (1..self.files - 1).rev() {
                let _ = std::fs::rename(self.rotated(n), self.rotated(n + 1));
            }
            std::fs::rename(self.path(), self.rotated(1))?;
        } else {
            std::fs::remove_file(self.path())?;
        }
        self.open_current()
    }

    fn run(self: Arc<Self>, mut file: File) {
        let mut size = file.metadata().map(|m| m.len()).unwrap_or(0);
        let mut failing = false;
        loop {
            let batch: Vec<String> = {
                let mut q = lock(&self.queue);
                q.busy = false;
                self.idle.notify_all();
                while q.lines.is_empty() {
                    q = self
                        .ready
                        .wait(q)
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                }
                q.busy = true;
                q.bytes = 0;
                q.lines.drain(..).collect()
            };
            let mut buf = Vec::with_capacity(batch.iter().map(String::len).sum());
            let mut result = Ok(());
            for line in &batch {
                let len = line.len() as u64;
                let filled = size + buf.len() as u64;
                if filled > 0 && filled + len > self.max_bytes {
                    result = file.write_all(&buf).and_then(|()| {
                        file = self.rotate()?;
                        Ok(())
                    });
                    buf.clear();
                    size = 0;
                    if result.is_err() {
                        break;
                    }
                }
                buf.extend_from_slice(line.as_bytes());
            }
            if result.is_ok() {
                result = file.write_all(&buf);
                size += buf.len() as u64;
            }
            match result {
                Ok(()) => {
                    if failing {
                        failing = false;
                        tracing::info!(path = %self.path().display(), "log file writable again");
                    }
                }
                Err(err) => {
                    self.dropped
                        .fetch_add(batch.len() as u64, Ordering::Relaxed);
                    // Said once per outage: the warning is itself a line for this file.
                    if !failing {
                        failing = true;
                        tracing::warn!(path = %self.path().display(), %err, "cannot write the log file; its lines are dropped");
                    }
                    if let Ok(f) = self.open_current() {
                        size = f.metadata().map(|m| m.len()).unwrap_or(0);
                        file = f;
                    }
                }
            }
        }
    }
}

/// One line as the persistent log keeps it.
pub fn line(ms: u64, level: &tracing::Level, target: &str, text: &str) -> String {
    let mut out = format!("{} {} {}: ", timestamp(ms), level, target);
    for c in text.chars() {
        match c {
            // One line per event: a newline inside the text must not forge a line.
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() && c != '\t' => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

/// The files of the log in `dir`, oldest first (those that exist).
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = (1..=super::config::FILES_MAX)
        .rev()
        .map(|n| dir.join(format!("{FILE_NAME}.{n}")))
        .filter(|p| p.exists())
        .collect();
    let current = dir.join(FILE_NAME);
    if current.exists() {
        out.push(current);
    }
    out
}

/// The rank of a level name (error 1 .. trace 5), for "at least this severe".
fn rank(level: &str) -> Option<u8> {
    match level.to_ascii_lowercase().as_str() {
        "error" => Some(1),
        "warn" => Some(2),
        "info" => Some(3),
        "debug" => Some(4),
        "trace" => Some(5),
        _ => None,
    }
}

/// A line's filter: the time from its first field, the level from its second.
struct Filter {
    since: Option<String>,
    max_rank: u8,
}

impl Filter {
    fn new(q: &LogQuery) -> Result<Filter, String> {
        let max_rank = match &q.level {
            None => 5,
            Some(l) => rank(l).ok_or_else(|| {
                format!("unknown level {l:?}: use error, warn, info, debug or trace")
            })?,
        };
        Ok(Filter {
            since: q.since.map(timestamp),
            max_rank,
        })
    }

    fn keeps(&self, line: &str) -> bool {
        let mut fields = line.splitn(3, ' ');
        let (Some(ts), Some(level)) = (fields.next(), fields.next()) else {
            return false;
        };
        // Fixed-width UTC timestamps order as text.
        if self.since.as_deref().is_some_and(|s| ts < s) {
            return false;
        }
        rank(level).is_some_and(|r| r <= self.max_rank)
    }
}

/// Answers a `log` request from the files in `dir`.
pub fn read(dir: &Path, q: &LogQuery) -> Result<LogPage, String> {
    let filter = Filter::new(q)?;
    let files = files(dir);
    match (q.after, q.since, q.lines) {
        (Some(cursor), _, _) => Ok(follow(&files, cursor, &filter)),
        // Every line since a time: from the oldest file on, a page at a time.
        (None, Some(_), 0) => {
            let Some(oldest) = files.first().and_then(|p| File::open(p).ok()) else {
                return Ok(LogPage::default());
            };
            let Ok(meta) = oldest.metadata() else {
                return Ok(LogPage::default());
            };
            let start = LogCursor {
                file: meta.ino(),
                offset: 0,
                head: head_hash(&mut { oldest }, 0),
            };
            Ok(follow(&files, start, &filter))
        }
        (None, _, _) => Ok(tail(&files, q, &filter)),
    }
}

/// The newest `q.lines` matching lines, and the cursor at the current file's end.
fn tail(files: &[PathBuf], q: &LogQuery, filter: &Filter) -> LogPage {
    let want = match q.lines {
        0 => DEFAULT_LINES,
        n => n.min(MAX_PAGE_LINES),
    };
    let mut kept: VecDeque<String> = VecDeque::new();
    let mut bytes = 0usize;
    let mut cursor = None;
    for path in files {
        let Ok(file) = File::open(path) else { continue };
        let Ok(meta) = file.metadata() else { continue };
        // Read to the length seen now: what is appended meanwhile comes with the cursor.
        let len = meta.len();
        let mut file = file;
        cursor = Some(LogCursor {
            file: meta.ino(),
            offset: len,
            head: head_hash(&mut file, len),
        });
        for_lines(file.take(len), |line| {
            if filter.keeps(line) {
                bytes += line.len();
                kept.push_back(line.to_owned());
                while kept.len() > want || bytes > MAX_PAGE_BYTES {
                    let Some(old) = kept.pop_front() else { break };
                    bytes -= old.len();
                }
            }
        });
    }
    LogPage {
        lines: kept.into(),
        cursor,
        missed: false,
        more: false,
    }
}

/// Every matching complete line after `cursor`, as far as one page holds.
fn follow(files: &[PathBuf], cursor: LogCursor, filter: &Filter) -> LogPage {
    let mut page = LogPage {
        cursor: Some(cursor),
        ..LogPage::default()
    };
    let mut opened: Vec<(File, u64, u64)> = files
        .iter()
        .filter_map(|p| {
            let f = File::open(p).ok()?;
            let m = f.metadata().ok()?;
            Some((f, m.ino(), m.len()))
        })
        .collect();
    let found = opened.iter_mut().position(|(f, ino, len)| {
        *ino == cursor.file && *len >= cursor.offset && head_hash(f, cursor.offset) == cursor.head
    });
    let start = match found {
        Some(i) => (i, cursor.offset),
        // Its file rotated away (or shrank): start at the oldest line there is.
        _ => {
            page.missed = true;
            (0, 0)
        }
    };
    let mut bytes = 0usize;
    for (i, (mut file, ino, len)) in opened.into_iter().enumerate().skip(start.0) {
        let from = if i == start.0 { start.1 } else { 0 };
        if file.seek(SeekFrom::Start(from)).is_err() {
            break;
        }
        let mut offset = from;
        let mut full = false;
        let mut reader = BufReader::new(file.take(len - from));
        let mut buf = Vec::new();
        loop {
            buf.clear();
            let limit = u64::try_from(MAX_LINE * 2).unwrap_or(u64::MAX);
            let n = match (&mut reader).take(limit).read_until(b'\n', &mut buf) {
                Ok(n) => n,
                Err(_) => break,
            };
            if n == 0 || buf.last() != Some(&b'\n') {
                // End, or a line the writer has not finished: it comes next time.
                break;
            }
            if page.lines.len() >= MAX_PAGE_LINES || bytes + n > MAX_PAGE_BYTES {
                full = true;
                break;
            }
            offset += n as u64;
            let line = String::from_utf8_lossy(&buf[..n - 1]);
            if filter.keeps(&line) {
                bytes += n;
                page.lines.push(line.into_owned());
            }
        }
        let head = head_hash(&mut reader.into_inner().into_inner(), offset);
        page.cursor = Some(LogCursor {
            file: ino,
            offset,
            head,
        });
        if full {
            page.more = true;
            break;
        }
    }
    page
}

/// FNV-1a of the first `min(len, 64)` bytes of `file` (its position is left at the start).
fn head_hash(file: &mut File, len: u64) -> u64 {
    let mut buf = [0u8; 64];
    let n = usize::try_from(len.min(64)).unwrap_or(64);
    let ok = file.seek(SeekFrom::Start(0)).is_ok() && file.read_exact(&mut buf[..n]).is_ok();
    let _ = file.seek(SeekFrom::Start(0));
    if !ok {
        return 0;
    }
    buf[..n].iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Calls `each` with every complete line of `input` (invalid UTF-8 replaced; a line longer
/// than twice [`MAX_LINE`], which the writer never makes, is skipped).
fn for_lines(input: impl Read, mut each: impl FnMut(&str)) {
    let mut reader = BufReader::new(input);
    let mut buf = Vec::new();
    let limit = u64::try_from(MAX_LINE * 2).unwrap_or(u64::MAX);
    loop {
        buf.clear();
        match (&mut reader).take(limit).read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if buf.last() == Some(&b'\n') {
            buf.pop();
            each(&String::from_utf8_lossy(&buf));
        } else if buf.len() as u64 >= limit {
            // Skip the rest of the overlong line.
            let mut rest = Vec::new();
            if reader.read_until(b'\n', &mut rest).is_err() {
                return;
            }
        }
    }
}

fn cut(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere while holding the lock leaves plain data: go on with it.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE.md: unwrap is fine in tests
mod tests {
    use super::*;

    fn at(sec: u64) -> u64 {
        1_796_584_752_000 + sec * 1000
    }

    #[test]
    fn rotation_keeps_the_cap_and_a_cursor_follows_across_it() {
        let dir = tempfile::tempdir().unwrap();
        let log = FileLog::start(dir.path().join("log"), 4096, 3).unwrap();
        log.push(line(at(0), &tracing::Level::INFO, "t", "first"));
        log.drain(Duration::from_secs(5));
        let first = read(&dir.path().join("log"), &LogQuery::default()).unwrap();
        let cursor = first.cursor.unwrap();
        for i in 0..500u64 {
            log.push(line(
                at(i),
                &tracing::Level::INFO,
                "t",
                &format!("line {i:04}"),
            ));
        }
        log.drain(Duration::from_secs(5));
        let names: Vec<PathBuf> = files(&dir.path().join("log"));
        assert_eq!(names.len(), 3, "{names:?}");
        for p in &names {
            let len = std::fs::metadata(p).unwrap().len();
            assert!(len <= 4096, "{} is {len} bytes", p.display());
        }
        let page = read(&dir.path().join("log"), &LogQuery::default()).unwrap();
        assert_eq!(page.lines.len(), 100);
        assert!(
            page.lines[99].ends_with("line 0499"),
            "{:?}",
            page.lines[99]
        );
        // The cursor from before the rotations: its file is gone, so lines were missed.
        let followed = read(
            &dir.path().join("log"),
            &LogQuery {
                after: Some(cursor),
                ..LogQuery::default()
            },
        )
        .unwrap();
        assert!(followed.missed);
        assert!(followed.lines.last().unwrap().ends_with("line 0499"));
        // A fresh cursor sees the next line, and only it, even after a rotation.
        let cursor = followed.cursor.unwrap();
        for i in 500..560u64 {
            log.push(line(
                at(i),
                &tracing::Level::WARN,
                "t",
                &format!("line {i:04}"),
            ));
        }
        log.drain(Duration::from_secs(5));
        let next = read(
            &dir.path().join("log"),
            &LogQuery {
                after: Some(cursor),
                level: Some("warn".into()),
                ..LogQuery::default()
            },
        )
        .unwrap();
        assert!(!next.missed);
        assert_eq!(next.lines.len(), 60, "{:?}", next.lines);
        assert!(next.lines[0].ends_with("line 0500"));
    }

    #[test]
    fn since_and_level_filter_and_newlines_cannot_forge_lines() {
        let dir = tempfile::tempdir().unwrap();
        let log = FileLog::start(dir.path().to_path_buf(), 8 << 20, 2).unwrap();
        log.push(line(at(0), &tracing::Level::INFO, "t", "old"));
        log.push(line(at(10), &tracing::Level::DEBUG, "t", "new debug"));
        log.push(line(at(20), &tracing::Level::ERROR, "t", "new\nerror"));
        log.drain(Duration::from_secs(5));
        let q = LogQuery {
            since: Some(at(5)),
            ..LogQuery::default()
        };
        let page = read(dir.path(), &q).unwrap();
        assert_eq!(page.lines.len(), 2, "{:?}", page.lines);
        assert!(
            page.lines[1].ends_with("t: new\\nerror"),
            "{:?}",
            page.lines
        );
        assert!(!page.more);
        // Every line since a time comes a page at a time, oldest first.
        for i in 0..30_000u64 {
            log.push(line(
                at(30 + i),
                &tracing::Level::INFO,
                "t",
                &format!("{i:040}"),
            ));
            if i % 5_000 == 0 {
                log.drain(Duration::from_secs(10));
            }
        }
        log.drain(Duration::from_secs(10));
        assert_eq!(log.dropped(), 0);
        let mut page = read(dir.path(), &q).unwrap();
        let mut seen = page.lines.len();
        assert!(page.more && seen < 30_002, "{seen}");
        assert!(page.lines[1].ends_with("t: new\\nerror"));
        while page.more {
            let next = LogQuery {
                after: page.cursor,
                ..LogQuery::default()
            };
            page = read(dir.path(), &next).unwrap();
            seen += page.lines.len();
        }
        assert_eq!(seen, 30_002);
        assert!(page
            .lines
            .last()
            .unwrap()
            .ends_with(&format!("{:040}", 29_999)));
        let q = LogQuery {
            level: Some("info".into()),
            ..LogQuery::default()
        };
        let page = read(dir.path(), &q).unwrap();
        assert_eq!(page.lines.len(), DEFAULT_LINES, "{:?}", page.lines);
        assert!(page.lines.iter().all(|l| !l.contains(" DEBUG ")));
        assert!(read(
            dir.path(),
            &LogQuery {
                level: Some("loud".into()),
                ..LogQuery::default()
            }
        )
        .is_err());
        assert_eq!(
            line(0, &tracing::Level::WARN, "firmware::guard", "x"),
            "1970-01-01T00:00:00.000Z WARN firmware::guard: x"
        );
    }
}
