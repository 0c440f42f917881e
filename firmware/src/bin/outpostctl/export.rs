//! Documents written for other programs: `cdr export` (CSV for spreadsheets, or JSON,
//! streamed page by page as the daemon sends them) and `fw export` (the ban list other
//! sites' blocklist feeds read).

use std::io::Write;
use std::path::Path;

use firmware::admin::export::{csv_row, CSV_HEADER};
use firmware::admin::proto::{Command, FwExport, Reply};
use firmware::backup::schedule::parse_date;

use crate::cli::{CdrFormat, ExportFormat};
use crate::failure::Failure;
use crate::link::Link;
use crate::render::{self, sanitize, to_json};

/// `cdr export`: pages of records from the daemon, written as they arrive.
pub fn cdr_export(
    socket: &Path,
    format: CdrFormat,
    from: Option<&str>,
    to: Option<&str>,
) -> Result<(), Failure> {
    let parse = |s: &str| parse_date(s).map_err(Failure::Usage);
    let from_ms = from.map(parse).transpose()?.map(|(t, _)| t);
    // A bare end date includes its whole day.
    let to_ms = to.map(parse).transpose()?.map(|(t, date)| {
        if date {
            t.saturating_add(86_400_000)
        } else {
            t
        }
    });
    if let (Some(f), Some(t)) = (from_ms, to_ms) {
        if t <= f {
            return Err(Failure::Usage("--to must be after --from".to_owned()));
        }
    }
    let mut link = Link::connect(socket)?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let broken = |e: std::io::Error| Failure::Usage(format!("cannot write the export: {e}"));
    match format {
        CdrFormat::Csv => out.write_all(CSV_HEADER.as_bytes()).map_err(broken)?,
        CdrFormat::Json => out.write_all(b"[").map_err(broken)?,
    }
    let mut after = 0u64;
    let mut first = true;
    loop {
        let reply = link.request(&Command::CdrExport {
            from: from_ms,
            to: to_ms,
            after,
            limit: 2_000,
        })?;
        let (cdrs, next) = match reply {
            Reply::CdrPage { cdrs, next } => (cdrs, next),
            Reply::Error { message } => return Err(Failure::Refused(sanitize(&message))),
            other => return Err(Failure::unexpected(&other)),
        };
        for cdr in &cdrs {
            match format {
                CdrFormat::Csv => out.write_all(csv_row(cdr).as_bytes()).map_err(broken)?,
                CdrFormat::Json => {
                    if !first {
                        out.write_all(b",").map_err(broken)?;
                    }
                    out.write_all(b"\n").map_err(broken)?;
                    out.write_all(to_json(cdr).as_bytes()).map_err(broken)?;
                }
            }
            first = false;
        }
        match next {
            Some(n) if n > after => after = n,
            _ => break,
        }
    }
    if format == CdrFormat::Json {
        out.write_all(if first { b"]\n" as &[u8] } else { b"\n]\n" })
            .map_err(broken)?;
    }
    out.flush().map_err(broken)
}

/// Prints an export, or writes it to `out`; warns when bans were left out.
pub fn write_export(
    doc: &FwExport,
    format: ExportFormat,
    out: Option<&Path>,
) -> Result<(), Failure> {
    let text = render::export(doc, format);
    match out {
        Some(path) => {
            std::fs::write(path, &text)
                .map_err(|e| Failure::Usage(format!("cannot write {}: {e}", path.display())))?;
            println!("{} bans exported to {}", doc.bans.len(), path.display());
        }
        None => print!("{text}"),
    }
    if doc.omitted > 0 {
        eprintln!(
            "outpostctl: {} more bans left out: an export holds at most 1 MiB so other sites can import it",
            doc.omitted
        );
    }
    Ok(())
}
