//! The admin side of the console password: runs an [`AdminCommand`] and turns the typed
//! outcome into the wire [`Reply`].

use crate::admin::proto::Reply;
use crate::console::api::{AdminCommand, ConsoleOutcome};
use crate::console::ConsoleError;
use crate::store::Store;

/// Runs `cmd` against the password hash in `store` (blocking: one Argon2id run).
pub fn execute(store: &Store, cmd: AdminCommand) -> Result<Reply, ConsoleError> {
    crate::console::execute(store, cmd).map(to_reply)
}

/// The wire reply for a console-password outcome.
pub fn to_reply(outcome: ConsoleOutcome) -> Reply {
    match outcome {
        ConsoleOutcome::Info(info) => Reply::Admin(info),
        ConsoleOutcome::Login(login) => Reply::Login(login),
        ConsoleOutcome::Done(message) => Reply::done(message),
    }
}
