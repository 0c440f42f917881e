//! The typed operations on the console password and their results. Only the admin layer
//! turns a [`ConsoleOutcome`] or a [`super::ConsoleError`] into a wire reply.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

pub use firewall::detect::LoginService;

/// An admin-password command; travels inside the admin protocol's `Command::Admin`. The password is never
/// logged; the daemon keeps only an Argon2id hash.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(tag = "admin", rename_all = "snake_case", deny_unknown_fields)]
pub enum AdminCommand {
    /// Whether a console password is set.
    Status,
    /// Set (or replace) the console password.
    Passwd {
        /// The new plain password (at least [`crate::names::MIN_ADMIN_PASSWORD_LEN`] characters).
        password: String,
    },
    /// Check the admin password (at the console, or for a client such as the web page).
    Login {
        /// The password typed.
        password: String,
        /// The address the login came from, for a network client: a refused login is
        /// reported to the firewall as a failed login of that source (rule
        /// `auth_failures`), and a source banned now is refused without a check. Absent:
        /// a local login (console, `outpostctl`), which feeds nothing.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        source: Option<IpAddr>,
        /// Which service the login is for, named in the firewall's alerts and ban reasons
        /// (`web` or `ssh`); absent with a `source`: `web`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        service: Option<LoginService>,
    },
}

impl AdminCommand {
    /// The wire name of the command, for logs (never the password).
    pub fn name(&self) -> &'static str {
        match self {
            AdminCommand::Status => "admin_status",
            AdminCommand::Passwd { .. } => "admin_passwd",
            AdminCommand::Login { .. } => "admin_login",
        }
    }
}

/// The console password's state.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct AdminInfo {
    /// A console password is set.
    pub password_set: bool,
}

/// What the daemon made of a console password.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LoginOutcome {
    /// The password is right.
    Accepted,
    /// The password is wrong.
    Refused,
    /// No password is set yet: nobody can log in at the console.
    NoPassword,
}

/// What a console-password operation produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsoleOutcome {
    /// `status`: whether a password is set.
    Info(AdminInfo),
    /// `login`: what the daemon made of the password.
    Login(LoginOutcome),
    /// `passwd`: a one-line confirmation.
    Done(String),
}
