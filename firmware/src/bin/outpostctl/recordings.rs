//! `outpostctl rec get ID FILE`: a call recording's WAV file, read from the daemon in
//! pieces and written to a new file only the user can read (a recording is a
//! conversation).

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use base64::Engine;
use firmware::admin::proto::{Command, Reply};
use firmware::chunk::MAX_CHUNK;

use crate::failure::Failure;
use crate::link::Link;

/// Downloads recording `id` into `file` (created, 0600; an existing file is kept).
pub fn rec_get(socket: &Path, id: u64, file: &Path) -> Result<(), Failure> {
    let mut link = Link::connect(socket)?;
    let mut out = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(file)
        .map_err(|e| Failure::Usage(format!("cannot create {}: {e}", file.display())))?;
    let mut offset = 0u64;
    loop {
        let reply = link.request(&Command::RecAudio {
            id,
            offset,
            len: MAX_CHUNK,
        })?;
        let piece = match reply {
            Reply::RecAudio { piece, .. } => piece,
            Reply::Error { message } => {
                let _ = std::fs::remove_file(file);
                return Err(Failure::Refused(message));
            }
            other => return Err(Failure::unexpected(&other)),
        };
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(piece.data.as_bytes())
            .map_err(|e| {
                Failure::Refused(format!("a piece of recording {id} is not base64: {e}"))
            })?;
        out.write_all(&bytes)
            .map_err(|e| Failure::Refused(format!("cannot write {}: {e}", file.display())))?;
        offset = offset.saturating_add(bytes.len() as u64);
        if bytes.is_empty() || offset >= piece.size {
            break;
        }
    }
    out.sync_all()
        .map_err(|e| Failure::Refused(format!("cannot write {}: {e}", file.display())))?;
    eprintln!(
        "recording {id}: {offset} bytes written to {}",
        file.display()
    );
    Ok(())
}
