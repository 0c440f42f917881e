//! The configuration commands (`config show|list|apply|confirm|rollback|diff`): read the
//! revisions, and put a configuration into force through the daemon, which alone knows how
//! to re-plumb itself ([`Reconfigure`]).

use pbx_core::Millis;

use crate::admin::proto::{ConfigCommand, Reply};
use crate::revisions::Revisions;

/// What the configuration commands need from the daemon.
pub trait Reconfigure {
    /// The configuration revisions.
    fn revisions(&self) -> &Revisions;
    /// The running configuration's text.
    fn running_text(&self) -> &str;
    /// The revision applied with a deadline that is not confirmed yet.
    fn awaiting_confirmation(&self) -> Option<u32>;
    /// Confirms the pending revision; the one confirmed, if any.
    fn confirm(&mut self) -> anyhow::Result<Option<u32>>;
    /// Validates and applies `text` as a new revision (rolled back unless confirmed within
    /// `confirm_secs`); what changed, in words.
    fn apply(
        &mut self,
        now: Millis,
        text: &str,
        confirm_secs: Option<u64>,
        comment: &str,
    ) -> anyhow::Result<String>;
    /// Applies revision `rev` again as a new revision.
    fn rollback_to(&mut self, now: Millis, rev: u32, comment: &str) -> anyhow::Result<String>;
}

/// Carries out a configuration command against the daemon.
pub fn execute(
    daemon: &mut impl Reconfigure,
    now: Millis,
    cmd: ConfigCommand,
) -> anyhow::Result<Reply> {
    Ok(match cmd {
        ConfigCommand::Show { rev: None } => Reply::ConfigText {
            rev: daemon.revisions().current().map_or(0, |r| r.rev),
            text: daemon.running_text().to_owned(),
        },
        ConfigCommand::Show { rev: Some(rev) } => Reply::ConfigText {
            rev,
            text: daemon.revisions().text(rev)?,
        },
        ConfigCommand::List => Reply::ConfigRevisions(daemon.revisions().list().to_vec()),
        ConfigCommand::Apply {
            text,
            confirm_secs,
            comment,
        } => {
            if confirm_secs.is_some_and(|s| !(10..=3600).contains(&s)) {
                anyhow::bail!("--confirm must be between 10 and 3600 seconds");
            }
            let confirm = confirm_secs;
            if let Some(rev) = daemon.awaiting_confirmation() {
                anyhow::bail!("revision {rev} is waiting for confirmation: `config confirm` or `config rollback` first");
            }
            crate::config::Config::refuse_fixed_keys(&text)?;
            let comment = comment.unwrap_or_else(|| "outpostctl config apply".to_string());
            Reply::done(daemon.apply(now, &text, confirm, &comment)?)
        }
        ConfigCommand::Confirm => match daemon.confirm()? {
            Some(rev) => Reply::done(format!("revision {rev} confirmed")),
            None => Reply::done("nothing waits for confirmation"),
        },
        ConfigCommand::Rollback { rev } => {
            let current = daemon.revisions().current().map_or(0, |r| r.rev);
            let target = match rev {
                Some(r) => r,
                None => daemon
                    .revisions()
                    .previous_applied(current)
                    .map(|r| r.rev)
                    .ok_or_else(|| anyhow::anyhow!("there is no earlier revision"))?,
            };
            let msg = daemon.rollback_to(now, target, &format!("rollback to {target}"))?;
            Reply::done(msg)
        }
        ConfigCommand::Diff { from, to } => {
            let current = daemon.revisions().current().map_or(0, |r| r.rev);
            let to = to.unwrap_or(current);
            let from = match from {
                Some(f) => f,
                None => daemon
                    .revisions()
                    .list()
                    .iter()
                    .rev()
                    .map(|r| r.rev)
                    .find(|r| *r < to)
                    .ok_or_else(|| anyhow::anyhow!("there is no earlier revision"))?,
            };
            let text = crate::revisions::diff(
                &daemon.revisions().text(from)?,
                &daemon.revisions().text(to)?,
                &format!("revision {from}"),
                &format!("revision {to}"),
            );
            Reply::ConfigText { rev: 0, text }
        }
    })
}
