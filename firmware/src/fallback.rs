//! Starting with what works: a configuration section the daemon cannot start with (an
//! address the box no longer has, a port another program holds, a certificate that went
//! missing) must never take the box off the air, because the admin socket, SSH and the
//! console all live in the daemon.
//!
//! For each section that can fail at start, the daemon tries, in order: the
//! running revision's value, the value of the last revision that started cleanly
//! (`<data_dir>/config/last-good`), the factory default (the boot file), and the built-in
//! default. The first that works runs; each section that fell back is reported with its
//! key and reason ([`Degraded`]), logged, and raised as an alert.

use std::path::{Path, PathBuf};

use crate::config::Config;

/// File under `<data_dir>/config` that names the last revision the daemon started cleanly.
const LAST_GOOD_FILE: &str = "last-good";

/// One section the daemon could not start with, and what runs instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Degraded {
    /// The configuration key (`sip.listen`, `media`, `trunk "primary"`).
    pub key: String,
    /// Why the configured value did not start (every attempt that failed).
    pub reason: String,
    /// Where the value that runs came from (`the factory default`, ...).
    pub running: String,
}

impl Degraded {
    /// The alert text.
    pub fn message(&self) -> String {
        format!(
            "configuration: {} could not be used ({}); running with {} instead",
            self.key, self.reason, self.running
        )
    }
}

/// The configurations to fall back on, best first.
#[derive(Debug)]
pub struct Fallbacks {
    /// (where it comes from, the configuration), the running one first.
    sources: Vec<(String, Config)>,
    /// What fell back so far.
    degraded: Vec<Degraded>,
}

impl Fallbacks {
    /// The running configuration, then the last revision that started cleanly (when it is
    /// another one), the boot file and the built-in defaults.
    pub fn new(running: &Config, running_rev: Option<u32>, boot: &Config) -> Fallbacks {
        let data_dir = running.store.data_dir.clone();
        let mut sources = vec![("the configured value".to_owned(), running.clone())];
        if let Some((rev, cfg)) = last_good(&data_dir).filter(|(rev, _)| Some(*rev) != running_rev)
        {
            sources.push((
                format!("revision {rev}'s value (the last that started)"),
                cfg,
            ));
        }
        sources.push(("the factory default".to_owned(), boot.clone()));
        sources.push(("the built-in default".to_owned(), Config::default()));
        Fallbacks {
            sources,
            degraded: Vec::new(),
        }
    }

    /// The distinct values of one section, best first, with where each comes from.
    pub fn candidates<S: PartialEq + Clone>(
        &self,
        section: impl Fn(&Config) -> S,
    ) -> Vec<(String, S)> {
        let mut out: Vec<(String, S)> = Vec::new();
        for (label, cfg) in &self.sources {
            let value = section(cfg);
            if !out.iter().any(|(_, v)| *v == value) {
                out.push((label.clone(), value));
            }
        }
        out
    }

    /// Records that `key` runs with the candidate `running` after `reason`.
    pub fn fell_back(&mut self, key: &str, reason: String, running: &str) {
        let d = Degraded {
            key: key.to_owned(),
            reason,
            running: running.to_owned(),
        };
        tracing::error!("{}", d.message());
        self.degraded.push(d);
    }

    /// The sections that fell back.
    pub fn degraded(&self) -> &[Degraded] {
        &self.degraded
    }
}

/// Records `rev` as the last revision that started cleanly.
pub fn mark_good(data_dir: &Path, rev: u32) {
    let path = last_good_path(data_dir);
    if std::fs::read_to_string(&path).is_ok_and(|t| t.trim() == rev.to_string()) {
        return;
    }
    let tmp = path.with_extension("tmp");
    let written =
        std::fs::write(&tmp, format!("{rev}\n")).and_then(|()| std::fs::rename(&tmp, &path));
    if let Err(err) = written {
        tracing::warn!(path = %path.display(), %err, "cannot record the last good revision");
    }
}

fn last_good_path(data_dir: &Path) -> PathBuf {
    data_dir.join("config").join(LAST_GOOD_FILE)
}

/// The last revision that started cleanly, parsed; `None` when there is none or it no
/// longer reads.
fn last_good(data_dir: &Path) -> Option<(u32, Config)> {
    let text = std::fs::read_to_string(last_good_path(data_dir)).ok()?;
    let rev: u32 = text.trim().parse().ok()?;
    let revs = crate::revisions::Revisions::open(data_dir).ok()?;
    let body = revs.text(rev).ok()?;
    let mut cfg = Config::parse_named(&body, &format!("revision {rev}")).ok()?;
    cfg.store.data_dir = data_dir.to_path_buf();
    Some((rev, cfg))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE.md: unwrap is fine in tests
mod tests {
    use super::*;

    #[test]
    fn candidates_are_distinct_and_best_first() {
        let dir = tempfile::tempdir().unwrap();
        let mut running = Config::default();
        running.store.data_dir = dir.path().to_path_buf();
        running.media.addrs = vec!["10.0.2.15".parse().unwrap()];
        let mut boot = Config::default();
        boot.media.port_first = 20000;
        let f = Fallbacks::new(&running, Some(1), &boot);
        let c = f.candidates(|c| c.media.clone());
        assert_eq!(c.len(), 3);
        assert_eq!(c[0].0, "the configured value");
        assert_eq!(c[0].1.addrs.len(), 1);
        assert_eq!(c[1].0, "the factory default");
        assert_eq!(c[1].1.port_first, 20000);
        assert_eq!(c[2].0, "the built-in default");
        // The same value everywhere: one candidate.
        assert_eq!(f.candidates(|c| c.sip.realm.clone()).len(), 1);
    }

    #[test]
    fn the_last_good_revision_is_offered_second() {
        let dir = tempfile::tempdir().unwrap();
        let mut revs = crate::revisions::Revisions::open(dir.path()).unwrap();
        let good = revs
            .add(
                "[media]\nport_first = 30000\nport_last = 30099\n",
                1,
                "good",
                None,
            )
            .unwrap();
        let now = revs
            .add("[media]\naddrs = [\"192.0.2.1\"]\n", 2, "bad", None)
            .unwrap();
        mark_good(dir.path(), good);
        let mut running = Config::default();
        running.store.data_dir = dir.path().to_path_buf();
        running.media.addrs = vec!["192.0.2.1".parse().unwrap()];
        let f = Fallbacks::new(&running, Some(now), &Config::default());
        let c = f.candidates(|c| c.media.clone());
        assert!(c[1].0.contains(&format!("revision {good}")), "{c:?}");
        assert_eq!(c[1].1.port_first, 30000);
        // When the running revision is the good one, it is not offered twice.
        let f = Fallbacks::new(&running, Some(good), &Config::default());
        assert!(!f.candidates(|c| c.media.clone())[1].0.contains("revision"));
    }
}
