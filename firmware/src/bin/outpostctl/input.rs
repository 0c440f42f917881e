//! What the admin hands to a command before anything is sent: files and standard input
//! (bounded), passwords and passphrases asked at the terminal, generated passwords. Each
//! is checked here with the library's own validators, so bad input is a usage error
//! (exit 2) and never reaches the daemon.

use std::io::{BufRead, Read};
use std::path::Path;

use rand::distributions::Alphanumeric;
use rand::Rng;

use firmware::admin::proto::{
    validate_admin_password, validate_password, BackupKey, MAX_SSH_KEY_LINE,
};
use firmware::console;
use firmware::guard::feed::MAX_FEED_BYTES;

use crate::cli::PasswordArgs;
use crate::failure::Failure;

/// Length of generated passwords.
pub const GENERATED_PASSWORD_LEN: usize = 16;

/// The one public key line of a .pub file (or standard input), checked before sending.
pub fn read_key_line(file: &Path) -> Result<String, Failure> {
    let limit = u64::try_from(MAX_SSH_KEY_LINE * 2).unwrap_or(u64::MAX);
    let mut bytes = Vec::new();
    let result = if file.as_os_str() == "-" {
        std::io::stdin().lock().take(limit).read_to_end(&mut bytes)
    } else {
        std::fs::File::open(file).and_then(|f| f.take(limit).read_to_end(&mut bytes))
    };
    result.map_err(|e| Failure::Usage(format!("cannot read {}: {e}", file.display())))?;
    let text = String::from_utf8(bytes)
        .map_err(|_| Failure::Usage(format!("{}: not UTF-8 text", file.display())))?;
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let [line] = lines.as_slice() else {
        return Err(Failure::Usage(format!(
            "{}: expected exactly one public key line, found {}",
            file.display(),
            lines.len()
        )));
    };
    firmware::ssh::PublicKey::parse(line)
        .map_err(|e| Failure::Usage(format!("{}: {e}", file.display())))?;
    Ok((*line).to_owned())
}

/// The new console password: asked twice on a terminal, else the first line of stdin.
pub fn read_new_admin_password() -> Result<String, Failure> {
    let read = |prompt: &str| {
        console::read_secret(prompt)
            .map_err(|e| Failure::Usage(format!("cannot read the password: {e}")))?
            .ok_or_else(|| Failure::Usage("no password given".to_owned()))
    };
    let password = read("New admin password: ")?;
    validate_admin_password(&password).map_err(Failure::Usage)?;
    if std::io::IsTerminal::is_terminal(&std::io::stdin())
        && read("Repeat the password: ")? != password
    {
        return Err(Failure::Usage("the passwords differ".to_owned()));
    }
    Ok(password)
}

/// The password from the flags, or a fresh random one (second value true when generated).
pub fn obtain_password(ext: &str, args: &PasswordArgs) -> Result<(String, bool), Failure> {
    let (password, generated) = if let Some(pw) = &args.password {
        (pw.clone(), false)
    } else if args.password_stdin {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .map_err(|e| Failure::Usage(format!("cannot read the password from stdin: {e}")))?;
        let line = line.trim_end_matches(['\n', '\r']).to_owned();
        (line, false)
    } else {
        (generate_password(ext), true)
    };
    validate_password(ext, &password).map_err(Failure::Usage)?;
    Ok((password, generated))
}

/// A random password of letters and digits that passes [`validate_password`].
pub fn generate_password(ext: &str) -> String {
    let mut rng = rand::thread_rng();
    loop {
        let pw: String = (&mut rng)
            .sample_iter(&Alphanumeric)
            .take(GENERATED_PASSWORD_LEN)
            .map(char::from)
            .collect();
        if validate_password(ext, &pw).is_ok() {
            return pw;
        }
    }
}

/// The whole of a file, or of standard input for `-`, as text.
pub fn read_input(file: &Path) -> Result<String, Failure> {
    let mut text = String::new();
    let result = if file.as_os_str() == "-" {
        std::io::stdin()
            .lock()
            .read_to_string(&mut text)
            .map(|_| ())
    } else {
        std::fs::File::open(file).and_then(|mut f| f.read_to_string(&mut text).map(|_| ()))
    };
    result.map_err(|e| Failure::Usage(format!("cannot read {}: {e}", file.display())))?;
    Ok(text)
}

/// Reads at most [`MAX_FEED_BYTES`] of a blocklist (`-` = standard input).
pub fn read_blocklist(file: &Path) -> Result<String, Failure> {
    let limit = MAX_FEED_BYTES as u64 + 1;
    let mut bytes = Vec::new();
    let result = if file.as_os_str() == "-" {
        std::io::stdin().lock().take(limit).read_to_end(&mut bytes)
    } else {
        std::fs::File::open(file).and_then(|f| f.take(limit).read_to_end(&mut bytes))
    };
    result.map_err(|e| Failure::Usage(format!("cannot read {}: {e}", file.display())))?;
    if bytes.len() > MAX_FEED_BYTES {
        return Err(Failure::Usage(format!(
            "{}: larger than 1 MiB; split it into smaller files",
            file.display()
        )));
    }
    String::from_utf8(bytes)
        .map_err(|_| Failure::Usage(format!("{}: not UTF-8 text", file.display())))
}

/// The new backup passphrase: asked twice without echo on a terminal, else the first line
/// of standard input.
pub fn read_new_backup_passphrase() -> Result<String, Failure> {
    let passphrase = if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        let first = rpassword::prompt_password("New backup passphrase: ")
            .map_err(|e| Failure::Usage(format!("cannot read the passphrase: {e}")))?;
        let again = rpassword::prompt_password("Again: ")
            .map_err(|e| Failure::Usage(format!("cannot read the passphrase: {e}")))?;
        if first != again {
            return Err(Failure::Usage("the two passphrases differ".to_owned()));
        }
        first
    } else {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .take(4096)
            .read_line(&mut line)
            .map_err(|e| Failure::Usage(format!("cannot read the passphrase from stdin: {e}")))?;
        line.trim_end_matches(['\n', '\r']).to_owned()
    };
    firmware::backup::secret::check(&passphrase).map_err(|e| Failure::Usage(e.to_string()))?;
    Ok(passphrase)
}

/// An age identity file (`-`: standard input), read here where outpostctl runs and checked
/// before it is sent.
pub fn read_identity(path: &Path) -> Result<BackupKey, Failure> {
    let text = read_input(path)?;
    if text.len() > 64 * 1024 {
        return Err(Failure::Usage(format!(
            "{}: too large for an identity file",
            path.display()
        )));
    }
    firmware::backup::crypto::Decryption::identity_text(&text)
        .map_err(|e| Failure::Usage(format!("{}: {e}", path.display())))?;
    Ok(BackupKey::Identity(text))
}
