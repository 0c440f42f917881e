//! The daemon side of the admin socket: accepts connections, parses [`Command`] lines and
//! forwards each to the task that owns the endpoint, then writes its [`Reply`] back.
//!
//! The server never touches live state itself: it only moves typed commands and replies.
//!
//! Who may connect ([`Access`]): root, the daemon's own user, and members of the admin group
//! (`outpostd --admin-group`, on the image `outpost-admin`, the SSH admin's group). The
//! socket is mode 0660 in that group (0600 without one), and each connection's peer is
//! checked with SO_PEERCRED before a byte of it is read: anyone else gets one error line,
//! is logged, and is disconnected.

use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::proto::{Command, Reply, MAX_LINE};

/// One command on its way to the daemon, with the channel its reply goes back on.
pub type AdminRequest = (Command, oneshot::Sender<Reply>);

/// Most admin connections served at once; more are told to retry.
pub const MAX_CONNECTIONS: usize = 32;

/// Refused connections logged per minute; the rest are counted in the next line logged.
const REFUSALS_LOGGED_PER_MINUTE: u32 = 10;

/// Who may use the admin socket: root, the daemon's own user, and members of the admin
/// group.
#[derive(Debug, Clone)]
pub struct Access {
    daemon_uid: u32,
    group: Option<AdminGroup>,
}

#[derive(Debug, Clone)]
struct AdminGroup {
    name: String,
    gid: u32,
}

/// Why the admin socket cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    /// The configured admin group is not in the group database.
    #[error("the admin group `{0}` does not exist")]
    NoGroup(String),
}

impl Access {
    /// The rule for this process: its own user, root, and members of `group` (looked up
    /// now; membership is read again for each connection).
    pub fn new(group: Option<&str>) -> Result<Access, AccessError> {
        let group = match group {
            None => None,
            Some(name) => match nix::unistd::Group::from_name(name) {
                Ok(Some(g)) => Some(AdminGroup {
                    name: name.to_owned(),
                    gid: g.gid.as_raw(),
                }),
                _ => return Err(AccessError::NoGroup(name.to_owned())),
            },
        };
        Ok(Access {
            daemon_uid: nix::unistd::geteuid().as_raw(),
            group,
        })
    }

    /// Root and this process's user only.
    pub fn owner_only() -> Access {
        Access {
            daemon_uid: nix::unistd::geteuid().as_raw(),
            group: None,
        }
    }

    /// Whether the peer `(uid, gid)` may use the socket; the refusal says why.
    pub fn check(&self, uid: u32, gid: u32) -> Result<(), String> {
        let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
            .ok()
            .flatten();
        let members = match &self.group {
            Some(g) => nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(g.gid))
                .ok()
                .flatten()
                .map(|g| g.mem)
                .unwrap_or_default(),
            None => Vec::new(),
        };
        let account = user.as_ref().map(|u| (u.name.as_str(), u.gid.as_raw()));
        if self.allows(uid, gid, account, &members) {
            return Ok(());
        }
        Err(match &self.group {
            Some(g) => format!(
                "uid {uid} is not root, the daemon's user or a member of group `{}`",
                g.name
            ),
            None => format!("uid {uid} is not root or the daemon's user"),
        })
    }

    /// The rule itself: `account` is the peer's (name, primary gid) from the user
    /// database, `members` the admin group's listed members.
    fn allows(&self, uid: u32, gid: u32, account: Option<(&str, u32)>, members: &[String]) -> bool {
        if uid == 0 || uid == self.daemon_uid {
            return true;
        }
        let Some(group) = &self.group else {
            return false;
        };
        gid == group.gid
            || account.is_some_and(|(name, primary)| {
                primary == group.gid || members.iter().any(|m| m == name)
            })
    }
}

/// Creates the socket at `path`: mode 0660 in the admin group of `access`, else 0600
/// (a missing parent directory is created 0750 in that group, else 0700).
///
/// A stale socket left by a crashed daemon is replaced; a socket another daemon still
/// listens on is an `AddrInUse` error; any other file at `path` is left alone and is an
/// `AlreadyExists` error. The socket is bound under a temporary name, restricted, then
/// renamed into place, so it is never reachable with looser permissions. Must be called
/// inside a tokio runtime.
pub fn bind(path: &Path, access: &Access) -> std::io::Result<UnixListener> {
    use std::io::{Error, ErrorKind};

    let gid = access.group.as_ref().map(|g| g.gid);
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !parent.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(if gid.is_some() { 0o750 } else { 0o700 })
                .create(parent)?;
            if gid.is_some() {
                std::os::unix::fs::chown(parent, None, gid)?;
                std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o750))?;
            }
        }
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
    // The umask made it 0600 or tighter; only then may the group in.
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
    if gid.is_some() {
        std::os::unix::fs::chown(&tmp, None, gid)?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o660))?;
    }
    std::fs::rename(&tmp, path)?;
    Ok(listener)
}

fn temp_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".new");
    PathBuf::from(s)
}

/// Accepts connections on `listener` forever, one task per connection, each peer checked
/// against `access` first.
pub async fn run(
    listener: UnixListener,
    tx: mpsc::Sender<AdminRequest>,
    access: Access,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut refusals = RefusalLog::new(Instant::now());
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
        let verdict = match stream.peer_cred() {
            Ok(cred) => access
                .check(cred.uid(), cred.gid())
                .map_err(|why| (why, cred.uid(), cred.pid())),
            Err(e) => Err((format!("the peer is unknown ({e})"), u32::MAX, None)),
        };
        if let Err((why, uid, pid)) = verdict {
            if let Some(also) = refusals.allow(Instant::now()) {
                tracing::warn!(uid, pid, "admin socket: connection refused: {why}{also}");
            }
            tokio::spawn(async move {
                let (mut rd, mut wr) = stream.into_split();
                let reply = Reply::error(format!("permission denied: {why}"));
                let _ = write_reply(&mut wr, &reply).await;
                // Whatever the peer sends is thrown away unparsed; it is drained (bounded in
                // time and bytes) so the client reads the refusal instead of a broken pipe.
                let mut sink = [0u8; 4096];
                let mut total = 0usize;
                let _ = tokio::time::timeout(Duration::from_secs(2), async {
                    while let Ok(n) = rd.read(&mut sink).await {
                        total += n;
                        if n == 0 || total > MAX_LINE {
                            break;
                        }
                    }
                })
                .await;
            });
            continue;
        }
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

/// At most [`REFUSALS_LOGGED_PER_MINUTE`] refusal lines a minute: a local user cannot fill
/// the log by connecting in a loop.
#[derive(Debug)]
struct RefusalLog {
    window_start: Instant,
    logged: u32,
    suppressed: u64,
}

impl RefusalLog {
    fn new(now: Instant) -> Self {
        RefusalLog {
            window_start: now,
            logged: 0,
            suppressed: 0,
        }
    }

    /// Some(suffix naming the refusals not logged before) when this one may be logged.
    fn allow(&mut self, now: Instant) -> Option<String> {
        if now.duration_since(self.window_start) >= Duration::from_secs(60) {
            self.window_start = now;
            self.logged = 0;
        }
        if self.logged >= REFUSALS_LOGGED_PER_MINUTE {
            self.suppressed += 1;
            return None;
        }
        self.logged += 1;
        let also = std::mem::take(&mut self.suppressed);
        Some(if also > 0 {
            format!(" ({also} more refused without a log line)")
        } else {
            String::new()
        })
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

/// Hands `cmd` to the daemon's loop and waits for its reply (the socket's and the web page's path).
pub async fn dispatch(cmd: Command, tx: &mpsc::Sender<AdminRequest>) -> Reply {
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
        let listener = bind(&path, &Access::owner_only()).unwrap();
        tokio::spawn(run(listener, fake_daemon(), Access::owner_only()));
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
        let access = Access::owner_only();
        tokio::spawn(run(bind(&path, &access).unwrap(), tx, access));
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
        let listener = bind(&path, &Access::owner_only()).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(!temp_path(&path).exists());

        // A live socket is not stolen.
        let err = bind(&path, &Access::owner_only()).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
        drop(listener);

        // A regular file is never deleted.
        let file = dir.path().join("precious");
        std::fs::write(&file, b"data").unwrap();
        assert_eq!(
            bind(&file, &Access::owner_only()).unwrap_err().kind(),
            std::io::ErrorKind::AlreadyExists
        );
        assert_eq!(std::fs::read(&file).unwrap(), b"data");
    }

    #[test]
    fn only_root_the_daemon_and_the_admin_group_get_in() {
        let access = Access {
            daemon_uid: 100,
            group: Some(AdminGroup {
                name: "outpost-admin".into(),
                gid: 1000,
            }),
        };
        let none: &[String] = &[];
        assert!(access.allows(0, 0, Some(("root", 0)), none));
        assert!(access.allows(100, 100, Some(("outpost", 100)), none));
        // The admin: by the connection's gid, the account's primary group or membership.
        assert!(access.allows(1000, 1000, Some(("admin", 1000)), none));
        assert!(access.allows(1000, 50, Some(("admin", 1000)), none));
        assert!(access.allows(1001, 50, Some(("ops", 50)), &["ops".to_owned()]));
        // Anyone else: nobody, an unknown uid, a member of some other group.
        assert!(!access.allows(65534, 65534, Some(("nobody", 65534)), none));
        assert!(!access.allows(4242, 4242, None, &["ops".to_owned()]));
        assert!(!access.allows(1001, 50, Some(("ops", 50)), &["admin".to_owned()]));
        let owner = Access {
            daemon_uid: 100,
            group: None,
        };
        assert!(!owner.allows(1000, 1000, Some(("admin", 1000)), none));
        assert!(owner.allows(100, 100, None, none));
        // The real lookup names the rule it applied.
        let access = Access::owner_only();
        let uid = nix::unistd::geteuid().as_raw();
        let stranger = if uid == 0 { 65534 } else { 0 };
        assert!(access.check(uid, 0).is_ok());
        if stranger != 0 {
            assert!(access
                .check(stranger, stranger)
                .unwrap_err()
                .contains("uid 65534"));
        }
        assert!(matches!(
            Access::new(Some("no-such-group-outpost")),
            Err(AccessError::NoGroup(_))
        ));
    }

    #[test]
    fn refusals_are_logged_within_a_budget() {
        let t0 = Instant::now();
        let mut log = RefusalLog::new(t0);
        let logged = (0..100).filter(|_| log.allow(t0).is_some()).count();
        assert_eq!(logged, 10);
        let next = log.allow(t0 + Duration::from_secs(61)).unwrap();
        assert!(next.contains("90 more"), "{next}");
    }
}
