//! Keys an image trusts: update signing keys (`outpost-bundle` key lines, baked as
//! /etc/outpost/update-keys/<id>.pub) and the admin's SSH keys (authorized_keys lines, baked
//! as /etc/outpost/admin-keys.pub). `keygen` makes an update key pair.

use std::io::Write;
use std::path::{Path, PathBuf};

use ed25519_dalek::VerifyingKey;

/// Why a key file was refused.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Reading or writing a key file failed.
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        error: std::io::Error,
    },
    /// keygen never overwrites a key.
    #[error("{0} exists already (keygen never overwrites a key)")]
    Exists(PathBuf),
    /// Not an update key line.
    #[error("{path}: {error}")]
    Update {
        /// The file.
        path: PathBuf,
        /// What the bundle crate said.
        error: outpost_bundle::BundleError,
    },
    /// A secret key where a public one belongs.
    #[error(
        "{0} is a SECRET update key: pass the .pub file (the secret never goes into an image)"
    )]
    SecretGiven(PathBuf),
    /// A line that is no authorized_keys entry.
    #[error("{path} line {line}: {reason}")]
    Ssh {
        /// The file.
        path: PathBuf,
        /// Line number (1-based).
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// An SSH key file without a single key.
    #[error("{0} holds no SSH key")]
    NoSshKey(PathBuf),
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> KeyError + '_ {
    move |error| KeyError::Io {
        path: path.to_owned(),
        error,
    }
}

/// An update key pair written by [`keygen`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPair {
    /// Key id (`outpost_bundle::key_id`).
    pub id: String,
    /// The secret key file (mode 0600).
    pub secret: PathBuf,
    /// The public key file.
    pub public: PathBuf,
}

/// `PREFIX.key` and `PREFIX.pub` beside each other.
fn key_paths(prefix: &Path) -> (PathBuf, PathBuf) {
    let with = |ext: &str| {
        let mut s = prefix.as_os_str().to_owned();
        s.push(ext);
        PathBuf::from(s)
    };
    (with(".key"), with(".pub"))
}

/// Generates an update key pair into `PREFIX.key` (0600) and `PREFIX.pub`; refuses to
/// overwrite either file.
pub fn keygen(prefix: &Path, comment: &str) -> Result<KeyPair, KeyError> {
    use std::os::unix::fs::OpenOptionsExt;
    let (secret, public) = key_paths(prefix);
    for p in [&secret, &public] {
        if p.exists() {
            return Err(KeyError::Exists(p.clone()));
        }
    }
    if let Some(dir) = prefix.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io_error(dir))?;
    }
    let key = outpost_bundle::generate_key();
    let comment = comment.replace(['\n', '\r'], " ");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&secret)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => KeyError::Exists(secret.clone()),
            _ => KeyError::Io {
                path: secret.clone(),
                error: e,
            },
        })?;
    f.write_all(outpost_bundle::secret_key_line(&key, &comment).as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(io_error(&secret))?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(&public)
        .map_err(io_error(&public))?;
    f.write_all(outpost_bundle::public_key_line(&key.verifying_key(), &comment).as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(io_error(&public))?;
    Ok(KeyPair {
        id: outpost_bundle::key_id(&key.verifying_key()),
        secret,
        public,
    })
}

/// A trusted update key for the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdateKey {
    /// Key id: the file name in /etc/outpost/update-keys/.
    pub id: String,
    /// The public key line to bake (with its comment).
    pub line: String,
}

/// Reads a public update key file.
pub fn read_update_key(path: &Path) -> Result<UpdateKey, KeyError> {
    let text = std::fs::read_to_string(path).map_err(io_error(path))?;
    parse_update_key(&text).map_err(|e| match e {
        KeyError::Update { error, .. } => {
            if outpost_bundle::parse_secret_key(&text).is_ok() {
                KeyError::SecretGiven(path.to_owned())
            } else {
                KeyError::Update {
                    path: path.to_owned(),
                    error,
                }
            }
        }
        other => other,
    })
}

/// The update key in a public key file's text.
fn parse_update_key(text: &str) -> Result<UpdateKey, KeyError> {
    let key: VerifyingKey =
        outpost_bundle::parse_public_key(text).map_err(|error| KeyError::Update {
            path: PathBuf::new(),
            error,
        })?;
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .unwrap_or_default();
    Ok(UpdateKey {
        id: outpost_bundle::key_id(&key),
        line: format!("{line}\n"),
    })
}

/// The development key pair under `dir` (`dev.key`, `dev.pub`), generated on first use.
/// Returns the public key and whether it was just made.
pub fn dev_key(dir: &Path) -> Result<(UpdateKey, PathBuf, bool), KeyError> {
    let prefix = dir.join("dev");
    let (secret, public) = key_paths(&prefix);
    let made = if public.exists() {
        false
    } else {
        keygen(&prefix, "outpost development key (NOT for release images)")?;
        true
    };
    Ok((read_update_key(&public)?, secret, made))
}

/// Checks authorized_keys text; returns its key lines (comments and blank lines dropped).
pub fn parse_ssh_keys(path: &Path, text: &str) -> Result<Vec<String>, KeyError> {
    let mut out = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        check_ssh_line(line).map_err(|reason| KeyError::Ssh {
            path: path.to_owned(),
            line: n + 1,
            reason,
        })?;
        out.push(line.to_owned());
    }
    if out.is_empty() {
        return Err(KeyError::NoSshKey(path.to_owned()));
    }
    Ok(out)
}

/// One key line, checked exactly as the box checks it when the first boot imports it
/// (`outpostctl ssh keys add`): `TYPE BASE64 [comment]`, no options (the box adds its own
/// forced command and restrictions).
fn check_ssh_line(line: &str) -> Result<(), String> {
    outpost_sshkey::PublicKey::parse(line)
        .map(|_| ())
        .map_err(|e| format!("{e}: {:?}", shorten(line)))
}

fn shorten(line: &str) -> String {
    line.chars().take(40).collect()
}

/// Reads and checks SSH key files; returns the admin-keys.pub text.
pub fn admin_keys(paths: &[PathBuf]) -> Result<String, KeyError> {
    let mut out = String::new();
    for p in paths {
        let text = std::fs::read_to_string(p).map_err(io_error(p))?;
        for line in parse_ssh_keys(p, &text)? {
            if !out.lines().any(|l| l == line) {
                out.push_str(&line);
                out.push('\n');
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    fn ssh_line(kind: &str, comment: &str) -> String {
        let mut blob = u32::try_from(kind.len())
            .expect("short")
            .to_be_bytes()
            .to_vec();
        blob.extend_from_slice(kind.as_bytes());
        blob.extend_from_slice(&32u32.to_be_bytes());
        blob.extend_from_slice(&[7u8; 32]);
        format!(
            "{kind} {} {comment}",
            base64::engine::general_purpose::STANDARD.encode(blob)
        )
    }

    #[test]
    fn keygen_writes_a_private_secret_and_a_public_line_and_never_overwrites() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let prefix = dir.path().join("keys/release");
        let pair = keygen(&prefix, "release 2025").expect("keygen");
        let mode = std::fs::metadata(&pair.secret)
            .expect("secret")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let secret =
            outpost_bundle::parse_secret_key(&std::fs::read_to_string(&pair.secret).expect("read"))
                .expect("secret line");
        let public = read_update_key(&pair.public).expect("public line");
        assert_eq!(public.id, pair.id);
        assert_eq!(
            public.id,
            outpost_bundle::key_id(&secret.verifying_key()),
            "the pair belongs together"
        );
        assert!(public.line.ends_with("release 2025\n"));
        assert!(matches!(
            keygen(&prefix, "again").expect_err("exists"),
            KeyError::Exists(_)
        ));
        // Passing the secret file as an update key is refused by name.
        assert!(matches!(
            read_update_key(&pair.secret).expect_err("secret"),
            KeyError::SecretGiven(_)
        ));
    }

    #[test]
    fn the_dev_key_is_made_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (first, _, made) = dev_key(dir.path()).expect("first");
        assert!(made);
        let (second, secret, made) = dev_key(dir.path()).expect("second");
        assert!(!made);
        assert_eq!(first, second);
        assert!(secret.exists());
    }

    #[test]
    fn authorized_keys_lines_are_checked() {
        let p = Path::new("admin.pub");
        let good = format!(
            "# the admin\n{}\n\n{}\n",
            ssh_line("ssh-ed25519", "alice@laptop"),
            ssh_line("ssh-ed25519", "bob")
        );
        let lines = parse_ssh_keys(p, &good).expect("valid");
        assert_eq!(lines.len(), 2);
        assert!(lines[1].starts_with("ssh-ed25519 ") && lines[1].ends_with(" bob"));
        // The box refuses options (it adds its own): so does the build.
        let options = format!("no-port-forwarding {}", ssh_line("ssh-ed25519", "bob"));
        let err = parse_ssh_keys(p, &options).expect_err("options");
        assert!(err.to_string().contains("without options"), "{err}");

        let bad_type = "ssh-dss AAAAB3NzaC1kc3MAAACBAP alice";
        let err = parse_ssh_keys(p, bad_type).expect_err("dss");
        assert!(matches!(err, KeyError::Ssh { line: 1, .. }), "{err}");
        let err = parse_ssh_keys(p, "ssh-ed25519 not*base64 x").expect_err("base64");
        assert!(err.to_string().contains("not valid base64"), "{err}");
        let mismatch = ssh_line("ssh-rsa", "x").replacen("ssh-rsa", "ssh-ed25519", 1);
        let err = parse_ssh_keys(p, &mismatch).expect_err("mismatch");
        assert!(
            err.to_string().contains("not a valid ssh-ed25519 key"),
            "{err}"
        );
        assert!(matches!(
            parse_ssh_keys(p, "# nothing\n").expect_err("empty"),
            KeyError::NoSshKey(_)
        ));
    }
}
