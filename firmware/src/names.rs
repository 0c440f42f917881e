//! Names and the rules they follow: extension numbers, passwords, display names and host
//! names, checked the same way wherever they enter (admin commands, the config file, a
//! restored backup).
//!
//! A leaf: it imports nothing from the crate, so every layer may use it.

/// Longest extension number or name.
pub const MAX_EXT_LEN: usize = 16;
/// Shortest password accepted.
pub const MIN_PASSWORD_LEN: usize = 8;
/// Longest password accepted.
pub const MAX_PASSWORD_LEN: usize = 128;
/// Longest display name accepted.
pub const MAX_NAME_LEN: usize = 64;
/// Shortest console (admin) password accepted.
pub const MIN_ADMIN_PASSWORD_LEN: usize = 10;
/// Longest OpenSSH public key line accepted (an RSA 16384-bit key fits).
pub const MAX_SSH_KEY_LINE: usize = outpost_sshkey::MAX_KEY_LINE;
/// Longest host name: one RFC 1123 label.
pub const MAX_HOSTNAME_LEN: usize = 63;
/// Longest digest realm.
pub const MAX_REALM_LEN: usize = 64;

/// A digest realm: 1-64 RFC 3261 `token` characters (letters, digits, `-.!%*_+`'~`).
pub fn valid_realm(realm: &str) -> bool {
    !realm.is_empty()
        && realm.len() <= MAX_REALM_LEN
        && realm
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-.!%*_+`'~".contains(c))
}

/// `text` as it may be printed to a terminal or a log: control characters (escape
/// sequences, newlines) replaced with `?`, cut to `max` characters. Everything the box
/// echoes back from outside (a key comment, a server's answer, a URL) goes through it.
pub fn printable(text: &str, max: usize) -> String {
    text.chars()
        .take(max)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// Checks an extension number: 1-16 ASCII letters or digits.
pub fn validate_ext(ext: &str) -> Result<(), String> {
    if ext.is_empty() {
        return Err("extension must not be empty".to_owned());
    }
    if ext.len() > MAX_EXT_LEN {
        return Err(format!(
            "extension is {} characters long; at most {MAX_EXT_LEN} are allowed",
            ext.chars().count()
        ));
    }
    if !ext.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(format!(
            "extension `{}` may contain only letters and digits",
            ext.escape_default()
        ));
    }
    Ok(())
}

/// Checks a password for extension `ext`: 8-128 characters, no control characters, no
/// surrounding whitespace, not the extension itself, not one character repeated.
pub fn validate_password(ext: &str, password: &str) -> Result<(), String> {
    let len = password.chars().count();
    if len < MIN_PASSWORD_LEN {
        return Err(format!(
            "password is {len} characters long; at least {MIN_PASSWORD_LEN} are needed"
        ));
    }
    if len > MAX_PASSWORD_LEN {
        return Err(format!(
            "password is {len} characters long; at most {MAX_PASSWORD_LEN} are allowed"
        ));
    }
    if password.chars().any(char::is_control) {
        return Err("password must not contain control characters".to_owned());
    }
    if password.trim() != password {
        return Err("password must not start or end with whitespace".to_owned());
    }
    if password == ext {
        return Err("password must not be the extension number".to_owned());
    }
    let mut chars = password.chars();
    if let Some(first) = chars.next() {
        if chars.all(|c| c == first) {
            return Err("password must not be one character repeated".to_owned());
        }
    }
    Ok(())
}

/// Checks a display name: 1-64 characters, no control characters.
pub fn validate_name(name: &str) -> Result<(), String> {
    let len = name.chars().count();
    if name.trim().is_empty() {
        return Err("name must not be empty".to_owned());
    }
    if len > MAX_NAME_LEN {
        return Err(format!(
            "name is {len} characters long; at most {MAX_NAME_LEN} are allowed"
        ));
    }
    if name.chars().any(char::is_control) {
        return Err("name must not contain control characters".to_owned());
    }
    Ok(())
}

/// Checks a console password: 10-128 characters, no control characters, no surrounding
/// whitespace, not one character repeated.
pub fn validate_admin_password(password: &str) -> Result<(), String> {
    let len = password.chars().count();
    if len < MIN_ADMIN_PASSWORD_LEN {
        return Err(format!(
            "password is {len} characters long; at least {MIN_ADMIN_PASSWORD_LEN} are needed"
        ));
    }
    validate_password("", password)
}

/// Checks a host name: an RFC 1123 label of 1-63 ASCII letters, digits and `-`, neither
/// starting nor ending with `-`.
pub fn validate_hostname(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".to_owned());
    }
    if name.len() > MAX_HOSTNAME_LEN {
        return Err(format!(
            "is {} characters long; at most {MAX_HOSTNAME_LEN} are allowed",
            name.chars().count()
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !c.is_ascii_alphanumeric() && *c != '-')
    {
        return Err(format!(
            "only letters, digits and '-' are allowed, not {bad:?}"
        ));
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Err(format!("{name:?} must not start or end with '-'"));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE.md: unwrap is fine in tests
mod tests {
    use super::*;

    #[test]
    fn extension_rules() {
        assert!(validate_ext("100").is_ok());
        assert!(validate_ext("sales1").is_ok());
        assert!(validate_ext("1234567890123456").is_ok());
        assert!(validate_ext("").is_err());
        assert!(validate_ext("12345678901234567").is_err());
        assert!(validate_ext("10 0").is_err());
        assert!(validate_ext("a.b").is_err());
        assert!(validate_ext("١٢٣").is_err(), "non-ASCII digits");
    }

    #[test]
    fn password_rules_say_why() {
        assert!(validate_password("100", "s3cret-pass").is_ok());
        assert!(validate_password("100", "short")
            .unwrap_err()
            .contains("at least 8"));
        assert!(validate_password("100", &"ab".repeat(65))
            .unwrap_err()
            .contains("at most 128"));
        assert!(validate_password("10000000", "10000000")
            .unwrap_err()
            .contains("extension"));
        assert!(validate_password("100", "aaaaaaaaaa")
            .unwrap_err()
            .contains("repeated"));
        assert!(validate_password("100", "abc\ndefgh")
            .unwrap_err()
            .contains("control"));
        assert!(validate_password("100", " abcdefgh")
            .unwrap_err()
            .contains("whitespace"));
    }

    #[test]
    fn admin_password_rules() {
        assert!(validate_admin_password("correct horse").is_ok());
        assert!(validate_admin_password("short-pw1")
            .unwrap_err()
            .contains("at least 10"));
        assert!(validate_admin_password("xxxxxxxxxxxx")
            .unwrap_err()
            .contains("repeated"));
        assert!(validate_admin_password(" leading-space")
            .unwrap_err()
            .contains("whitespace"));
    }

    #[test]
    fn name_rules() {
        assert!(validate_name("Front desk").is_ok());
        assert!(validate_name("").is_err());
        assert!(validate_name("a\u{1b}[2J").is_err());
        assert!(validate_name(&"x".repeat(65)).is_err());
    }

    #[test]
    fn hostnames_are_rfc1123_labels() {
        for good in [
            "berlin-1",
            "outpost-a1b2c3",
            "B",
            "1st-floor",
            &"x".repeat(63),
        ] {
            assert!(validate_hostname(good).is_ok(), "{good}");
        }
        assert!(validate_hostname("").unwrap_err().contains("empty"));
        assert!(validate_hostname(&"x".repeat(64))
            .unwrap_err()
            .contains("at most 63"));
        assert!(validate_hostname("-berlin").unwrap_err().contains("start"));
        assert!(validate_hostname("berlin-").unwrap_err().contains("end"));
        for bad in [
            "berlin.office",
            "berlin_1",
            "berlin 1",
            "bérlin",
            "a/b",
            "x\n",
        ] {
            let msg = validate_hostname(bad).unwrap_err();
            assert!(msg.contains("only letters, digits"), "{bad}: {msg}");
        }
    }
}
