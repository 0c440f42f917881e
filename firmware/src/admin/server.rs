//! The daemon side of the admin socket: accepts connections, parses [`Command`] lines and
//! forwards each to the task that owns the endpoint, then writes its [`Reply`] back.
//!
//! The server never touches live state itself: it only moves typed commands and replies.

use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::proto::{Command, Reply, MAX_LINE};

/// One command on its way to the daemon, with the channel its reply goes back on.
pub type AdminRequest = (Command, oneshot::Sender<Reply>);

/// Most admin connections served at once; more are told to retry.
pub const MAX_CONNECTIONS: usize = 32;

/// Binds the admin socket at `path` and serves it until the process ends.
///
/// Returns only on a bind error. See [`bind`] and [`run`] to report bind errors first.
pub async fn serve(path: &Path, tx: mpsc::Sender<AdminRequest>) -> std::io::Result<()> {
    let listener = bind(path)?;
    run(listener, tx).await
}

/// Creates the socket at `path` with mode 0600 (parent directory created with mode 0700).
///
/// A stale socket left by a crashed daemon is replaced; a socket another daemon still
/// listens on is an `AddrInUse` error; any other file at `path` is left alone and is an
/// `AlreadyExists` error. The socket is bound under a temporary name, restricted, then
/// renamed into place, so it is never reachable with looser permissions. Must be called
/// inside a tokio runtime.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    use std::io::{Error, ErrorKind};

    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(Error::new(
                    ErrorKind::AddrInUse,
                    format!("another daemon is listening on {}", path.display()),
                ));
            }
            std::fs::remove_file(path)?;
        }
        Ok(_) => {
            return Err(Error::new(
                ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ));
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }

    let tmp = temp_path(path);
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let listener = UnixListener::bind(&tmp)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
    std::fs::rename(&tmp, path)?;
    Ok(listener)
}

fn temp_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".new");
    PathBuf::from(s)
}

/// Accepts connections on `listener` forever, one task per connection.
pub async fn run(listener: UnixListener, tx: mpsc::Sender<AdminRequest>) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "admin socket accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
            tokio::spawn(async move {
                let (_, mut wr) = stream.into_split();
                let busy = Reply::error("too many admin connections; try again");
                let _ = write_reply(&mut wr, &busy).await;
            });
            continue;
        };
        let tx = tx.clone();
        tokio::spawn(async move {
            if let Err(e) = handle_connection(stream, tx).await {
                tracing::debug!(error = %e, "admin connection ended");
            }
            drop(permit);
        });
    }
}

/// Serves one connection: one reply line per request line, in order.
async fn handle_connection(
    stream: UnixStream,
    tx: mpsc::Sender<AdminRequest>,
) -> std::io::Result<()> {
    let (rd, mut wr) = stream.into_split();
    let mut reader = BufReader::new(rd);
    let limit = u64::try_from(MAX_LINE + 1).expect("MAX_LINE fits in u64");
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = (&mut reader)
            .take(limit)
            .read_until(b'\n', &mut buf)
            .await?;
        if n == 0 {
            return Ok(());
        }
        let complete = buf.last() == Some(&b'\n');
        if complete {
            buf.pop();
        } else if buf.len() > MAX_LINE {
            let reply = Reply::error(format!(
                "request line longer than {MAX_LINE} bytes; closing the connection"
            ));
            return write_reply(&mut wr, &reply).await;
        }
        if buf.iter().all(u8::is_ascii_whitespace) {
            if complete {
                continue;
            }
            return Ok(());
        }
        let reply = match serde_json::from_slice::<Command>(&buf) {
            Ok(cmd) => dispatch(cmd, &tx).await,
            Err(e) => Reply::error(format!("bad request: {e}")),
        };
        write_reply(&mut wr, &reply).await?;
        if !complete {
            return Ok(());
        }
    }
}

async fn dispatch(cmd: Command, tx: &mpsc::Sender<AdminRequest>) -> Reply {
    tracing::debug!(cmd = cmd.name(), "admin command");
    let (reply_tx, reply_rx) = oneshot::channel();
    if tx.send((cmd, reply_tx)).await.is_err() {
        return Reply::error("the daemon is shutting down");
    }
    reply_rx
        .await
        .unwrap_or_else(|_| Reply::error("the daemon dropped the request"))
}

async fn write_reply(wr: &mut OwnedWriteHalf, reply: &Reply) -> std::io::Result<()> {
    let mut line = match serde_json::to_vec(reply) {
        Ok(line) if line.len() <= MAX_LINE => line,
        Ok(line) => serde_json::to_vec(&Reply::error(format!(
            "reply of {} bytes exceeds the {MAX_LINE}-byte limit; ask for fewer records",
            line.len()
        )))
        .map_err(std::io::Error::from)?,
        Err(e) => serde_json::to_vec(&Reply::error(format!("reply not encodable: {e}")))
            .map_err(std::io::Error::from)?,
    };
    line.push(b'\n');
    wr.write_all(&line).await?;
    wr.flush().await
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE.md: unwrap is fine in tests
mod tests {
    use super::*;
    use crate::admin::proto::ExtImportRow;

    /// A stand-in for the daemon: answers every command with `Done { message: <cmd name> }`,
    /// and an import with the row count.
    fn fake_daemon() -> mpsc::Sender<AdminRequest> {
        let (tx, mut rx) = mpsc::channel::<AdminRequest>(8);
        tokio::spawn(async move {
            while let Some((cmd, reply)) = rx.recv().await {
                let message = match &cmd {
                    Command::ExtImport { rows } => format!("imported {}", rows.len()),
                    other => other.name().to_owned(),
                };
                let _ = reply.send(Reply::done(message));
            }
        });
        tx
    }

    async fn start(dir: &Path) -> PathBuf {
        let path = dir.join("run").join("admin.sock");
        let listener = bind(&path).unwrap();
        tokio::spawn(run(listener, fake_daemon()));
        path
    }

    async fn read_reply(reader: &mut BufReader<tokio::net::unix::OwnedReadHalf>) -> Reply {
        let mut line = String::new();
        reader.read_line(&mut line).await.unwrap();
        assert!(line.ends_with('\n'), "reply is one line: {line:?}");
        serde_json::from_str(&line).unwrap()
    }

    #[tokio::test]
    async fn several_requests_on_one_connection_with_bad_json_in_between() {
        let dir = tempfile::tempdir().unwrap();
        let path = start(dir.path()).await;
        let (rd, mut wr) = UnixStream::connect(&path).await.unwrap().into_split();
        let mut rd = BufReader::new(rd);

        wr.write_all(b"{\"cmd\":\"status\"}\n").await.unwrap();
        assert_eq!(read_reply(&mut rd).await, Reply::done("status"));

        wr.write_all(b"{not json\n\n").await.unwrap();
        match read_reply(&mut rd).await {
            Reply::Error { message } => assert!(message.starts_with("bad request"), "{message}"),
            other => panic!("{other:?}"),
        }

        wr.write_all(b"{\"cmd\":\"format_disk\"}\n").await.unwrap();
        match read_reply(&mut rd).await {
            Reply::Error { message } => assert!(message.contains("unknown variant"), "{message}"),
            other => panic!("{other:?}"),
        }

        wr.write_all(b"\xff\xfe\n{\"cmd\":\"cdr_list\",\"limit\":3}\n")
            .await
            .unwrap();
        assert!(matches!(read_reply(&mut rd).await, Reply::Error { .. }));
        assert_eq!(read_reply(&mut rd).await, Reply::done("cdr_list"));
    }

    #[tokio::test]
    async fn blocking_client_and_large_import() {
        let dir = tempfile::tempdir().unwrap();
        let path = start(dir.path()).await;
        let rows: Vec<ExtImportRow> = (0..10_000)
            .map(|i| ExtImportRow {
                ext: format!("{}", 10_000 + i),
                password: format!("pass-word-{i:06}-abcdefgh"),
                name: Some(format!("Employee number {i}")),
            })
            .collect();
        let reply = tokio::task::spawn_blocking(move || {
            let mut client = crate::admin::Client::connect(&path, Duration::from_secs(10)).unwrap();
            let first = client.request(&Command::ExtImport { rows }).unwrap();
            let second = client.request(&Command::RegList).unwrap();
            (first, second)
        })
        .await
        .unwrap();
        assert_eq!(reply.0, Reply::done("imported 10000"));
        assert_eq!(reply.1, Reply::done("reg_list"));
    }

    #[tokio::test]
    async fn overlong_line_gets_an_error_and_the_connection_closes() {
        let dir = tempfile::tempdir().unwrap();
        let path = start(dir.path()).await;
        let (rd, mut wr) = UnixStream::connect(&path).await.unwrap().into_split();
        let mut rd = BufReader::new(rd);
        let writer = tokio::spawn(async move {
            let junk = vec![b'x'; MAX_LINE + 100];
            // The server may close while we still write; that is the point.
            let _ = wr.write_all(&junk).await;
        });
        match read_reply(&mut rd).await {
            Reply::Error { message } => assert!(message.contains("longer than"), "{message}"),
            other => panic!("{other:?}"),
        }
        let mut rest = String::new();
        assert_eq!(rd.read_line(&mut rest).await.unwrap(), 0, "closed");
        writer.await.unwrap();
    }

    #[tokio::test]
    async fn daemon_gone_is_an_error_reply() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.sock");
        let (tx, rx) = mpsc::channel::<AdminRequest>(1);
        drop(rx);
        tokio::spawn(run(bind(&path).unwrap(), tx));
        let (rd, mut wr) = UnixStream::connect(&path).await.unwrap().into_split();
        let mut rd = BufReader::new(rd);
        wr.write_all(b"{\"cmd\":\"calls\"}").await.unwrap();
        wr.shutdown().await.unwrap();
        assert_eq!(
            read_reply(&mut rd).await,
            Reply::error("the daemon is shutting down")
        );
    }

    #[tokio::test]
    async fn socket_is_private_and_stale_sockets_are_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.sock");

        // A stale socket: bound, then its listener dropped (as after a crash).
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let listener = bind(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(!temp_path(&path).exists());

        // A live socket is not stolen.
        let err = bind(&path).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
        drop(listener);

        // A regular file is never deleted.
        let file = dir.path().join("precious");
        std::fs::write(&file, b"data").unwrap();
        assert_eq!(
            bind(&file).unwrap_err().kind(),
            std::io::ErrorKind::AlreadyExists
        );
        assert_eq!(std::fs::read(&file).unwrap(), b"data");
    }
}
