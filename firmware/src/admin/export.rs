//! Call records as documents for other programs: CSV for spreadsheets (`outpostctl cdr
//! export`, the web page's download). JSON is the records' own serde form.

use pbx_core::cdr::Cdr;

use crate::backup::schedule::rfc3339_ms;

/// The header row of `cdr export --format csv`.
pub const CSV_HEADER: &str = "call_id,caller,callee,start,answer,end,billsec,disposition,status,\
linked_id,transferred_by,trunk,did,menu,menu_digit\r\n";

/// One CSV row (RFC 4180: CRLF line ends, fields with `,`, `"`, CR or LF quoted, quotes
/// doubled). Fields starting with a formula character ([`FORMULA_START`]) get a leading
/// `'` so a spreadsheet never runs them (these values come from the network).
pub fn csv_row(c: &Cdr) -> String {
    let time = rfc3339_ms;
    let disposition = serde_json::to_value(c.disposition)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    let fields = [
        csv_field(&c.call_id),
        csv_field(&c.caller),
        csv_field(&c.callee),
        time(c.start),
        c.answer.map(time).unwrap_or_default(),
        time(c.end),
        c.billsec().to_string(),
        disposition,
        c.status.to_string(),
        csv_field(c.link()),
        csv_field(c.leg.transferred_by.as_deref().unwrap_or_default()),
        csv_field(c.leg.trunk.as_deref().unwrap_or_default()),
        csv_field(c.leg.did.as_deref().unwrap_or_default()),
        csv_field(c.leg.menu.as_deref().unwrap_or_default()),
        csv_field(c.leg.menu_digit.as_deref().unwrap_or_default()),
    ];
    format!("{}\r\n", fields.join(","))
}

/// Characters a spreadsheet reads as the start of a formula (OWASP's CSV injection list):
/// caller names and numbers come from the network, so none may start a cell.
const FORMULA_START: [char; 6] = ['=', '+', '-', '@', '\t', '\r'];

/// One CSV field, quoted when it must be and defused when it could start a formula (a
/// leading `'` makes a spreadsheet take the cell as text).
fn csv_field(s: &str) -> String {
    let s = if s.starts_with(FORMULA_START) {
        format!("'{s}")
    } else {
        s.to_owned()
    };
    if s.contains([',', '"', '\r', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE.md: unwrap is fine in tests
mod tests {
    use pbx_core::cdr::Disposition;

    use super::*;

    #[test]
    fn csv_rows_follow_rfc_4180_and_never_start_a_formula() {
        let cdr = Cdr {
            call_id: "a\"b".into(),
            caller: "=cmd|x".into(),
            callee: "+49 30, 1".into(),
            start: 1_714_521_600_000,
            answer: None,
            end: 1_714_521_605_500,
            disposition: Disposition::NoAnswer,
            status: 480,
            leg: Default::default(),
        };
        assert_eq!(
            csv_row(&cdr),
            "\"a\"\"b\",'=cmd|x,\"'+49 30, 1\",2024-05-01T00:00:00.000Z,,2024-05-01T00:00:05.500Z,0,no_answer,480,\"a\"\"b\",,,,,\r\n"
        );
        let transferred = Cdr {
            leg: pbx_core::cdr::CdrLeg {
                linked_id: "first@pbx".into(),
                transferred_by: Some("101".into()),
                trunk: Some("sipgate".into()),
                did: Some("+4930123".into()),
                menu: Some("500".into()),
                menu_digit: Some("1".into()),
            },
            disposition: Disposition::Transferred,
            ..cdr
        };
        assert!(
            csv_row(&transferred).ends_with(",first@pbx,101,sipgate,'+4930123,500,1\r\n"),
            "{}",
            csv_row(&transferred)
        );
        for (raw, defused) in [
            ("+1+cmd|' /C calc'!A0", "'+1+cmd|' /C calc'!A0"),
            ("-2+3", "'-2+3"),
            ("@SUM(A1)", "'@SUM(A1)"),
            ("\t=1", "'\t=1"),
            ("\r=1", "\"'\r=1\""),
            ("100", "100"),
            ("Anna Schmidt", "Anna Schmidt"),
        ] {
            assert_eq!(csv_field(raw), defused, "{raw:?}");
        }
        assert_eq!(CSV_HEADER.matches(',').count(), 14);
    }
}
