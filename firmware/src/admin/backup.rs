//! The admin side of backups: builds the subsystem's [`Context`] from the configuration,
//! hands it a [`BackupCommand`] and turns the typed outcome into the wire [`Reply`].

use std::sync::Arc;

use pbx_core::Millis;
use tokio::sync::oneshot;

use crate::admin::proto::Reply;
use crate::backup::api::{BackupCommand, BackupOutcome};
use crate::backup::{BackupError, Backups, Context};
use crate::config::Config;
use crate::store::Store;

/// What backups need from a configuration: its `[backup]` section, the data directory, the
/// SSH host key's path and the box's name.
pub fn context(cfg: &Config, store: Arc<Store>) -> Context {
    Context {
        store,
        data_dir: cfg.store.data_dir.clone(),
        cfg: cfg.backup.clone(),
        ssh_host_key: cfg.ssh.host_key_path(&cfg.store.data_dir),
        hostname: crate::system::hostname(&cfg.system),
    }
}

/// Runs `cmd` off the daemon's loop; `reply` gets the wire reply when it is done.
pub fn execute(
    backups: &Backups,
    ctx: Context,
    now: Millis,
    cmd: BackupCommand,
    reply: oneshot::Sender<Reply>,
) {
    let (tx, rx) = oneshot::channel();
    backups.command(ctx, now, cmd, tx);
    tokio::spawn(async move {
        // A job that died without answering drops `reply` too, as the server expects.
        if let Ok(result) = rx.await {
            let _ = reply.send(to_reply(result));
        }
    });
}

/// The wire reply for a backup operation's result.
pub fn to_reply(result: Result<BackupOutcome, BackupError>) -> Reply {
    match result {
        Ok(BackupOutcome::List(list)) => Reply::Backups(list),
        Ok(BackupOutcome::Created(entry)) => Reply::BackupCreated(entry),
        Ok(BackupOutcome::Verified(contents)) => Reply::BackupVerified(contents),
        Ok(BackupOutcome::RestoreStaged(staged)) => Reply::RestoreStaged(staged),
        Ok(BackupOutcome::Upload(state)) => Reply::BackupUpload(state),
        Ok(BackupOutcome::Fetched(fetched)) => Reply::BackupFetched(fetched),
        Ok(BackupOutcome::HostKey { line, fingerprint }) => Reply::HostKey { line, fingerprint },
        Ok(BackupOutcome::Remote(listings)) => Reply::RemoteBackups(listings),
        Ok(BackupOutcome::Info(info)) => Reply::BackupInfo(info),
        Ok(BackupOutcome::Done(message)) => Reply::done(message),
        Ok(BackupOutcome::Chunk(chunk)) => Reply::FileChunk(chunk),
        Err(err) => Reply::error(err.to_string()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE.md: unwrap is fine in tests
mod tests {
    use super::*;

    #[test]
    fn outcomes_and_errors_keep_their_wire_shape() {
        assert_eq!(
            to_reply(Ok(BackupOutcome::Done("upload abandoned".into()))),
            Reply::done("upload abandoned")
        );
        assert_eq!(
            to_reply(Err(BackupError::Busy)),
            Reply::error("a backup or restore is already running; try again when it has finished")
        );
        let json = serde_json::to_string(&to_reply(Ok(BackupOutcome::HostKey {
            line: "ssh-ed25519 AAAA".into(),
            fingerprint: "SHA256:x".into(),
        })))
        .unwrap();
        assert!(json.starts_with(r#"{"reply":"host_key""#), "{json}");
    }
}
