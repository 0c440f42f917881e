//! Numbered configuration revisions under `<data_dir>/config/`.
//!
//! Every configuration the daemon ran with is kept as `rev-NNNNNN.toml` (the text exactly as
//! the admin wrote it, comments included) plus one line in `revisions.json` (number, time,
//! comment, state). Revision 1 is the boot file (or the embedded demo) the first time the
//! daemon starts; afterwards the newest applied revision is what the daemon runs, across
//! restarts, whatever the boot file says. A revision applied with a confirmation deadline
//! is `pending` until confirmed; the daemon rolls back to the previous applied revision
//! when the deadline passes, and a pending revision found at start-up (the box restarted
//! before it was confirmed) is rolled back too. Files are written atomically (temporary
//! file, fsync, rename), so a power cut leaves the old or the new index, never half.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use pbx_core::Millis;

/// Revisions kept (the oldest are deleted beyond this; the running one never).
const MAX_REVISIONS: usize = 100;
/// Largest configuration text accepted.
pub const MAX_CONFIG_BYTES: usize = 1024 * 1024;

/// Why a revision operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RevisionError {
    #[error("cannot access {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("the revision index {0} is unreadable")]
    Index(String),
    #[error("there is no revision {0}")]
    NoSuchRevision(u32),
    #[error("the configuration is larger than {MAX_CONFIG_BYTES} bytes")]
    TooLarge,
}

/// Where a revision stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RevisionState {
    /// Running now (the newest applied one).
    Applied,
    /// Applied and waiting for `config confirm` until `confirm_by`.
    Pending,
    /// Applied once, replaced by a newer revision.
    Superseded,
    /// Rolled back: unconfirmed in time, or replaced by `config rollback`.
    RolledBack,
}

/// One revision in the index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revision {
    /// 1, 2, ...
    pub rev: u32,
    /// When it was stored (ms since the epoch).
    pub at: Millis,
    /// What the admin said, or what the daemon did ("boot file", "rollback to 3").
    pub comment: String,
    pub state: RevisionState,
    /// A pending revision's deadline (ms since the epoch).
    pub confirm_by: Option<Millis>,
}

/// The revision store of one data directory.
#[derive(Debug)]
pub struct Revisions {
    dir: PathBuf,
    index: Vec<Revision>,
}

impl Revisions {
    /// Opens (creating the directory) the revisions under `data_dir/config`.
    pub fn open(data_dir: &Path) -> Result<Revisions, RevisionError> {
        let dir = data_dir.join("config");
        std::fs::create_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
        // Revisions hold trunk passwords: ones an older firmware wrote world-readable are
        // made private.
        crate::store::private(&dir, 0o700);
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for entry in entries.flatten() {
                crate::store::private(&entry.path(), 0o600);
            }
        }
        let index_path = dir.join("revisions.json");
        let index = match std::fs::read(&index_path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|_| RevisionError::Index(index_path.display().to_string()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io_err(&index_path, e)),
        };
        Ok(Revisions { dir, index })
    }

    /// Every revision, oldest first.
    pub fn list(&self) -> &[Revision] {
        &self.index
    }

    /// The running revision (applied or pending), if any.
    pub fn current(&self) -> Option<&Revision> {
        self.index
            .iter()
            .rev()
            .find(|r| matches!(r.state, RevisionState::Applied | RevisionState::Pending))
    }

    /// The newest revision confirmed as applied before `rev` (what a rollback returns to).
    pub fn previous_applied(&self, rev: u32) -> Option<&Revision> {
        self.index
            .iter()
            .rev()
            .filter(|r| r.rev < rev)
            .find(|r| matches!(r.state, RevisionState::Applied | RevisionState::Superseded))
    }

    /// The text of revision `rev`.
    pub fn text(&self, rev: u32) -> Result<String, RevisionError> {
        if !self.index.iter().any(|r| r.rev == rev) {
            return Err(RevisionError::NoSuchRevision(rev));
        }
        let path = self.file(rev);
        std::fs::read_to_string(&path).map_err(|e| io_err(&path, e))
    }

    /// Stores `text` as a new running revision (`Pending` with a deadline, else `Applied`);
    /// the previous running one becomes `Superseded` (or `RolledBack` when `rollback`).
    pub fn add(
        &mut self,
        text: &str,
        at: Millis,
        comment: &str,
        confirm_by: Option<Millis>,
    ) -> Result<u32, RevisionError> {
        if text.len() > MAX_CONFIG_BYTES {
            return Err(RevisionError::TooLarge);
        }
        let rev = self.index.last().map_or(1, |r| r.rev.saturating_add(1));
        write_atomically(&self.file(rev), text.as_bytes())?;
        let mut index = self.index.clone();
        for r in &mut index {
            if matches!(r.state, RevisionState::Applied | RevisionState::Pending) {
                r.state = RevisionState::Superseded;
                r.confirm_by = None;
            }
        }
        index.push(Revision {
            rev,
            at,
            comment: comment
                .chars()
                .filter(|c| !c.is_control())
                .take(200)
                .collect(),
            state: if confirm_by.is_some() {
                RevisionState::Pending
            } else {
                RevisionState::Applied
            },
            confirm_by,
        });
        self.save(index)?;
        self.prune();
        Ok(rev)
    }

    /// Confirms the pending revision; returns it, or `None` when nothing was pending.
    pub fn confirm(&mut self) -> Result<Option<u32>, RevisionError> {
        let mut index = self.index.clone();
        let Some(r) = index
            .iter_mut()
            .rev()
            .find(|r| r.state == RevisionState::Pending)
        else {
            return Ok(None);
        };
        r.state = RevisionState::Applied;
        r.confirm_by = None;
        let rev = r.rev;
        self.save(index)?;
        Ok(Some(rev))
    }

    /// Marks `rev` rolled back (after its replacement was added).
    pub fn mark_rolled_back(&mut self, rev: u32) -> Result<(), RevisionError> {
        let mut index = self.index.clone();
        if let Some(r) = index.iter_mut().find(|r| r.rev == rev) {
            r.state = RevisionState::RolledBack;
            r.confirm_by = None;
        }
        self.save(index)
    }

    fn save(&mut self, index: Vec<Revision>) -> Result<(), RevisionError> {
        let json = serde_json::to_vec_pretty(&index)
            .map_err(|_| RevisionError::Index("cannot encode".into()))?;
        write_atomically(&self.dir.join("revisions.json"), &json)?;
        self.index = index;
        Ok(())
    }

    /// Deletes the oldest revisions beyond [`MAX_REVISIONS`] (never a running one).
    fn prune(&mut self) {
        while self.index.len() > MAX_REVISIONS {
            let Some(pos) = self
                .index
                .iter()
                .position(|r| !matches!(r.state, RevisionState::Applied | RevisionState::Pending))
            else {
                return;
            };
            let old = self.index[pos].rev;
            let mut index = self.index.clone();
            index.remove(pos);
            if self.save(index).is_ok() {
                let _ = std::fs::remove_file(self.file(old));
            } else {
                return;
            }
        }
    }

    fn file(&self, rev: u32) -> PathBuf {
        self.dir.join(format!("rev-{rev:06}.toml"))
    }
}

/// A unified diff of two configuration texts (empty when equal).
pub fn diff(old: &str, new: &str, old_name: &str, new_name: &str) -> String {
    similar::TextDiff::from_lines(old, new)
        .unified_diff()
        .context_radius(3)
        .header(old_name, new_name)
        .to_string()
}

fn io_err(path: &Path, source: std::io::Error) -> RevisionError {
    RevisionError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Writes `bytes` to `path` so that a crash leaves the old or the new content.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), RevisionError> {
    let tmp = path.with_extension("tmp");
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    };
    write().map_err(|e| io_err(path, e))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE.md: unwrap is fine in tests
mod tests {
    use super::*;

    #[test]
    fn revisions_are_numbered_kept_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = Revisions::open(dir.path()).unwrap();
        assert!(r.current().is_none());
        assert_eq!(r.add("a = 1\n", 10, "boot file", None).unwrap(), 1);
        assert_eq!(r.add("a = 2\n", 20, "more", Some(99)).unwrap(), 2);
        assert_eq!(r.current().unwrap().rev, 2);
        assert_eq!(r.current().unwrap().state, RevisionState::Pending);
        assert_eq!(r.previous_applied(2).unwrap().rev, 1);
        let r2 = Revisions::open(dir.path()).unwrap();
        assert_eq!(r2.list(), r.list());
        assert_eq!(r2.text(2).unwrap(), "a = 2\n");
        assert!(matches!(r2.text(7), Err(RevisionError::NoSuchRevision(7))));
        assert_eq!(r.confirm().unwrap(), Some(2));
        assert_eq!(r.current().unwrap().state, RevisionState::Applied);
        assert_eq!(r.list()[0].state, RevisionState::Superseded);
        assert_eq!(r.confirm().unwrap(), None);
    }

    #[test]
    fn a_rollback_is_a_new_revision_and_marks_the_old_one() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = Revisions::open(dir.path()).unwrap();
        r.add("a = 1\n", 10, "boot file", None).unwrap();
        r.add("a = 2\n", 20, "bad", Some(30)).unwrap();
        let back = r.text(1).unwrap();
        let rev = r.add(&back, 31, "rollback to 1", None).unwrap();
        r.mark_rolled_back(2).unwrap();
        assert_eq!(rev, 3);
        let states: Vec<RevisionState> = r.list().iter().map(|x| x.state).collect();
        assert_eq!(
            states,
            [
                RevisionState::Superseded,
                RevisionState::RolledBack,
                RevisionState::Applied
            ]
        );
    }

    #[test]
    fn old_revisions_are_pruned_but_never_the_running_one() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = Revisions::open(dir.path()).unwrap();
        for i in 0..(MAX_REVISIONS + 5) {
            r.add(&format!("a = {i}\n"), u64::try_from(i).unwrap(), "", None)
                .unwrap();
        }
        assert_eq!(r.list().len(), MAX_REVISIONS);
        assert_eq!(r.list()[0].rev, 6);
        assert!(!dir.path().join("config/rev-000001.toml").exists());
        assert_eq!(
            r.current().unwrap().rev,
            u32::try_from(MAX_REVISIONS + 5).unwrap()
        );
    }

    #[test]
    fn diff_is_unified() {
        let d = diff("a = 1\nb = 2\n", "a = 1\nb = 3\n", "rev 1", "rev 2");
        assert!(d.contains("--- rev 1\n+++ rev 2\n"), "{d}");
        assert!(d.contains("-b = 2\n+b = 3\n"), "{d}");
        assert_eq!(diff("x\n", "x\n", "a", "b"), "");
    }
}
