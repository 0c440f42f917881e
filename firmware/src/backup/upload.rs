//! Receiving a backup file over the admin socket (`outpostctl backup restore -`): requests
//! are JSON lines of at most 4 MiB, so the file comes in base64 chunks of [`CHUNK`] bytes.
//!
//! One upload at a time. The bytes go to `<backup dir>/outpost-uploaded-<stamp>.backup.partial`
//! (mode 0600); the finish checks the size and SHA-256 the client computed, syncs the file
//! and renames it to its final name, so a listing never shows an incomplete upload as a
//! backup. An upload idle for [`IDLE`] is abandoned: its partial file is deleted (by the
//! next upload, or the daemon's once-a-second tick). Bounds: [`MAX_UPLOAD`] bytes in all,
//! and the file system keeps at least [`RESERVE`] free.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use crate::chunk::free_space;
use crate::chunk::{PieceError, PieceWriter};

use super::{archive, parse_name, schedule, PARTIAL_SUFFIX, SUFFIX};

/// Largest piece of one chunk request (decoded); base64 makes it 1.4 MiB of the 4 MiB line.
pub const CHUNK: usize = crate::chunk::MAX_PIECE;

/// Largest file accepted (a backup with years of voicemail fits).
pub const MAX_UPLOAD: u64 = 8 * 1024 * 1024 * 1024;
/// Free space the upload always leaves on the file system (the restore needs room too).
pub const RESERVE: u64 = 64 * 1024 * 1024;
/// Upload names tried (one a second after the other) before giving up.
const MAX_NAME_TRIES: u64 = 100;
/// An upload without a request for this long is abandoned.
pub const IDLE: Duration = Duration::from_secs(120);

/// Why an upload request was refused.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// Another upload is in progress.
    #[error("another backup upload is in progress; try again when it has finished (or in {} s, when it is abandoned)", IDLE.as_secs())]
    Busy,
    /// The id names no upload in progress (finished, aborted or abandoned).
    #[error("no upload {0} in progress (it was finished, aborted, or abandoned after {secs} s without data)", secs = IDLE.as_secs())]
    Unknown(String),
    /// A piece does not continue where the last one ended.
    #[error("the piece starts at byte {got}, but {expected} bytes were received")]
    Offset {
        /// The offset sent.
        got: u64,
        /// The bytes received.
        expected: u64,
    },
    /// The data is not base64 or too large.
    #[error("{0}")]
    Chunk(String),
    /// More than [`MAX_UPLOAD`].
    #[error("the file is larger than {} GiB, the most a backup upload may have", MAX_UPLOAD >> 30)]
    TooLarge,
    /// The file system would fill up.
    #[error("not enough space on the box: {free} bytes free, {RESERVE} must stay free")]
    NoSpace {
        /// Bytes free before this piece.
        free: u64,
    },
    /// Size or checksum do not match what the client sent.
    #[error("the upload arrived damaged: {0}")]
    Mismatch(String),
    /// A file operation failed.
    #[error("cannot {what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> UploadError {
    let path = path.display().to_string();
    move |source| UploadError::Io { what, path, source }
}

impl From<PieceError> for UploadError {
    fn from(e: PieceError) -> Self {
        match e {
            PieceError::Offset { got, expected } => UploadError::Offset { got, expected },
            PieceError::Data(why) => UploadError::Chunk(why),
        }
    }
}

/// Where an upload stands (the answer to every upload command).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadState {
    /// The upload's id.
    pub id: String,
    /// Bytes received.
    pub received: u64,
    /// The backup's file name in the backup directory, once finished.
    pub name: Option<String>,
}

/// The upload in progress.
#[derive(Debug)]
pub struct Upload {
    dir: PathBuf,
    /// The final name.
    name: String,
    /// The partial file, written piece by piece.
    file: PieceWriter,
}

impl Upload {
    /// Starts an upload into `dir`, named `wanted` when that is a free backup name,
    /// else `outpost-uploaded-<stamp>.backup`.
    pub fn begin(dir: &Path, wanted: Option<&str>, now_ms: u64) -> Result<Upload, UploadError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_err("create", dir))?;
        let name = match wanted {
            Some(n) if parse_name(n).is_some() && !dir.join(n).exists() => n.to_owned(),
            // A name no backup in the directory has: a second upload within the same
            // second (one refused, then retried) takes the next second's stamp.
            _ => (0..MAX_NAME_TRIES)
                .map(|i| {
                    let stamp = schedule::file_stamp(now_ms.saturating_add(i * 1000));
                    format!("outpost-uploaded-{stamp}{SUFFIX}")
                })
                .find(|n| !dir.join(n).exists())
                .ok_or_else(|| UploadError::Io {
                    what: "name",
                    path: dir.display().to_string(),
                    source: std::io::Error::other("no free upload name"),
                })?,
        };
        let partial = dir.join(format!("{name}{PARTIAL_SUFFIX}"));
        let _ = std::fs::remove_file(&partial);
        let file = PieceWriter::create(&partial).map_err(io_err("create", &partial))?;
        Ok(Upload {
            dir: dir.to_path_buf(),
            name,
            file,
        })
    }

    /// The upload's id.
    pub fn id(&self) -> &str {
        self.file.id()
    }

    /// No request for [`IDLE`].
    pub fn is_abandoned(&self) -> bool {
        self.file.idle_for(IDLE)
    }

    /// Where it stands.
    pub fn state(&self) -> UploadState {
        UploadState {
            id: self.file.id().to_owned(),
            received: self.file.received(),
            name: None,
        }
    }

    /// Appends one piece (`data` in base64) that must start at `offset`.
    pub fn chunk(&mut self, offset: u64, data: &str) -> Result<UploadState, UploadError> {
        let bytes = self.file.piece(offset, data)?;
        let len = bytes.len() as u64;
        if self.file.received() + len > MAX_UPLOAD {
            return Err(UploadError::TooLarge);
        }
        let free = free_space(&self.dir).map_err(io_err("measure the free space of", &self.dir))?;
        if free < len.saturating_add(RESERVE) {
            return Err(UploadError::NoSpace { free });
        }
        let partial = self.file.path().to_path_buf();
        self.file.write(&bytes).map_err(io_err("write", &partial))?;
        Ok(self.state())
    }

    /// Checks size and checksum, syncs and renames into place; returns the final path.
    pub fn finish(self, size: u64, sha256: &str) -> Result<(PathBuf, UploadState), UploadError> {
        let partial = self.file.path().to_path_buf();
        let received = self.file.received();
        let result = (|| {
            if size != received {
                return Err(UploadError::Mismatch(format!(
                    "{received} bytes received, {size} sent"
                )));
            }
            if !self.file.sha256().eq_ignore_ascii_case(sha256.trim()) {
                return Err(UploadError::Mismatch(
                    "its SHA-256 differs from the one sent".to_owned(),
                ));
            }
            self.file.sync().map_err(io_err("sync", &partial))?;
            let path = self.dir.join(&self.name);
            if path.exists() {
                return Err(UploadError::Io {
                    what: "create",
                    path: path.display().to_string(),
                    source: std::io::Error::from(std::io::ErrorKind::AlreadyExists),
                });
            }
            std::fs::rename(&partial, &path).map_err(io_err("rename", &partial))?;
            archive::sync_dir(&self.dir).map_err(io_err("sync", &self.dir))?;
            tracing::info!(file = %self.name, bytes = received, "backup upload received");
            Ok((
                path,
                UploadState {
                    id: self.file.id().to_owned(),
                    received,
                    name: Some(self.name.clone()),
                },
            ))
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&partial);
        }
        result
    }

    /// Gives up: deletes the partial file.
    pub fn abort(self) {
        let partial = self.file.path();
        if let Err(err) = std::fs::remove_file(partial) {
            tracing::warn!(file = %partial.display(), %err, "cannot remove an abandoned upload");
        } else {
            tracing::info!(file = %self.name, bytes = self.file.received(), "backup upload abandoned");
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE.md: unwrap is fine in tests
mod tests {
    use base64::Engine as _;
    use sha2::{Digest, Sha256};

    use super::*;

    fn b64(b: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(b)
    }

    #[test]
    fn an_upload_arrives_whole_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let now = 1_714_530_600_000;
        let mut up = Upload::begin(dir.path(), None, now).unwrap();
        up.chunk(0, &b64(b"hello ")).unwrap();
        assert!(matches!(
            up.chunk(3, &b64(b"x")),
            Err(UploadError::Offset { .. })
        ));
        assert!(matches!(
            up.chunk(6, "not base64!"),
            Err(UploadError::Chunk(_))
        ));
        up.chunk(6, &b64(b"world")).unwrap();
        let listed: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(
            listed,
            vec!["outpost-uploaded-20240501T023000Z.backup.partial"]
        );
        let sum = hex::encode(Sha256::digest(b"hello world"));
        let (path, state) = up.finish(11, &sum).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"hello world");
        assert_eq!(
            state.name.as_deref(),
            Some("outpost-uploaded-20240501T023000Z.backup")
        );
        // A second upload in the same second (the first one kept: refused, then retried)
        // takes the next free name.
        let up = Upload::begin(dir.path(), None, now).unwrap();
        let (path, _) = up.finish(0, &hex::encode(Sha256::digest(b""))).unwrap();
        assert!(
            path.ends_with("outpost-uploaded-20240501T023001Z.backup"),
            "{}",
            path.display()
        );
        std::fs::remove_file(&path).unwrap();

        // A wrong checksum leaves nothing behind; the original name is kept when free.
        let mut up = Upload::begin(
            dir.path(),
            Some("outpost-branch-20240501T023000Z.backup"),
            now,
        )
        .unwrap();
        up.chunk(0, &b64(b"abc")).unwrap();
        assert!(matches!(up.finish(3, &sum), Err(UploadError::Mismatch(_))));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        // A name that is not a backup name is not used.
        let up = Upload::begin(dir.path(), Some("../../etc/passwd"), now + 1000).unwrap();
        assert!(up.file.path().starts_with(dir.path()));
        assert!(up
            .file
            .path()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("outpost-uploaded-"));
        up.abort();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_piece_larger_than_a_chunk_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut up = Upload::begin(dir.path(), None, 0).unwrap();
        let big = b64(&vec![7u8; CHUNK + 3]);
        assert!(matches!(up.chunk(0, &big), Err(UploadError::Chunk(_))));
        up.chunk(0, &b64(&vec![7u8; CHUNK])).unwrap();
    }
}
