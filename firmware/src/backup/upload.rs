//! Receiving a backup file over the admin socket (`outpostctl backup restore -`): requests
//! are JSON lines of at most 4 MiB, so the file comes in base64 chunks of [`CHUNK`] bytes.
//!
//! One upload at a time. The bytes go to `<backup dir>/outpost-uploaded-<stamp>.backup.partial`
//! (mode 0600); the finish checks the size and SHA-256 the client computed, syncs the file
//! and renames it to its final name, so a listing never shows an incomplete upload as a
//! backup. An upload idle for [`IDLE`] is abandoned: its partial file is deleted (by the
//! next upload, or the daemon's once-a-second tick). Bounds: [`MAX_UPLOAD`] bytes in all,
//! and the file system keeps at least [`RESERVE`] free.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{archive, parse_name, schedule, PARTIAL_SUFFIX, SUFFIX};

/// Largest piece of one chunk request (decoded); base64 makes it 1.4 MiB of the 4 MiB line.
pub const CHUNK: usize = 1024 * 1024;

/// One base64 piece of an upload (backups, update bundles), at most [`CHUNK`] bytes once
/// decoded; the error says why not.
pub fn decode_piece(data: &str) -> Result<Vec<u8>, String> {
    if data.len() > CHUNK.div_ceil(3) * 4 {
        return Err(format!("a piece may hold at most {CHUNK} bytes"));
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data)
        .map_err(|e| format!("the piece is not base64: {e}"))?;
    // The base64 length bound lets up to two more bytes through.
    if bytes.len() > CHUNK {
        return Err(format!("a piece may hold at most {CHUNK} bytes"));
    }
    Ok(bytes)
}
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
    id: String,
    dir: PathBuf,
    /// The final name.
    name: String,
    partial: PathBuf,
    file: std::fs::File,
    received: u64,
    hasher: Sha256,
    last: Instant,
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
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&partial)
            .map_err(io_err("create", &partial))?;
        Ok(Upload {
            id: hex::encode(rand::random::<[u8; 8]>()),
            dir: dir.to_path_buf(),
            name,
            partial,
            file,
            received: 0,
            hasher: Sha256::new(),
            last: Instant::now(),
        })
    }

    /// The upload's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// No request for [`IDLE`].
    pub fn is_abandoned(&self) -> bool {
        self.last.elapsed() >= IDLE
    }

    /// Where it stands.
    pub fn state(&self) -> UploadState {
        UploadState {
            id: self.id.clone(),
            received: self.received,
            name: None,
        }
    }

    /// Appends one piece (`data` in base64) that must start at `offset`.
    pub fn chunk(&mut self, offset: u64, data: &str) -> Result<UploadState, UploadError> {
        if offset != self.received {
            return Err(UploadError::Offset {
                got: offset,
                expected: self.received,
            });
        }
        let bytes = decode_piece(data).map_err(UploadError::Chunk)?;
        let len = bytes.len() as u64;
        if self.received + len > MAX_UPLOAD {
            return Err(UploadError::TooLarge);
        }
        let free = free_space(&self.dir).map_err(io_err("measure the free space of", &self.dir))?;
        if free < len.saturating_add(RESERVE) {
            return Err(UploadError::NoSpace { free });
        }
        self.file
            .write_all(&bytes)
            .map_err(io_err("write", &self.partial))?;
        self.hasher.update(&bytes);
        self.received += len;
        self.last = Instant::now();
        Ok(self.state())
    }

    /// Checks size and checksum, syncs and renames into place; returns the final path.
    pub fn finish(self, size: u64, sha256: &str) -> Result<(PathBuf, UploadState), UploadError> {
        let partial = self.partial.clone();
        let result = (|| {
            if size != self.received {
                return Err(UploadError::Mismatch(format!(
                    "{} bytes received, {size} sent",
                    self.received
                )));
            }
            let got = hex::encode(self.hasher.clone().finalize());
            if !got.eq_ignore_ascii_case(sha256.trim()) {
                return Err(UploadError::Mismatch(
                    "its SHA-256 differs from the one sent".to_owned(),
                ));
            }
            self.file
                .sync_all()
                .map_err(io_err("sync", &self.partial))?;
            let path = self.dir.join(&self.name);
            if path.exists() {
                return Err(UploadError::Io {
                    what: "create",
                    path: path.display().to_string(),
                    source: std::io::Error::from(std::io::ErrorKind::AlreadyExists),
                });
            }
            std::fs::rename(&self.partial, &path).map_err(io_err("rename", &self.partial))?;
            archive::sync_dir(&self.dir).map_err(io_err("sync", &self.dir))?;
            tracing::info!(file = %self.name, bytes = self.received, "backup upload received");
            Ok((
                path,
                UploadState {
                    id: self.id.clone(),
                    received: self.received,
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
        if let Err(err) = std::fs::remove_file(&self.partial) {
            tracing::warn!(file = %self.partial.display(), %err, "cannot remove an abandoned upload");
        } else {
            tracing::info!(file = %self.name, bytes = self.received, "backup upload abandoned");
        }
    }
}

/// Bytes available to an unprivileged writer on the file system of `dir`.
pub fn free_space(dir: &Path) -> std::io::Result<u64> {
    let st = nix::sys::statvfs::statvfs(dir).map_err(std::io::Error::from)?;
    #[allow(clippy::useless_conversion)] // the field types differ between targets
    Ok(u64::from(st.blocks_available()).saturating_mul(u64::from(st.fragment_size())))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE.md: unwrap is fine in tests
mod tests {
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
        assert!(up.partial.starts_with(dir.path()));
        assert!(up
            .partial
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
