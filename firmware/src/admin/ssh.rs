//! The admin side of SSH keys: runs an [`SshCommand`] with the `[ssh]` section and the
//! admin socket's path, and turns the typed outcome into the wire [`Reply`].

use pbx_core::Millis;

use crate::admin::proto::Reply;
use crate::config::Config;
use crate::ssh::api::{SshCommand, SshOutcome};
use crate::ssh::SshError;
use crate::store::Store;

/// Runs `cmd` against the key list in `store` (blocking: it may rewrite authorized_keys).
pub fn execute(
    cfg: &Config,
    store: &Store,
    now: Millis,
    cmd: SshCommand,
) -> Result<Reply, SshError> {
    crate::ssh::execute(&cfg.ssh, &cfg.admin.socket, store, now, cmd).map(to_reply)
}

/// The wire reply for an SSH-key outcome.
pub fn to_reply(outcome: SshOutcome) -> Reply {
    match outcome {
        SshOutcome::Keys(keys) => Reply::SshKeys(keys),
        SshOutcome::Done(message) => Reply::done(message),
    }
}
