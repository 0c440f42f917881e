//! `config edit`: the running configuration in the admin's editor, applied when it
//! changed; an invalid result is reported and can be edited again.

use std::path::Path;

use firmware::admin::proto::{Command, ConfigCommand, Reply};

use crate::failure::Failure;
use crate::link::Link;
use crate::render::{sanitize, show};

/// `config edit`: the running configuration in $EDITOR, then applied if it changed (an
/// invalid result is reported with the key and can be edited again).
pub fn config_edit(
    socket: &Path,
    confirm: Option<u64>,
    message: Option<String>,
    json: bool,
) -> Result<(), Failure> {
    let mut link = Link::connect(socket)?;
    let reply = link.request(&Command::Config(ConfigCommand::Show { rev: None }))?;
    let Reply::ConfigText { rev, text } = reply else {
        return show(&reply, json, None);
    };
    let dir = std::env::temp_dir();
    let path = dir.join(format!(
        "outpost-config-{}-rev{rev}.toml",
        std::process::id()
    ));
    std::fs::write(&path, &text)
        .map_err(|e| Failure::Usage(format!("cannot write {}: {e}", path.display())))?;
    let editor = std::env::var("VISUAL")
        .or_else(|_| std::env::var("EDITOR"))
        .unwrap_or_else(|_| "vi".to_string());
    loop {
        let status = std::process::Command::new(&editor)
            .arg(&path)
            .status()
            .map_err(|e| Failure::Usage(format!("cannot run the editor {editor:?}: {e}")))?;
        if !status.success() {
            let _ = std::fs::remove_file(&path);
            return Err(Failure::Usage(format!("{editor} failed; nothing applied")));
        }
        let edited = std::fs::read_to_string(&path)
            .map_err(|e| Failure::Usage(format!("cannot read {}: {e}", path.display())))?;
        if edited == text {
            let _ = std::fs::remove_file(&path);
            println!("no change");
            return Ok(());
        }
        let reply = link.request(&Command::Config(ConfigCommand::Apply {
            text: edited,
            confirm_secs: confirm,
            comment: message.clone(),
        }))?;
        if let Reply::Error { message } = &reply {
            eprintln!("outpostctl: {}", sanitize(message));
            eprint!("edit again? [Y/n] ");
            let mut answer = String::new();
            let _ = std::io::stdin().read_line(&mut answer);
            if answer.trim().eq_ignore_ascii_case("n") {
                let _ = std::fs::remove_file(&path);
                return Err(Failure::Shown(1));
            }
            continue;
        }
        let _ = std::fs::remove_file(&path);
        return show(&reply, json, None);
    }
}
