//! `outpostctl`: the admin CLI. Talks to a running `outpostd` over its Unix control socket.
//!
//! Exit codes: 0 success, 1 the daemon refused the command, 2 usage or input error (nothing
//! was sent), 3 the daemon could not be reached or the connection broke.
//!
//! The binary is the client's terminal side only: the protocol, validation, the shell's
//! line editing, backups and updates live in the `firmware` library. Here, from the top:
//! [`cli`] (the clap tree) → [`session`] (shell, console login, SSH forced command) →
//! [`run`] (one command line) → [`plan`] / [`import`] / [`input`] (requests built and
//! checked before sending) → [`link`] (the admin socket) → [`render`] (tables and JSON);
//! beside them the commands with a dialogue of their own: [`editor`], [`export`],
//! [`backup`], [`updates`].

mod backup;
mod cli;
mod editor;
mod export;
mod failure;
mod import;
mod input;
mod link;
mod logs;
mod plan;
mod recordings;
mod render;
mod run;
mod session;
mod updates;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::Cli;
use crate::session::Session;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match Session::of(&cli).dispatch(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => ExitCode::from(failure.report()),
    }
}
