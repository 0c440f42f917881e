//! One command line against outpostd: the commands with a dialogue of their own (config
//! edit, cdr export, backup restore and fetch, update and sbom, which run here on the box)
//! go to their modules; every other one is planned into requests ([`crate::plan`]), sent in
//! order over one [`Link`], and each reply shown as it arrives.

use firmware::admin::proto::Reply;
use firmware::config::default_socket_path;
use firmware::update::Layout;

use crate::backup::{backup_fetch, backup_restore};
use crate::cli::{BackupCmd, CdrCmd, Cli, Cmd, ConfigCmd, FwCmd, RecCmd};
use crate::editor::config_edit;
use crate::export::{cdr_export, write_export};
use crate::failure::Failure;
use crate::link::Link;
use crate::logs::log_cmd;
use crate::plan::plan;
use crate::recordings::rec_get;
use crate::render::show;
use crate::updates::{sbom, update_cmd};

/// Runs `cli` (not a session command: the session module runs those).
pub fn run(cli: Cli) -> Result<(), Failure> {
    let socket = cli.socket.clone().unwrap_or_else(default_socket_path);
    if let Cmd::Config(ConfigCmd::Edit { confirm, message }) = &cli.command {
        return config_edit(&socket, *confirm, message.clone(), cli.json);
    }
    if let Cmd::Cdr(CdrCmd::Export { format, from, to }) = &cli.command {
        return cdr_export(&socket, *format, from.as_deref(), to.as_deref());
    }
    if let Cmd::Backup(BackupCmd::Restore {
        file,
        key,
        trust,
        no_wait,
    }) = &cli.command
    {
        return backup_restore(&socket, file, key, trust, !*no_wait, cli.json);
    }
    if let Cmd::Backup(BackupCmd::Fetch { name, target }) = &cli.command {
        return backup_fetch(&socket, name.clone(), target.clone(), cli.json);
    }
    match &cli.command {
        Cmd::Rec(RecCmd::Get { id, file }) => return rec_get(&socket, *id, file),
        Cmd::Log(args) => return log_cmd(&socket, args, cli.json),
        Cmd::Update(u) => return update_cmd(u, &socket, cli.json),
        Cmd::Sbom { summary } => return sbom(&Layout::system(), *summary, cli.json),
        _ => {}
    }
    let export = match &cli.command {
        Cmd::Fw(FwCmd::Export { out, format }) => Some((out.clone(), *format)),
        _ => None,
    };
    let (commands, generated) = plan(cli.command)?;
    let mut link = Link::connect(&socket)?;
    for command in &commands {
        let reply = link.request(command)?;
        match (&export, &reply) {
            (Some((out, format)), Reply::FwExport(doc)) => {
                write_export(doc, *format, out.as_deref())?;
            }
            _ => show(&reply, cli.json, generated.as_ref())?,
        }
    }
    Ok(())
}
