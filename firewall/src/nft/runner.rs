//! The only place that starts processes: one `nft` run ([`Runner`]), or one long-lived `nft
//! -j -i` fed a batch per line ([`Session`]), optionally inside a network namespace.
//!
//! We serialize the `nftables` crate's schema types ourselves and run `nft` here instead of
//! calling `nftables::helper::apply_ruleset`, because the helper (0.6) leaves nft's stderr
//! uncaptured (our errors must carry it) and waits without a deadline (a wedged `nft` must
//! not wedge the daemon).

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::NftError;

/// At most this much of nft's stderr is kept in an error (a failed 10,000-element batch can
/// echo a lot).
const MAX_STDERR: usize = 4 * 1024;

/// nft processes this daemon started (one-shot runs and sessions), for `fw status` and the
/// benchmarks' processes per second.
static STARTED: AtomicU64 = AtomicU64::new(0);

/// How many nft processes were started so far (runs and sessions).
pub(crate) fn processes_started() -> u64 {
    STARTED.load(Ordering::Relaxed)
}

/// How to start `nft`: the program, the namespace, and how long one run may take.
#[derive(Debug, Clone)]
pub(crate) struct Runner {
    nft: String,
    netns: Option<String>,
    deadline: Duration,
}

impl Runner {
    /// A runner for `nft` (a name looked up in PATH or a path), inside `netns` if given.
    pub(crate) fn new(nft: &str, netns: Option<&str>, deadline: Duration) -> Self {
        Runner {
            nft: nft.to_string(),
            netns: netns.map(str::to_string),
            deadline,
        }
    }

    /// The command that starts `nft ARGS` (inside the namespace, if any).
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns.as_str(), self.nft.as_str()]);
                c
            }
            None => Command::new(&self.nft),
        };
        cmd.args(args);
        cmd
    }

    /// Runs `nft ARGS`, feeding `stdin` if given; returns stdout. A non-zero exit is an error
    /// carrying stderr.
    pub(crate) fn run(&self, args: &[&str], stdin: Option<String>) -> Result<String, NftError> {
        let mut cmd = self.command(args);
        cmd.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let shown = self.describe(args);
        let mut child = cmd.spawn().map_err(|source| NftError::Spawn {
            command: shown.clone(),
            source,
        })?;
        STARTED.fetch_add(1, Ordering::Relaxed);

        let writer = match (stdin, child.stdin.take()) {
            (Some(payload), Some(mut pipe)) => Some(thread::spawn(move || {
                // Dropping the pipe at the end of the closure closes nft's stdin.
                pipe.write_all(payload.as_bytes())
            })),
            _ => None,
        };
        let stdout = child.stdout.take().map(drain);
        let stderr = child.stderr.take().map(drain);

        let status = match self.wait(&mut child) {
            Ok(status) => status,
            Err(e) => {
                // Reap the reader threads: the kill closed the pipes.
                let _ = collect(stdout);
                let _ = collect(stderr);
                return Err(match e {
                    WaitError::Io(source) => NftError::Spawn {
                        command: shown,
                        source,
                    },
                    WaitError::Deadline => NftError::Timeout {
                        command: shown,
                        ms: u64::try_from(self.deadline.as_millis()).unwrap_or(u64::MAX),
                    },
                });
            }
        };
        let written = writer.map(|w| w.join());
        let out = collect(stdout);
        let err = collect(stderr);

        if !status.success() {
            return Err(NftError::Failed {
                command: shown,
                status: status.to_string(),
                stderr: clip(&String::from_utf8_lossy(&err)),
            });
        }
        match written {
            Some(Ok(Err(e))) => {
                return Err(NftError::Spawn {
                    command: shown,
                    source: e,
                })
            }
            Some(Err(_)) => {
                return Err(NftError::Output {
                    command: shown,
                    reason: "the stdin writer panicked".to_string(),
                })
            }
            _ => {}
        }
        String::from_utf8(out).map_err(|e| NftError::Output {
            command: shown,
            reason: format!("stdout is not UTF-8: {e}"),
        })
    }

    /// The command line as shown in errors: `ip netns exec NS nft -j -f -`.
    fn describe(&self, args: &[&str]) -> String {
        let mut s = String::new();
        if let Some(ns) = &self.netns {
            s.push_str("ip netns exec ");
            s.push_str(ns);
            s.push(' ');
        }
        s.push_str(&self.nft);
        for a in args {
            s.push(' ');
            s.push_str(a);
        }
        s
    }

    /// Waits for the child until the deadline, then kills it. Polls with a growing nap so a
    /// 3 ms run is not stretched much and a slow one costs little CPU.
    fn wait(&self, child: &mut Child) -> Result<ExitStatus, WaitError> {
        let start = Instant::now();
        let mut nap = Duration::from_micros(50);
        loop {
            if let Some(status) = child.try_wait().map_err(WaitError::Io)? {
                return Ok(status);
            }
            if start.elapsed() >= self.deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(WaitError::Deadline);
            }
            thread::sleep(nap);
            nap = (nap * 2).min(Duration::from_millis(5));
        }
    }
}

/// Input a [`Session`] takes before it is replaced by a fresh process. nft's interactive
/// mode keeps every line in its history (measured: RSS grows ~1.8× the bytes fed), so the
/// bound on the helper's memory is a bound on what one process is fed: ~8 MiB of RSS above
/// its ~4 MiB start. At the call bench's ~600-byte batches that is one restart every ~7,000
/// batches.
pub(crate) const MAX_SESSION_INPUT: usize = 4 * 1024 * 1024;

/// Most stderr lines kept while waiting for one batch's marker (nft prints a few per error).
const MAX_STDERR_LINES: usize = 64;

/// The line sent after each batch. Not a command: nft answers it on stderr with a syntax
/// error that echoes the line, after everything the batch printed (one ordered stream), so
/// seeing it means the batch is done and whatever came before it is the batch's error.
fn marker(seq: u64) -> String {
    format!("outpost-batch-done {seq}")
}

/// One long-lived `nft -j -i`: each batch is one line of JSON on its stdin, applied by nft as
/// it arrives, as one kernel transaction (the same as `nft -j -f -` with that line).
///
/// Measured on Debian 12's nft 1.0.6 (stdin a pipe, `bench/README.md`): a batch is applied
/// as soon as its line is read; errors go to stderr (nothing on success), followed by the
/// marker's syntax error, so a failed batch is detected and its error kept. A batch costs
/// ~0.3 ms of nft's CPU instead of ~4 ms for a process. `HOME=/dev/null`: nft reads and
/// writes its history file there, which must not exist.
#[derive(Debug)]
pub(crate) struct Session {
    child: Child,
    /// Lines for the writer thread (it owns nft's stdin, so a wedged nft cannot block us).
    to_nft: Option<Sender<Vec<u8>>>,
    /// nft's stderr, one line each, from the reader thread; closed when nft exits.
    from_nft: Receiver<String>,
    seq: u64,
    written: usize,
    shown: String,
    /// nft exited or was killed (its output ended or it missed a deadline).
    dead: bool,
}

impl Session {
    /// Starts `nft -j -i` (inside the runner's namespace) and waits, at most `deadline`, until
    /// it reads its input: a first marker, answered like any batch's. Whatever nft prints
    /// before that answer is start-up chatter, not a batch's error, and is dropped: on the
    /// box, whose image has no terminal database, its line editor says "Cannot read termcap
    /// database; using dumb terminal settings." even with `TERM=dumb`.
    pub(crate) fn start(runner: &Runner, deadline: Duration) -> Result<Session, NftError> {
        let mut session = Session::spawn(runner)?;
        match session.apply_marked(None, deadline) {
            Ok(chatter) => {
                if !chatter.is_empty() {
                    tracing::debug!(
                        "firewall: {} said at start: {}",
                        session.shown,
                        chatter.join(" ")
                    );
                }
                // Batches count from 1 in what the log shows; the stream is in step (the
                // marker's answer is read to its end).
                session.seq = 0;
                session.written = 0;
                Ok(session)
            }
            Err(e) => Err(e),
        }
    }

    fn spawn(runner: &Runner) -> Result<Session, NftError> {
        let args = ["-j", "-i"];
        let shown = runner.describe(&args);
        let mut cmd = runner.command(&args);
        cmd.env("HOME", "/dev/null")
            .env("TERM", "dumb")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|source| NftError::Spawn {
            command: shown.clone(),
            source,
        })?;
        STARTED.fetch_add(1, Ordering::Relaxed);
        let (Some(mut stdin), Some(stderr)) = (child.stdin.take(), child.stderr.take()) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(NftError::Output {
                command: shown,
                reason: "no pipes to the process".into(),
            });
        };
        let (to_nft, lines_in) = mpsc::channel::<Vec<u8>>();
        thread::spawn(move || {
            for line in lines_in {
                if stdin.write_all(&line).is_err() {
                    // nft is gone; the reader sees its stderr close.
                    break;
                }
            }
            // Dropping stdin ends nft (end of input).
        });
        let (lines_out, from_nft) = mpsc::channel();
        thread::spawn(move || {
            let mut reader = BufReader::new(stderr);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let line = String::from_utf8_lossy(&buf).trim_end().to_string();
                        if lines_out.send(line).is_err() {
                            break;
                        }
                    }
                }
            }
        });
        Ok(Session {
            child,
            to_nft: Some(to_nft),
            from_nft,
            seq: 0,
            written: 0,
            shown,
            dead: false,
        })
    }

    /// Whether nft is still running.
    pub(crate) fn alive(&mut self) -> bool {
        !self.dead && matches!(self.child.try_wait(), Ok(None))
    }

    /// Whether this process has been fed its share ([`MAX_SESSION_INPUT`]).
    pub(crate) fn worn_out(&self) -> bool {
        self.written >= MAX_SESSION_INPUT
    }

    /// Applies one batch (`payload`: one JSON document without newlines) and waits for nft
    /// to finish it, at most `deadline`. Any error leaves the session unusable: drop it.
    pub(crate) fn apply(&mut self, payload: &str, deadline: Duration) -> Result<(), NftError> {
        debug_assert!(!payload.contains('\n'), "one batch is one line");
        let said = self.apply_marked(Some(payload), deadline)?;
        // Anything else nft printed is this batch's error.
        let text = said.join("\n");
        if text.trim().is_empty() {
            Ok(())
        } else {
            Err(NftError::Failed {
                command: format!("{} (batch {})", self.shown, self.seq),
                status: "batch refused".into(),
                stderr: clip(&text),
            })
        }
    }

    /// Sends `payload` (when any) and the next marker; returns what nft printed before the
    /// marker's answer.
    fn apply_marked(
        &mut self,
        payload: Option<&str>,
        deadline: Duration,
    ) -> Result<Vec<String>, NftError> {
        self.seq += 1;
        let mark = marker(self.seq);
        let payload = payload.unwrap_or_default();
        let mut line = Vec::with_capacity(payload.len() + mark.len() + 2);
        if !payload.is_empty() {
            line.extend_from_slice(payload.as_bytes());
            line.push(b'\n');
        }
        line.extend_from_slice(mark.as_bytes());
        line.push(b'\n');
        self.written += line.len();
        let command = format!("{} (batch {})", self.shown, self.seq);
        let sent = self.to_nft.as_ref().is_some_and(|tx| tx.send(line).is_ok());
        if !sent {
            return Err(self.exited(command, &[]));
        }
        let end = Instant::now() + deadline;
        let mut said: Vec<String> = Vec::new();
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.from_nft.recv_timeout(left) {
                Ok(l) if l == mark => break,
                Ok(l) => {
                    if said.len() < MAX_STDERR_LINES {
                        said.push(l);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    self.dead = true;
                    let _ = self.child.kill();
                    return Err(NftError::Timeout {
                        command,
                        ms: u64::try_from(deadline.as_millis()).unwrap_or(u64::MAX),
                    });
                }
                Err(RecvTimeoutError::Disconnected) => return Err(self.exited(command, &said)),
            }
        }
        // The marker's own error: the line before it, and the caret line after it.
        if said
            .last()
            .is_some_and(|l| l.starts_with("Error: syntax error"))
        {
            said.pop();
        }
        let left = end.saturating_duration_since(Instant::now());
        match self.from_nft.recv_timeout(left) {
            Ok(caret) if caret.trim().chars().all(|c| c == '^') => {}
            Ok(other) => said.push(other),
            Err(_) => return Err(self.exited(command, &said)),
        }
        Ok(said)
    }

    /// The error for a session whose process is gone, with its exit status when known.
    fn exited(&mut self, command: String, said: &[String]) -> NftError {
        self.dead = true;
        // Its stderr closes a moment before its exit can be collected.
        let start = Instant::now();
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(s)) => break s.to_string(),
                Ok(None) if start.elapsed() < Duration::from_millis(200) => {
                    thread::sleep(Duration::from_millis(1));
                }
                _ => break "still running".to_string(),
            }
        };
        NftError::Failed {
            command,
            status,
            stderr: clip(&format!("nft exited. {}", said.join("\n"))),
        }
    }
}

impl Drop for Session {
    /// Ends nft: closes its input and waits a little, then kills it.
    fn drop(&mut self) {
        self.to_nft = None;
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(500) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(2));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sessions dying on their first batch in a row before batches go to one-shot runs.
pub(crate) const SESSION_GIVE_UP: u32 = 3;

/// JSON batches applied through one long-lived [`Session`], started on the first batch and
/// again after it died or was fed [`MAX_SESSION_INPUT`]. A session that dies on its very
/// first batch is tried [`SESSION_GIVE_UP`] times in a row; that batch goes to a one-shot
/// `nft -j -f -` run, so no update is lost to an nft without its interactive mode, and from
/// then on every batch is one run. Shared by the enforcer and the relay's fast path.
#[derive(Debug, Default)]
pub(crate) struct Batches {
    session: Option<Session>,
    /// nft processes started for batches (sessions, and one-shot runs when sessions fail).
    processes: u64,
    /// Sessions that died on their first batch in a row.
    failed_starts: u32,
}

impl Batches {
    /// Applies `payload` (one JSON document, no newline) as one kernel transaction through
    /// `runner`'s nft, waiting at most `deadline`.
    pub(crate) fn apply(
        &mut self,
        runner: &Runner,
        payload: &str,
        deadline: Duration,
    ) -> Result<(), NftError> {
        if self.failed_starts >= SESSION_GIVE_UP {
            return self.run_once(runner, payload);
        }
        if self.session.as_ref().is_some_and(Session::worn_out) {
            self.session = None;
        }
        let fresh = self.session.is_none();
        if fresh {
            self.processes += 1;
            match Session::start(runner, deadline) {
                Ok(s) => self.session = Some(s),
                Err(e) => return self.session_failed(e, runner, payload),
            }
        }
        let Some(session) = self.session.as_mut() else {
            return Err(NftError::Config("no nft session".into()));
        };
        match session.apply(payload, deadline) {
            Ok(()) => {
                self.failed_starts = 0;
                Ok(())
            }
            // nft refused the batch: the session is fine, the batch is not.
            Err(e @ NftError::Failed { .. }) if session.alive() => Err(e),
            Err(e) => {
                self.session = None;
                if !fresh || matches!(e, NftError::Timeout { .. }) {
                    return Err(e);
                }
                self.session_failed(e, runner, payload)
            }
        }
    }

    /// nft processes started for batches so far (a session each, or a one-shot run each when
    /// sessions cannot run).
    pub(crate) fn processes(&self) -> u64 {
        self.processes
    }

    /// Ends the session (its nft exits); the next batch starts another.
    pub(crate) fn close(&mut self) {
        self.session = None;
    }

    /// A new session would not start or died on its first batch: that batch goes to a
    /// one-shot run; at [`SESSION_GIVE_UP`] in a row, sessions are not tried again.
    fn session_failed(
        &mut self,
        e: NftError,
        runner: &Runner,
        payload: &str,
    ) -> Result<(), NftError> {
        self.session = None;
        self.failed_starts += 1;
        if self.failed_starts >= SESSION_GIVE_UP {
            tracing::error!(
                "firewall: `nft -j -i` does not run here ({e}); every batch is one \
                 `nft -j -f -` run from now on"
            );
        } else {
            tracing::warn!("firewall: `nft -j -i` did not start ({e}); this batch runs alone");
        }
        self.run_once(runner, payload)
    }

    fn run_once(&mut self, runner: &Runner, payload: &str) -> Result<(), NftError> {
        self.processes += 1;
        runner
            .run(&["-j", "-f", "-"], Some(payload.to_string()))
            .map(|_| ())
    }
}

enum WaitError {
    Io(std::io::Error),
    Deadline,
}

fn drain<R: Read + Send + 'static>(mut pipe: R) -> JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        // A read error leaves what was read so far; the exit status tells the rest.
        let _ = pipe.read_to_end(&mut buf);
        buf
    })
}

fn collect(reader: Option<JoinHandle<Vec<u8>>>) -> Vec<u8> {
    reader.and_then(|h| h.join().ok()).unwrap_or_default()
}

/// Trims and bounds nft's stderr for an error message.
fn clip(stderr: &str) -> String {
    let s = stderr.trim();
    if s.len() <= MAX_STDERR {
        return s.to_string();
    }
    let mut end = MAX_STDERR;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE.md: unwrap is fine in tests
mod tests {
    use super::*;

    #[test]
    fn a_missing_program_is_a_spawn_error_naming_it() {
        let r = Runner::new("/nonexistent/outpost-nft", None, Duration::from_millis(500));
        let e = r.run(&["list", "tables"], None).unwrap_err();
        assert!(matches!(e, NftError::Spawn { .. }), "{e}");
        assert!(e
            .to_string()
            .contains("/nonexistent/outpost-nft list tables"));
    }

    #[test]
    fn failures_carry_stderr_and_stdin_reaches_the_program() {
        // `sh -c` stands in for nft: it echoes stdin to stderr and fails.
        let r = Runner::new("sh", None, Duration::from_secs(5));
        let e = r
            .run(&["-c", "cat >&2; exit 3"], Some("boom from stdin".into()))
            .unwrap_err();
        match e {
            NftError::Failed { stderr, status, .. } => {
                assert_eq!(stderr, "boom from stdin");
                assert!(status.contains('3'), "{status}");
            }
            other => panic!("unexpected {other}"),
        }
        let out = r.run(&["-c", "cat"], Some("echoed".into())).unwrap();
        assert_eq!(out, "echoed");
    }

    #[test]
    fn a_wedged_program_is_killed_at_the_deadline() {
        let r = Runner::new("sleep", None, Duration::from_millis(200));
        let start = Instant::now();
        let e = r.run(&["5"], None).unwrap_err();
        assert!(matches!(e, NftError::Timeout { ms: 200, .. }), "{e}");
        assert!(start.elapsed() < Duration::from_secs(3));
    }

    /// A stand-in for `nft -j -i` that speaks its protocol: a line with `bad` is refused,
    /// `die` ends it, `slow` wedges it; the marker gets nft's three-line syntax error. It
    /// starts with the line editor's complaint nft makes on the box (no terminal database).
    fn fake_session(deadline_ms: u64) -> (Runner, Duration) {
        let script =
            "printf 'Cannot read termcap database;\\nusing dumb terminal settings.\\n' >&2; \
            while IFS= read -r l; do case \"$l\" in \
            outpost-batch-done*) printf 'Error: syntax error, x\\n%s\\n     ^^^\\n' \"$l\" >&2;; \
            *bad*) echo 'Error: Could not process rule: No such file or directory' >&2;; \
            die) exit 7;; slow) sleep 5;; esac; done";
        let dir = std::env::temp_dir().join(format!("outpost-session-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let prog = dir.join("nft");
        std::fs::write(&prog, format!("#!/bin/sh\n{script}\n")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&prog, std::fs::Permissions::from_mode(0o755)).unwrap();
        let r = Runner::new(&prog.display().to_string(), None, Duration::from_secs(5));
        (r, Duration::from_millis(deadline_ms))
    }

    #[test]
    fn a_session_applies_batches_in_one_process_and_reports_each_refusal() {
        let (r, deadline) = fake_session(2_000);
        let mut s = Session::start(&r, deadline).unwrap();
        s.apply("{\"nftables\":[]}", deadline).unwrap();
        let e = s.apply("{\"bad\":1}", deadline).unwrap_err();
        match e {
            NftError::Failed {
                stderr, command, ..
            } => {
                assert_eq!(
                    stderr,
                    "Error: Could not process rule: No such file or directory"
                );
                assert!(command.ends_with("(batch 2)"), "{command}");
            }
            other => panic!("unexpected {other}"),
        }
        // A refusal leaves the process running for the next batch.
        assert!(s.alive());
        s.apply("{\"ok\":2}", deadline).unwrap();
        assert!(!s.worn_out());
        // Death is seen as such, with what nft said.
        let e = s.apply("die", deadline).unwrap_err();
        assert!(e.to_string().contains("nft exited"), "{e}");
        assert!(!s.alive());
        // A wedged nft is killed at the deadline.
        let (r, short) = fake_session(300);
        let mut s = Session::start(&r, short).unwrap();
        let start = Instant::now();
        let e = s.apply("slow", short).unwrap_err();
        assert!(matches!(e, NftError::Timeout { ms: 300, .. }), "{e}");
        assert!(start.elapsed() < Duration::from_secs(3));
        assert!(!s.alive());
    }

    #[test]
    fn long_stderr_is_clipped_on_a_char_boundary() {
        let long = "é".repeat(MAX_STDERR);
        let c = clip(&long);
        assert!(c.len() <= MAX_STDERR + '…'.len_utf8());
        assert!(c.ends_with('…'));
    }
}
