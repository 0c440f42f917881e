//! Files read out through the admin API in base64 pieces (backups, voicemail audio, the
//! SBOM), so a client streams a file of any size over a protocol whose lines are bounded
//! (`admin::proto::MAX_LINE`) and the daemon never holds more than one piece.
//!
//! A piece is at most [`MAX_CHUNK`] bytes. [`read_in_dir`] reads only a plain file named
//! directly in a directory: no path, no `..`, no hidden name, and the last component is
//! opened with `O_NOFOLLOW`, so a symlink planted in the directory cannot point out of it.
//!
//! The other way, files sent to the daemon in pieces (a backup to restore, an update
//! bundle) are written by a [`PieceWriter`]: each piece must continue where the last one
//! ended, and the bytes are hashed as they come.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Largest piece one request returns (1 MiB; 1.33 MiB of base64 in the reply line).
pub const MAX_CHUNK: u64 = MAX_PIECE as u64;
/// [`MAX_CHUNK`] as a length: the most one piece sent to the daemon holds, decoded.
pub const MAX_PIECE: usize = 1024 * 1024;

/// One piece of a file.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct FileChunk {
    /// The file's name (no directory).
    pub name: String,
    /// The whole file's size in bytes.
    pub size: u64,
    /// Where this piece starts.
    pub offset: u64,
    /// The bytes, standard base64 (empty at the end of the file).
    pub data: String,
}

/// Why a piece cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    /// The name is a path, `..`, hidden, empty or has a control character.
    #[error("{0:?} is not a file name in the directory (no paths, no `..`, no hidden files)")]
    BadName(String),
    /// No such file.
    #[error("no file {0:?}")]
    NotFound(String),
    /// A symlink, directory or device instead of a plain file.
    #[error("{0:?} is not a regular file")]
    NotAFile(String),
    /// The piece asked for is empty or larger than [`MAX_CHUNK`].
    #[error("len must be between 1 and {MAX_CHUNK} bytes")]
    Len,
    /// The offset is past the end of the file.
    #[error("offset {offset} is past the end of the file ({size} bytes)")]
    Offset {
        /// Offset asked for.
        offset: u64,
        /// The file's size.
        size: u64,
    },
    /// Reading failed.
    #[error("cannot read {name:?}: {source}")]
    Io {
        /// The file's name.
        name: String,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// Reads `len` bytes at `offset` of the plain file `name` directly in `dir`.
pub fn read_in_dir(dir: &Path, name: &str, offset: u64, len: u64) -> Result<FileChunk, ChunkError> {
    check_name(name)?;
    read_file(&dir.join(name), name, offset, len)
}

/// Reads `len` bytes at `offset` of the plain file at `path` (a path the daemon chose, not
/// a client); `name` is what the reply and errors call it. A symlink is refused.
pub fn read_file(path: &Path, name: &str, offset: u64, len: u64) -> Result<FileChunk, ChunkError> {
    if len == 0 || len > MAX_CHUNK {
        return Err(ChunkError::Len);
    }
    let io = |source: std::io::Error| match source.kind() {
        std::io::ErrorKind::NotFound => ChunkError::NotFound(name.to_owned()),
        _ if source.raw_os_error() == Some(libc::ELOOP) => ChunkError::NotAFile(name.to_owned()),
        _ => ChunkError::Io {
            name: name.to_owned(),
            source,
        },
    };
    // O_NOFOLLOW: the open itself refuses a symlink, so nothing can swap one in between a
    // check and the open; O_NONBLOCK: a FIFO planted there cannot hang the reader.
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    if !meta.is_file() {
        return Err(ChunkError::NotAFile(name.to_owned()));
    }
    let size = meta.len();
    if offset > size {
        return Err(ChunkError::Offset { offset, size });
    }
    let want = len.min(size - offset);
    let mut buf = Vec::with_capacity(usize::try_from(want).unwrap_or(0));
    file.seek(SeekFrom::Start(offset)).map_err(io)?;
    Read::by_ref(&mut file)
        .take(want)
        .read_to_end(&mut buf)
        .map_err(io)?;
    Ok(FileChunk {
        name: name.to_owned(),
        size,
        offset,
        data: base64::engine::general_purpose::STANDARD.encode(&buf),
    })
}

/// Reads the whole plain file at `path` if it is at most `max` bytes (a symlink is
/// refused); for files small enough to travel in one reply.
pub fn read_whole(path: &Path, name: &str, max: u64) -> Result<Vec<u8>, ChunkError> {
    let io = |source: std::io::Error| match source.kind() {
        std::io::ErrorKind::NotFound => ChunkError::NotFound(name.to_owned()),
        _ if source.raw_os_error() == Some(libc::ELOOP) => ChunkError::NotAFile(name.to_owned()),
        _ => ChunkError::Io {
            name: name.to_owned(),
            source,
        },
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    if !meta.is_file() {
        return Err(ChunkError::NotAFile(name.to_owned()));
    }
    let mut buf = Vec::new();
    // One byte more than allowed tells a file that grew past `max` from one that fits.
    file.take(max.saturating_add(1))
        .read_to_end(&mut buf)
        .map_err(io)?;
    if u64::try_from(buf.len()).unwrap_or(u64::MAX) > max {
        return Err(ChunkError::Io {
            name: name.to_owned(),
            source: std::io::Error::other(format!("larger than {max} bytes")),
        });
    }
    Ok(buf)
}

/// A bare file name: no separator, not `.`/`..`, not hidden, no control characters.
fn check_name(name: &str) -> Result<(), ChunkError> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && !name.starts_with('.')
        && !name.contains('/')
        && !name.chars().any(char::is_control);
    if ok {
        Ok(())
    } else {
        Err(ChunkError::BadName(name.to_owned()))
    }
}

/// One base64 piece of an upload (backups, update bundles), at most [`MAX_CHUNK`] bytes
/// once decoded; the error says why not.
pub fn decode_piece(data: &str) -> Result<Vec<u8>, String> {
    let max = MAX_PIECE;
    if data.len() > max.div_ceil(3) * 4 {
        return Err(format!("a piece may hold at most {max} bytes"));
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data)
        .map_err(|e| format!("the piece is not base64: {e}"))?;
    // The base64 length bound lets up to two more bytes through.
    if bytes.len() > max {
        return Err(format!("a piece may hold at most {max} bytes"));
    }
    Ok(bytes)
}

/// Bytes available to an unprivileged writer on the file system of `dir`.
pub fn free_space(dir: &Path) -> std::io::Result<u64> {
    let st = nix::sys::statvfs::statvfs(dir).map_err(std::io::Error::from)?;
    #[allow(clippy::useless_conversion)] // the field types differ between targets
    Ok(u64::from(st.blocks_available()).saturating_mul(u64::from(st.fragment_size())))
}

/// Why a piece was refused (nothing of it was written).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PieceError {
    /// It does not start where the last piece ended.
    Offset {
        /// The offset sent.
        got: u64,
        /// The bytes received so far.
        expected: u64,
    },
    /// Not base64, or larger than [`MAX_CHUNK`].
    Data(String),
}

/// A file received in pieces: made new (mode 0600, never over an existing file), written
/// piece by piece in order, its SHA-256 computed on the way. The caller names the file,
/// checks its own limits on each decoded piece, and decides what a finished file becomes.
#[derive(Debug)]
pub struct PieceWriter {
    id: String,
    path: PathBuf,
    file: File,
    received: u64,
    hasher: Sha256,
    last: Instant,
}

impl PieceWriter {
    /// Creates `path` (which must not exist) and gives the upload a random id.
    pub fn create(path: &Path) -> std::io::Result<PieceWriter> {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)?;
        Ok(PieceWriter {
            id: hex::encode(rand::random::<[u8; 8]>()),
            path: path.to_path_buf(),
            file,
            received: 0,
            hasher: Sha256::new(),
            last: Instant::now(),
        })
    }

    /// The upload's id (16 lowercase hex digits).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The file being written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes written so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// No piece (or creation) for `idle` or longer.
    pub fn idle_for(&self, idle: Duration) -> bool {
        self.last.elapsed() >= idle
    }

    /// The piece `data` (base64) sent for `offset`, decoded; refused unless it continues
    /// the file. Nothing is written yet: the caller checks its limits, then [`Self::write`].
    pub fn piece(&self, offset: u64, data: &str) -> Result<Vec<u8>, PieceError> {
        if offset != self.received {
            return Err(PieceError::Offset {
                got: offset,
                expected: self.received,
            });
        }
        decode_piece(data).map_err(PieceError::Data)
    }

    /// Appends `bytes` (a piece [`Self::piece`] accepted).
    pub fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.file.write_all(bytes)?;
        self.hasher.update(bytes);
        self.received += bytes.len() as u64;
        self.last = Instant::now();
        Ok(())
    }

    /// The SHA-256 of what was written, lowercase hex.
    pub fn sha256(&self) -> String {
        hex::encode(self.hasher.clone().finalize())
    }

    /// Flushes the file to the disk.
    pub fn sync(&self) -> std::io::Result<()> {
        self.file.sync_all()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE.md: unwrap is fine in tests
mod tests {
    use super::*;

    #[test]
    fn a_piece_writer_makes_a_new_private_file_and_takes_pieces_in_order_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("upload.partial");
        let mut w = PieceWriter::create(&path).unwrap();
        assert_eq!(w.id().len(), 16);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // Never over an existing file.
        assert!(PieceWriter::create(&path).is_err());
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        let piece = w.piece(0, &b64(b"hello ")).unwrap();
        w.write(&piece).unwrap();
        assert_eq!(
            w.piece(3, &b64(b"x")),
            Err(PieceError::Offset {
                got: 3,
                expected: 6
            })
        );
        assert!(matches!(
            w.piece(6, "not base64!"),
            Err(PieceError::Data(_))
        ));
        let too_big = b64(&vec![0u8; MAX_PIECE + 1]);
        assert!(matches!(w.piece(6, &too_big), Err(PieceError::Data(_))));
        let piece = w.piece(6, &b64(b"world")).unwrap();
        w.write(&piece).unwrap();
        w.sync().unwrap();
        assert_eq!(w.received(), 11);
        assert_eq!(std::fs::read(&path).unwrap(), b"hello world");
        assert_eq!(w.sha256(), hex::encode(Sha256::digest(b"hello world")));
        assert!(!w.idle_for(Duration::from_secs(60)));
    }

    fn decode(c: &FileChunk) -> Vec<u8> {
        base64::engine::general_purpose::STANDARD
            .decode(&c.data)
            .unwrap()
    }

    #[test]
    fn pieces_reassemble_the_file_and_the_end_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let body: Vec<u8> = (0..2500u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(dir.path().join("a.backup"), &body).unwrap();
        let mut out = Vec::new();
        let mut offset = 0;
        loop {
            let c = read_in_dir(dir.path(), "a.backup", offset, 1000).unwrap();
            assert_eq!(
                (c.size, c.offset, c.name.as_str()),
                (2500, offset, "a.backup")
            );
            let piece = decode(&c);
            if piece.is_empty() {
                break;
            }
            offset += piece.len() as u64;
            out.extend(piece);
        }
        assert_eq!(out, body);
        assert!(matches!(
            read_in_dir(dir.path(), "a.backup", 2501, 10),
            Err(ChunkError::Offset {
                offset: 2501,
                size: 2500
            })
        ));
        for len in [0, MAX_CHUNK + 1] {
            assert!(matches!(
                read_in_dir(dir.path(), "a.backup", 0, len),
                Err(ChunkError::Len)
            ));
        }
    }

    #[test]
    fn paths_dotdot_hidden_names_and_symlinks_out_are_refused() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"key").unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), dir.path().join("link")).unwrap();
        let secret = outside.path().join("secret");
        for name in [
            "..",
            ".",
            "",
            "../secret",
            secret.to_str().unwrap(),
            ".hidden",
            "a\nb",
        ] {
            assert!(
                matches!(
                    read_in_dir(dir.path(), name, 0, 10),
                    Err(ChunkError::BadName(_))
                ),
                "{name:?}"
            );
        }
        assert!(matches!(
            read_in_dir(dir.path(), "link", 0, 10),
            Err(ChunkError::NotAFile(_))
        ));
        assert!(matches!(
            read_in_dir(dir.path(), "sub", 0, 10),
            Err(ChunkError::NotAFile(_))
        ));
        assert!(matches!(
            read_in_dir(dir.path(), "missing", 0, 10),
            Err(ChunkError::NotFound(_))
        ));
        assert!(matches!(
            read_whole(&dir.path().join("link"), "link", 100),
            Err(ChunkError::NotAFile(_))
        ));
    }

    #[test]
    fn whole_files_are_capped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.wav");
        std::fs::write(&path, [7u8; 100]).unwrap();
        assert_eq!(read_whole(&path, "m.wav", 100).unwrap().len(), 100);
        assert!(read_whole(&path, "m.wav", 99).is_err());
    }
}
