//! Planning: a parsed command line becomes the requests to send. Every argument and every
//! file is checked here, before a connection is opened, so bad input is a usage error
//! (exit 2) that never reaches the daemon.

use firmware::admin::proto::{
    validate_ext, validate_name, AdminCommand, BackupCommand, Command, ConfigCommand, FwCommand,
    PhoneCommand, SecretText, SshCommand,
};
use pbx_core::endpoint::Forwarding;

use crate::backup::backup_target;
use crate::cli::{
    AdminCmd, BackupCmd, CdrCmd, Cmd, ConfigCmd, ExtCmd, FwCmd, KeysCmd, PassphraseCmd, PhoneCmd,
    RecCmd, RegCmd, SshCmd, VmCmd,
};
use crate::failure::Failure;
use crate::import;
use crate::input::{
    obtain_password, read_input, read_key_line, read_new_admin_password, read_new_backup_passphrase,
};
use crate::render::Generated;

/// Turns the command line into the requests to send, checking all input first.
pub fn plan(cmd: Cmd) -> Result<(Vec<Command>, Option<Generated>), Failure> {
    let one = |c| Ok((vec![c], None));
    match cmd {
        Cmd::Status => one(Command::Status),
        Cmd::Ext(ExtCmd::List) => one(Command::ExtList),
        Cmd::Ext(ExtCmd::Show { ext }) => {
            validate_ext(&ext).map_err(Failure::Usage)?;
            one(Command::ExtShow { ext })
        }
        Cmd::Phone(p) => {
            let mac_ok = |mac: &str| {
                mac.parse::<pbx_core::provision::Mac>()
                    .map(|_| ())
                    .map_err(|e| Failure::Usage(format!("{mac:?}: {e}")))
            };
            one(Command::Phone(match p {
                PhoneCmd::Add {
                    mac,
                    model,
                    ext,
                    keys,
                } => {
                    mac_ok(&mac)?;
                    pbx_core::provision::Vendor::of_model(&model).map_err(Failure::Usage)?;
                    validate_ext(&ext).map_err(Failure::Usage)?;
                    for k in &keys {
                        validate_ext(k).map_err(|e| Failure::Usage(format!("--keys: {e}")))?;
                    }
                    PhoneCommand::Add {
                        mac,
                        model,
                        ext,
                        keys,
                    }
                }
                PhoneCmd::List => PhoneCommand::List,
                PhoneCmd::Del { mac } => {
                    mac_ok(&mac)?;
                    PhoneCommand::Del { mac }
                }
            }))
        }
        Cmd::Reg(RegCmd::List) => one(Command::RegList),
        Cmd::Calls => one(Command::Calls),
        Cmd::Trunks => one(Command::Trunks),
        Cmd::Metrics => one(Command::Metrics),
        Cmd::Config(c) => one(Command::Config(match c {
            ConfigCmd::Show { rev } => ConfigCommand::Show { rev },
            ConfigCmd::List => ConfigCommand::List,
            ConfigCmd::Apply {
                file,
                confirm,
                message,
            } => ConfigCommand::Apply {
                text: read_input(&file)?,
                confirm_secs: confirm,
                comment: message,
            },
            ConfigCmd::Edit { .. } => {
                return Err(Failure::Usage(
                    "`config edit` needs a terminal and a daemon to talk to".to_string(),
                ))
            }
            ConfigCmd::Confirm => ConfigCommand::Confirm,
            ConfigCmd::Rollback { rev } => ConfigCommand::Rollback { rev },
            ConfigCmd::Diff { from, to } => ConfigCommand::Diff { from, to },
        })),
        Cmd::Ext(ExtCmd::Digest { ext, algorithms }) => {
            validate_ext(&ext).map_err(Failure::Usage)?;
            one(Command::ExtDigest {
                ext,
                digest: algorithms,
            })
        }
        Cmd::Ext(ExtCmd::Dnd { ext, state }) => {
            validate_ext(&ext).map_err(Failure::Usage)?;
            one(Command::ExtDnd {
                ext,
                on: state == "on",
            })
        }
        Cmd::Ext(ExtCmd::Callerid { ext, number }) => {
            validate_ext(&ext).map_err(Failure::Usage)?;
            one(Command::ExtCallerId { ext, number })
        }
        Cmd::Ext(ExtCmd::Forward {
            ext,
            always,
            busy,
            no_answer,
            no_answer_secs,
            off,
        }) => {
            validate_ext(&ext).map_err(Failure::Usage)?;
            if !off && always.is_none() && busy.is_none() && no_answer.is_none() {
                // Clearing takes `--off`: a bare `ext forward EXT` (to look) never clears.
                return one(Command::ExtShow { ext });
            }
            let mut forwarding = Forwarding {
                always,
                busy,
                no_answer_ms: no_answer_secs.unwrap_or(0).saturating_mul(1000),
                ..Forwarding::default()
            };
            // `--no-answer A,B`: a follow-me list, checked by the daemon.
            forwarding.set_no_answer_list(no_answer.as_deref());
            one(Command::ExtForward { ext, forwarding })
        }
        Cmd::Cdr(CdrCmd::List { limit }) => one(Command::CdrList {
            limit: usize::try_from(limit).unwrap_or(usize::MAX),
        }),
        Cmd::Cdr(CdrCmd::Export { .. }) => {
            Err(Failure::Usage("cdr export runs on its own".to_owned()))
        }
        Cmd::Backup(BackupCmd::Now) => one(Command::Backup(BackupCommand::Now)),
        Cmd::Backup(BackupCmd::List { remote: false }) => one(Command::Backup(BackupCommand::List)),
        Cmd::Backup(BackupCmd::List { remote: true }) => {
            one(Command::Backup(BackupCommand::ListRemote))
        }
        Cmd::Backup(BackupCmd::Key { sftp, signing }) => {
            let mut commands = Vec::new();
            if !signing {
                commands.push(Command::Backup(BackupCommand::Key));
            }
            if !sftp {
                commands.push(Command::Backup(BackupCommand::SigningKey));
            }
            Ok((commands, None))
        }
        Cmd::Backup(BackupCmd::Passphrase(PassphraseCmd::Status)) => {
            one(Command::Backup(BackupCommand::Info))
        }
        Cmd::Backup(BackupCmd::Passphrase(PassphraseCmd::Clear)) => {
            one(Command::Backup(BackupCommand::PassphraseClear))
        }
        Cmd::Backup(BackupCmd::Passphrase(PassphraseCmd::Set)) => {
            let passphrase = read_new_backup_passphrase()?;
            one(Command::Backup(BackupCommand::PassphraseSet {
                passphrase: SecretText(passphrase),
            }))
        }
        Cmd::Backup(BackupCmd::Fetch { .. }) => {
            Err(Failure::Usage("backup fetch runs on its own".to_owned()))
        }
        Cmd::Backup(BackupCmd::Verify { file, key, trust }) => {
            let (file, key) = backup_target(&file, &key)?;
            if trust.trust_unsigned {
                eprintln!("outpostctl: warning: --trust-unsigned: a backup no trusted key signed is accepted");
            }
            one(Command::Backup(BackupCommand::Verify {
                file,
                key,
                signer: trust.signer,
                trust_unsigned: trust.trust_unsigned,
            }))
        }
        Cmd::Backup(BackupCmd::Restore { .. }) => {
            Err(Failure::Usage("backup restore runs on its own".to_owned()))
        }
        Cmd::Vm(VmCmd::List { mailbox }) => one(Command::VmList { mailbox }),
        Cmd::Vm(VmCmd::Del { id }) => one(Command::VmDel { id }),
        Cmd::Vm(VmCmd::Pin { ext, pin }) => one(Command::VmPin { ext, pin }),
        Cmd::Rec(RecCmd::List { ext }) => one(Command::RecList { ext }),
        Cmd::Rec(RecCmd::Del { id }) => one(Command::RecDel { id }),
        Cmd::Rec(RecCmd::Get { .. }) => Err(Failure::Usage("rec get runs on its own".to_owned())),
        Cmd::Fw(fw) => one(Command::Fw(match fw {
            FwCmd::Status => FwCommand::Status { cached: false },
            FwCmd::Bans => FwCommand::Bans,
            FwCmd::Unban { addr } => FwCommand::Unban {
                addr: addr.to_string(),
            },
            FwCmd::Allow { cidr } => FwCommand::Allow {
                cidr: cidr.to_string(),
            },
            FwCmd::Unlock { user } => {
                if user.is_empty() || user.len() > 64 || user.chars().any(char::is_control) {
                    return Err(Failure::Usage(format!(
                        "`{}` is not an account name",
                        user.escape_default()
                    )));
                }
                FwCommand::Unlock { user }
            }
            FwCmd::Alerts { limit } => FwCommand::Alerts {
                limit: usize::try_from(limit).unwrap_or(usize::MAX),
            },
            FwCmd::Rules => FwCommand::Rules,
            FwCmd::Import { file, ban_secs } => import::blocklist(&file, ban_secs)?,
            FwCmd::Export { .. } => FwCommand::Export,
        })),
        Cmd::Ext(ExtCmd::Del { ext }) => {
            validate_ext(&ext).map_err(Failure::Usage)?;
            one(Command::ExtDel { ext })
        }
        Cmd::Ext(ExtCmd::Add {
            ext,
            name,
            password,
        }) => {
            validate_ext(&ext).map_err(Failure::Usage)?;
            if let Some(name) = &name {
                validate_name(name).map_err(Failure::Usage)?;
            }
            let (password, generated) = obtain_password(&ext, &password)?;
            let generated = generated.then(|| Generated {
                human: format!("extension {ext} created, password: {password}"),
                password: password.clone(),
            });
            Ok((
                vec![Command::ExtAdd {
                    ext,
                    name,
                    password,
                }],
                generated,
            ))
        }
        Cmd::Ext(ExtCmd::Passwd { ext, password }) => {
            validate_ext(&ext).map_err(Failure::Usage)?;
            let (password, generated) = obtain_password(&ext, &password)?;
            let generated = generated.then(|| Generated {
                human: format!("password of extension {ext} changed, new password: {password}"),
                password: password.clone(),
            });
            Ok((vec![Command::ExtPasswd { ext, password }], generated))
        }
        Cmd::Ext(ExtCmd::Import { file }) => Ok((import::extensions(&file)?, None)),
        Cmd::Ssh(SshCmd::Keys(KeysCmd::List)) => one(Command::Ssh(SshCommand::KeysList)),
        Cmd::Ssh(SshCmd::Keys(KeysCmd::Del { key })) => {
            if key.trim().is_empty() || key.len() > 300 || key.chars().any(char::is_control) {
                return Err(Failure::Usage(format!(
                    "`{}` is neither a fingerprint nor a comment",
                    key.escape_default()
                )));
            }
            one(Command::Ssh(SshCommand::KeysDel { key }))
        }
        Cmd::Ssh(SshCmd::Keys(KeysCmd::Add { file })) => {
            let line = read_key_line(&file)?;
            one(Command::Ssh(SshCommand::KeysAdd { line }))
        }
        Cmd::Admin(AdminCmd::Passwd) => {
            let password = read_new_admin_password()?;
            one(Command::Admin(AdminCommand::Passwd { password }))
        }
        Cmd::Shell | Cmd::Login | Cmd::SshSession => Err(Failure::Usage(
            "not available here: this is already a logged-in session".to_owned(),
        )),
        Cmd::Log(_) => Err(Failure::Usage(
            "log runs its own requests (crate::logs)".to_owned(),
        )),
        Cmd::Update(_) | Cmd::Sbom { .. } => Err(Failure::Usage(
            "update and sbom run on the box, not through outpostd".to_owned(),
        )),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE.md: unwrap is fine in tests
mod tests {
    use clap::Parser;

    use firmware::admin::proto::Reply;
    use firmware::guard::feed::MAX_FEED_BYTES;

    use super::*;
    use crate::cli::Cli;
    use crate::input::{generate_password, GENERATED_PASSWORD_LEN};
    use crate::render::render;

    #[test]
    fn a_bare_ext_forward_only_looks() {
        let planned = |args: &[&str]| {
            let argv = ["outpostctl", "ext", "forward"].iter().chain(args);
            plan(Cli::try_parse_from(argv).unwrap().command).unwrap().0
        };
        assert_eq!(
            planned(&["100"]),
            vec![Command::ExtShow { ext: "100".into() }]
        );
        assert_eq!(
            planned(&["100", "--off"]),
            vec![Command::ExtForward {
                ext: "100".into(),
                forwarding: pbx_core::endpoint::Forwarding::default(),
            }]
        );
        for bad in [
            &["100", "--off", "--always", "101"][..],
            &["100", "--no-answer-secs", "5"],
        ] {
            let argv = ["outpostctl", "ext", "forward"].iter().chain(bad);
            assert!(Cli::try_parse_from(argv).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn bad_extension_is_a_usage_error_before_connecting() {
        let cli = Cli::try_parse_from(["outpostctl", "ext", "del", "10 0"]).unwrap();
        assert!(matches!(plan(cli.command), Err(Failure::Usage(_))));
        let cli =
            Cli::try_parse_from(["outpostctl", "ext", "add", "104", "--password", "104"]).unwrap();
        match plan(cli.command) {
            Err(Failure::Usage(m)) => assert!(m.contains("at least 8"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn add_without_password_generates_one_and_reports_it() {
        let cli =
            Cli::try_parse_from(["outpostctl", "ext", "add", "104", "--name", "Lab"]).unwrap();
        let (cmds, generated) = plan(cli.command).unwrap();
        let Command::ExtAdd {
            ext,
            name,
            password,
        } = &cmds[0]
        else {
            panic!("{cmds:?}")
        };
        assert_eq!((ext.as_str(), name.as_deref()), ("104", Some("Lab")));
        assert_eq!(password.len(), GENERATED_PASSWORD_LEN);
        assert!(password.chars().all(|c| c.is_ascii_alphanumeric()));
        let g = generated.unwrap();
        assert_eq!(
            g.human,
            format!("extension 104 created, password: {password}")
        );
        assert_eq!(
            render(&Reply::done("extension 104 added"), Some(&g)),
            format!("extension 104 created, password: {password}\n")
        );
        assert_ne!(generate_password("1"), generate_password("1"));
    }

    #[test]
    fn fw_commands_are_checked_before_sending() {
        let plan_of = |args: &[&str]| {
            let mut argv = vec!["outpostctl"];
            argv.extend_from_slice(args);
            plan(Cli::try_parse_from(argv).unwrap().command).map(|(c, _)| c)
        };
        assert_eq!(
            plan_of(&["fw", "unban", "2001:db8::1"]).unwrap(),
            vec![Command::Fw(FwCommand::Unban {
                addr: "2001:db8::1".into()
            })]
        );
        assert_eq!(
            plan_of(&["fw", "allow", "192.168.1.77/24"]).unwrap(),
            vec![Command::Fw(FwCommand::Allow {
                cidr: "192.168.1.0/24".into()
            })]
        );
        assert_eq!(
            plan_of(&["fw", "alerts"]).unwrap(),
            vec![Command::Fw(FwCommand::Alerts { limit: 50 })]
        );
        assert!(plan_of(&["fw", "unlock", "a\u{1b}b"]).is_err());
        assert!(Cli::try_parse_from(["outpostctl", "fw", "unban", "1.2.3"]).is_err());
        assert!(Cli::try_parse_from(["outpostctl", "fw", "allow", "10.0.0.0/40"]).is_err());
        assert!(Cli::try_parse_from(["outpostctl", "fw", "alerts", "--limit", "0"]).is_err());
    }

    #[test]
    fn fw_import_checks_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let list = dir.path().join("drop.txt");
        std::fs::write(&list, "# ours\n203.0.113.9\nnot-an-address\n").unwrap();
        let plan_of = |args: &[&str]| {
            let mut argv = vec!["outpostctl"];
            argv.extend_from_slice(args);
            plan(Cli::try_parse_from(argv).unwrap().command).map(|(c, _)| c)
        };
        let path = list.to_str().unwrap();
        assert_eq!(
            plan_of(&["fw", "import", path, "--ban-secs", "60"]).unwrap(),
            vec![Command::Fw(FwCommand::Import {
                text: "# ours\n203.0.113.9\nnot-an-address\n".into(),
                ban_secs: 60
            })]
        );
        std::fs::write(&list, "junk\n").unwrap();
        match plan_of(&["fw", "import", path]) {
            Err(Failure::Usage(m)) => assert!(m.contains("no addresses to import"), "{m}"),
            other => panic!("{other:?}"),
        }
        std::fs::write(&list, vec![b'#'; MAX_FEED_BYTES + 1]).unwrap();
        assert!(matches!(
            plan_of(&["fw", "import", path]),
            Err(Failure::Usage(_))
        ));
        assert!(
            Cli::try_parse_from(["outpostctl", "fw", "import", path, "--ban-secs", "0"]).is_err()
        );
        assert_eq!(
            plan_of(&["fw", "export", "--format", "lines"]).unwrap(),
            vec![Command::Fw(FwCommand::Export)]
        );
    }

    #[test]
    fn ssh_key_files_are_checked_before_sending() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("id.pub");
        let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl me@desk";
        let plan_of = |args: &[&str]| {
            let mut argv = vec!["outpostctl"];
            argv.extend_from_slice(args);
            plan(Cli::try_parse_from(argv).unwrap().command).map(|(c, _)| c)
        };
        let path = file.to_str().unwrap();
        std::fs::write(&file, format!("# my laptop\n{key}\n")).unwrap();
        assert_eq!(
            plan_of(&["ssh", "keys", "add", path]).unwrap(),
            vec![Command::Ssh(SshCommand::KeysAdd { line: key.into() })]
        );
        std::fs::write(&file, format!("{key}\n{key}\n")).unwrap();
        assert!(
            matches!(plan_of(&["ssh", "keys", "add", path]), Err(Failure::Usage(m)) if m.contains("found 2"))
        );
        std::fs::write(&file, "ssh-dss AAAA\n").unwrap();
        assert!(
            matches!(plan_of(&["ssh", "keys", "add", path]), Err(Failure::Usage(m)) if m.contains("not accepted"))
        );
        assert_eq!(
            plan_of(&["ssh", "keys", "del", "SHA256:abc"]).unwrap(),
            vec![Command::Ssh(SshCommand::KeysDel {
                key: "SHA256:abc".into()
            })]
        );
        assert!(plan_of(&["ssh", "keys", "del", " "]).is_err());
    }
}
