//! Files the daemon hands out in pieces (backups, the SBOM, voicemail audio), streamed to
//! the browser piece by piece: never more than one piece (1 MiB) in memory per download.

use axum::body::Body;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use base64::Engine;

use crate::admin::proto::{Command, Reply};
use crate::chunk::MAX_CHUNK;

use super::api::{unexpected, Api};

/// One piece of a file: its bytes and the file's size.
fn piece(reply: Reply) -> Result<(Vec<u8>, u64), String> {
    let (data, size) = match reply {
        Reply::FileChunk(c) => (c.data, c.size),
        Reply::VmAudio(a) => (a.data, a.size),
        Reply::RecAudio { piece, .. } => (piece.data, piece.size),
        other => return Err(unexpected(other)),
    };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data)
        .map_err(|e| format!("the daemon sent a damaged piece: {e}"))?;
    Ok((bytes, size))
}

/// Streams the file `command(offset, len)` reads, as `filename` of type `content_type`
/// (an attachment unless `inline`). The first piece is read before answering, so a missing
/// file is a 404 with the daemon's reason.
pub async fn stream<F>(
    api: &Api,
    command: F,
    filename: &str,
    content_type: &'static str,
    inline: bool,
) -> Response
where
    F: Fn(u64, u64) -> Command + Send + Sync + 'static,
{
    let (first, size) = match piece(api.call(command(0, MAX_CHUNK)).await) {
        Ok(p) => p,
        Err(e) => return (axum::http::StatusCode::NOT_FOUND, e).into_response(),
    };
    let api = api.clone();
    let start = (api, command, first.len() as u64, size);
    let rest = futures_util::stream::unfold(start, |(api, command, offset, size)| async move {
        if offset >= size {
            return None;
        }
        match piece(api.call(command(offset, MAX_CHUNK)).await) {
            Ok((bytes, _)) if !bytes.is_empty() => {
                let next = offset + bytes.len() as u64;
                Some((Ok(bytes), (api, command, next, size)))
            }
            Ok(_) => None,
            Err(e) => Some((Err(std::io::Error::other(e)), (api, command, size, size))),
        }
    });
    let body = futures_util::StreamExt::chain(
        futures_util::stream::iter([Ok::<_, std::io::Error>(first)]),
        rest,
    );
    let disposition = format!(
        "{}; filename=\"{}\"",
        if inline { "inline" } else { "attachment" },
        filename.replace(['"', '\\', '\r', '\n'], "_")
    );
    (
        [
            (header::CONTENT_TYPE, content_type.to_owned()),
            (header::CONTENT_LENGTH, size.to_string()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        Body::from_stream(body),
    )
        .into_response()
}
