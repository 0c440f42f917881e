//! Files read out through the admin API in base64 pieces (backups, voicemail audio, the
//! SBOM), so a client streams a file of any size over a protocol whose lines are bounded
//! (`admin::proto::MAX_LINE`) and the daemon never holds more than one piece.
//!
//! A piece is at most [`MAX_CHUNK`] bytes. [`read_in_dir`] reads only a plain file named
//! directly in a directory: no path, no `..`, no hidden name, and the last component is
//! opened with `O_NOFOLLOW`, so a symlink planted in the directory cannot point out of it.

use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// Largest piece one request returns (1 MiB; 1.33 MiB of base64 in the reply line).
pub const MAX_CHUNK: u64 = 1024 * 1024;

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

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE.md: unwrap is fine in tests
mod tests {
    use super::*;

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
