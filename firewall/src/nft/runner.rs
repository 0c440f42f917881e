//! The only place that starts processes: one `nft` run, optionally inside a network namespace.
//!
//! We serialize the `nftables` crate's schema types ourselves and run `nft` here instead of
//! calling `nftables::helper::apply_ruleset`, because the helper (0.6) leaves nft's stderr
//! uncaptured (our errors must carry it) and waits without a deadline (a wedged `nft` must
//! not wedge the daemon).

use std::io::{Read, Write};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::NftError;

/// At most this much of nft's stderr is kept in an error (a failed 10,000-element batch can
/// echo a lot).
const MAX_STDERR: usize = 4 * 1024;

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

    /// Runs `nft ARGS`, feeding `stdin` if given; returns stdout. A non-zero exit is an error
    /// carrying stderr.
    pub(crate) fn run(&self, args: &[&str], stdin: Option<String>) -> Result<String, NftError> {
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns.as_str(), self.nft.as_str()]);
                c
            }
            None => Command::new(&self.nft),
        };
        cmd.args(args)
            .stdin(if stdin.is_some() {
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

    #[test]
    fn long_stderr_is_clipped_on_a_char_boundary() {
        let long = "é".repeat(MAX_STDERR);
        let c = clip(&long);
        assert!(c.len() <= MAX_STDERR + '…'.len_utf8());
        assert!(c.ends_with('…'));
    }
}
