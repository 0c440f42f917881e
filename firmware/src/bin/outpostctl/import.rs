//! Imports: `ext import` (a CSV file of extensions, every row checked before anything is
//! sent, sent as one request or in chunks that each fit a request line) and `fw import` (a
//! blocklist, checked to hold something to ban).

use std::path::Path;

use firmware::admin::proto::{
    validate_ext, validate_name, validate_password, Command, ExtImportRow, FwCommand, MAX_LINE,
};
use firmware::guard::feed;

use crate::failure::Failure;
use crate::input::{read_blocklist, read_input};
use crate::render::sanitize;

/// Rows per request when an import is too large for one request line.
const IMPORT_CHUNK: usize = 2_000;
/// Import errors listed before the rest are summarised.
const MAX_LISTED_ERRORS: usize = 20;

/// `ext import FILE`: the requests that create or replace the file's extensions.
pub fn extensions(file: &Path) -> Result<Vec<Command>, Failure> {
    let text = read_input(file)?;
    let shown = if file.as_os_str() == "-" {
        Path::new("<stdin>")
    } else {
        file
    };
    let rows = parse_import(&text)
        .map_err(|errors| Failure::Usage(import_error_report(shown, &errors)))?;
    if rows.is_empty() {
        return Err(Failure::Usage(format!(
            "{}: no extensions to import",
            shown.display()
        )));
    }
    Ok(import_requests(rows))
}

/// `fw import FILE`: the request banning the blocklist's addresses for `ban_secs`.
pub fn blocklist(file: &Path, ban_secs: u64) -> Result<FwCommand, Failure> {
    let text = read_blocklist(file)?;
    // Checked here so a file with nothing to ban is refused before sending; the daemon
    // parses it again and reports what it skipped.
    let parsed =
        feed::parse(&text, 0).map_err(|e| Failure::Usage(format!("{}: {e}", file.display())))?;
    if parsed.addrs.is_empty() {
        let mut msg = format!("{}: no addresses to import", file.display());
        for p in &parsed.problems {
            msg.push_str("\n  ");
            msg.push_str(&sanitize(p));
        }
        return Err(Failure::Usage(msg));
    }
    Ok(FwCommand::Import { text, ban_secs })
}

/// Parses an import file: `ext,password[,name]` per line, fields trimmed, blank lines and
/// `#` comments skipped, an optional `ext,password[,name]` header. Returns every problem
/// with its 1-based line number, or the rows when there are none.
pub fn parse_import(text: &str) -> Result<Vec<ExtImportRow>, Vec<String>> {
    let mut rows = Vec::new();
    let mut errors = Vec::new();
    let mut first_line_of: std::collections::HashMap<String, usize> =
        std::collections::HashMap::new();
    let mut seen_data = false;
    for (idx, raw) in text.lines().enumerate() {
        let line_no = idx + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        if !seen_data {
            seen_data = true;
            let lower: Vec<String> = fields.iter().map(|f| f.to_ascii_lowercase()).collect();
            if lower == ["ext", "password"] || lower == ["ext", "password", "name"] {
                continue;
            }
        }
        if !(2..=3).contains(&fields.len()) {
            errors.push(format!(
                "line {line_no}: expected `ext,password[,name]`, found {} fields",
                fields.len()
            ));
            continue;
        }
        let (ext, password) = (fields[0], fields[1]);
        let name = fields
            .get(2)
            .filter(|n| !n.is_empty())
            .map(|n| n.to_string());
        let mut problems = Vec::new();
        if let Err(e) = validate_ext(ext) {
            problems.push(e);
        }
        if let Err(e) = validate_password(ext, password) {
            problems.push(e);
        }
        if let Some(Err(e)) = name.as_deref().map(validate_name) {
            problems.push(e);
        }
        if let Some(first) = first_line_of.get(ext) {
            problems.push(format!("extension {ext} already appears on line {first}"));
        } else {
            first_line_of.insert(ext.to_owned(), line_no);
        }
        if problems.is_empty() {
            rows.push(ExtImportRow {
                ext: ext.to_owned(),
                password: password.to_owned(),
                name,
            });
        } else {
            errors.push(format!("line {line_no}: {}", problems.join("; ")));
        }
    }
    if errors.is_empty() {
        Ok(rows)
    } else {
        Err(errors)
    }
}

/// The usage error of a file with bad rows: how many, the first [`MAX_LISTED_ERRORS`], how
/// many more.
pub fn import_error_report(file: &Path, errors: &[String]) -> String {
    let mut out = format!(
        "{}: {} bad row(s), nothing imported",
        file.display(),
        errors.len()
    );
    for e in errors.iter().take(MAX_LISTED_ERRORS) {
        out.push_str("\n  ");
        out.push_str(e);
    }
    if errors.len() > MAX_LISTED_ERRORS {
        out.push_str(&format!(
            "\n  ... and {} more",
            errors.len() - MAX_LISTED_ERRORS
        ));
    }
    out
}

/// One request, or several when the rows would not fit in one request line.
pub fn import_requests(rows: Vec<ExtImportRow>) -> Vec<Command> {
    let whole = Command::ExtImport { rows };
    let fits = serde_json::to_vec(&whole)
        .map(|v| v.len() < MAX_LINE)
        .unwrap_or(false);
    let Command::ExtImport { rows } = whole else {
        unreachable!("constructed just above")
    };
    if fits {
        return vec![Command::ExtImport { rows }];
    }
    rows.chunks(IMPORT_CHUNK)
        .map(|c| Command::ExtImport { rows: c.to_vec() })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE.md: unwrap is fine in tests
mod tests {
    use super::*;

    #[test]
    fn import_accepts_comments_header_and_optional_name() {
        let text = "# office phones\next,password,name\n\n100, s3cret-100 ,Front desk\n\
                    101,s3cret-101\r\n102,s3cret-102,\n";
        let rows = parse_import(text).unwrap();
        assert_eq!(
            rows,
            vec![
                ExtImportRow {
                    ext: "100".into(),
                    password: "s3cret-100".into(),
                    name: Some("Front desk".into())
                },
                ExtImportRow {
                    ext: "101".into(),
                    password: "s3cret-101".into(),
                    name: None
                },
                ExtImportRow {
                    ext: "102".into(),
                    password: "s3cret-102".into(),
                    name: None
                },
            ]
        );
    }

    #[test]
    fn import_reports_every_bad_row_with_its_line() {
        let text = "100,good-pass-1\n\
                    10 1,good-pass-2\n\
                    102,short\n\
                    # comment\n\
                    103\n\
                    100,good-pass-3\n\
                    104,aaaaaaaaaa,Name,extra\n";
        let errors = parse_import(text).unwrap_err();
        assert_eq!(errors.len(), 5, "{errors:#?}");
        assert!(errors[0].starts_with("line 2:") && errors[0].contains("letters and digits"));
        assert!(errors[1].starts_with("line 3:") && errors[1].contains("at least 8"));
        assert!(errors[2].starts_with("line 5:") && errors[2].contains("1 fields"));
        assert!(errors[3].starts_with("line 6:") && errors[3].contains("line 1"));
        assert!(errors[4].starts_with("line 7:") && errors[4].contains("4 fields"));
        let report = import_error_report(Path::new("phones.csv"), &errors);
        assert!(report.starts_with("phones.csv: 5 bad row(s), nothing imported"));
    }

    #[test]
    fn import_of_10000_rows_is_one_request_and_huge_imports_are_chunked() {
        let small: Vec<ExtImportRow> = (0..10_000)
            .map(|i| ExtImportRow {
                ext: format!("{}", 20_000 + i),
                password: format!("pw-{i:08}-xyz"),
                name: Some(format!("User {i}")),
            })
            .collect();
        assert_eq!(import_requests(small).len(), 1);
        let huge: Vec<ExtImportRow> = (0..20_000)
            .map(|i| ExtImportRow {
                ext: format!("{}", 20_000 + i),
                password: "p".repeat(128),
                name: Some("\u{1d11e}".repeat(64)),
            })
            .collect();
        let reqs = import_requests(huge);
        assert_eq!(reqs.len(), 10);
        for r in &reqs {
            assert!(serde_json::to_vec(r).unwrap().len() < MAX_LINE);
        }
    }
}
