//! Call records: the newest matching records with filters (dates, extension, disposition),
//! and the whole selection as CSV or JSON, streamed page by page from the daemon.

use std::collections::VecDeque;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures_util::StreamExt;
use maud::{html, Markup};
use pbx_core::cdr::{Cdr, Disposition};
use serde::Deserialize;

use crate::admin::export::{csv_row, CSV_HEADER};
use crate::admin::proto::{Command, Reply};
use crate::backup::schedule::parse_date;

use crate::web::api::{unexpected, Api};
use crate::web::app::{AppState, Authed};
use crate::web::layout::{duration, page, time_utc};

/// Rows shown on the page (the newest matching ones).
pub const SHOWN: usize = 500;
/// Records read for one page view at most (then the page says the scan stopped).
const SCAN_LIMIT: usize = 200_000;
/// Records per request to the daemon.
const PAGE: usize = 2_000;

/// Every disposition, as the filter offers them.
const DISPOSITIONS: [Disposition; 10] = [
    Disposition::Answered,
    Disposition::Busy,
    Disposition::Cancelled,
    Disposition::NoAnswer,
    Disposition::NotFound,
    Disposition::Unavailable,
    Disposition::Failed,
    Disposition::MediaTimeout,
    Disposition::Voicemail,
    Disposition::Transferred,
];

/// The call records' routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/calls", get(list))
        .route("/calls/export", get(export))
}

/// The filter of the list and the download (all optional).
#[derive(Debug, Default, Clone, Deserialize)]
pub struct Filter {
    from: Option<String>,
    to: Option<String>,
    ext: Option<String>,
    disposition: Option<String>,
    format: Option<String>,
}

fn name(d: Disposition) -> String {
    serde_json::to_value(d)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn given(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

impl Filter {
    /// The time range in ms (`to` as a bare date includes its day).
    fn range(&self) -> Result<(Option<u64>, Option<u64>), String> {
        let from = given(&self.from)
            .map(parse_date)
            .transpose()?
            .map(|(t, _)| t);
        let to = given(&self.to)
            .map(parse_date)
            .transpose()?
            .map(|(t, date)| {
                if date {
                    t.saturating_add(86_400_000)
                } else {
                    t
                }
            });
        if let (Some(f), Some(t)) = (from, to) {
            if t <= f {
                return Err("the end date is before the start date".to_owned());
            }
        }
        Ok((from, to))
    }

    fn matches(&self, c: &Cdr) -> bool {
        let ext_ok = given(&self.ext).is_none_or(|e| {
            c.caller == e || c.callee == e || c.leg.transferred_by.as_deref() == Some(e)
        });
        let disposition_ok = given(&self.disposition).is_none_or(|d| name(c.disposition) == d);
        ext_ok && disposition_ok
    }

    fn query(&self, format: &str) -> String {
        let mut pairs = vec![("format", format.to_owned())];
        for (k, v) in [
            ("from", &self.from),
            ("to", &self.to),
            ("ext", &self.ext),
            ("disposition", &self.disposition),
        ] {
            if let Some(v) = given(v) {
                pairs.push((k, v.to_owned()));
            }
        }
        serde_urlencoded::to_string(pairs).unwrap_or_default()
    }
}

/// One page of records from the daemon: the records and the cursor of the next.
async fn fetch(
    api: &Api,
    range: (Option<u64>, Option<u64>),
    after: u64,
) -> Result<(Vec<Cdr>, Option<u64>), String> {
    match api
        .call(Command::CdrExport {
            from: range.0,
            to: range.1,
            after,
            limit: PAGE,
        })
        .await
    {
        Reply::CdrPage { cdrs, next } => Ok((cdrs, next.filter(|n| *n > after))),
        other => Err(unexpected(other)),
    }
}

/// The newest [`SHOWN`] matching records, newest first; whether the scan stopped early.
async fn newest(api: &Api, filter: &Filter) -> Result<(Vec<Cdr>, bool), String> {
    let range = filter.range()?;
    let mut kept: VecDeque<Cdr> = VecDeque::with_capacity(SHOWN);
    let (mut after, mut scanned) = (0u64, 0usize);
    loop {
        let (cdrs, next) = fetch(api, range, after).await?;
        scanned += cdrs.len();
        for c in cdrs.into_iter().filter(|c| filter.matches(c)) {
            if kept.len() == SHOWN {
                kept.pop_front();
            }
            kept.push_back(c);
        }
        match next {
            Some(n) if scanned < SCAN_LIMIT => after = n,
            Some(_) => return Ok((kept.into_iter().rev().collect(), true)),
            None => return Ok((kept.into_iter().rev().collect(), false)),
        }
    }
}

async fn list(
    State(state): State<AppState>,
    authed: Authed,
    Query(filter): Query<Filter>,
) -> Response {
    let result = newest(state.api(), &filter).await;
    let ctx = authed.ctx(&state, "/calls");
    let body = html! {
        (filter_form(&filter))
        @match &result {
            Ok((cdrs, cut)) => {
                div.actions {
                    a.button href={ "/calls/export?" (filter.query("csv")) } download { "Download CSV" }
                    a.button href={ "/calls/export?" (filter.query("json")) } download { "Download JSON" }
                }
                @if *cut {
                    p.warn { "Only the first " (SCAN_LIMIT) " records of the range were searched: narrow the dates." }
                }
                (table(cdrs))
            }
            Err(e) => p.bad role="alert" { (e) }
        }
    };
    Html(page(&ctx, "Calls", body).into_string()).into_response()
}

fn filter_form(f: &Filter) -> Markup {
    let chosen = given(&f.disposition).unwrap_or("");
    html! {
        form.card method="get" action="/calls" aria-label="Filter" {
            div.grid {
                div { label for="f-from" { "From (date)" } input #f-from type="date" name="from" value=(given(&f.from).unwrap_or("")); }
                div { label for="f-to" { "To (date, included)" } input #f-to type="date" name="to" value=(given(&f.to).unwrap_or("")); }
                div { label for="f-ext" { "Extension" } input #f-ext type="text" name="ext" value=(given(&f.ext).unwrap_or("")) inputmode="numeric"; }
                div {
                    label for="f-disposition" { "Outcome" }
                    select #f-disposition name="disposition" {
                        option value="" selected[chosen.is_empty()] { "any" }
                        @for d in DISPOSITIONS {
                            @let n = name(d);
                            option value=(n) selected[chosen == n] { (n.replace('_', " ")) }
                        }
                    }
                }
            }
            div.actions { button.primary type="submit" { "Show" } a href="/calls" { "Clear" } }
        }
    }
}

fn table(cdrs: &[Cdr]) -> Markup {
    html! {
        p {
            @match cdrs.len() {
                1 => "1 record.",
                SHOWN => { "The newest " (SHOWN) " records." },
                n => { (n) " records." },
            }
        }
        div.table-wrap { table #cdrs {
            thead { tr {
                th scope="col" { "Start" } th scope="col" { "From" } th scope="col" { "To" }
                th scope="col" { "Outcome" } th.num scope="col" { "Talk time" } th scope="col" { "Via" }
            } }
            tbody {
                @for c in cdrs {
                    tr {
                        td { (time_utc(c.start)) }
                        td { (c.caller) }
                        td { (c.callee) }
                        td { (name(c.disposition).replace('_', " ")) }
                        td.num { (duration(c.billsec())) }
                        td {
                            @if let Some(t) = &c.leg.trunk { "trunk " (t) " " }
                            @if let Some(by) = &c.leg.transferred_by { "transferred by " (by) " " }
                            @if let Some(m) = &c.leg.menu { "menu " (m) }
                        }
                    }
                }
            }
        } }
    }
}

/// The whole selection, oldest first, streamed: CSV (the `cdr export` format) or JSON.
async fn export(
    State(state): State<AppState>,
    _authed: Authed,
    Query(filter): Query<Filter>,
) -> Response {
    let range = match filter.range() {
        Ok(r) => r,
        Err(e) => return (axum::http::StatusCode::BAD_REQUEST, e).into_response(),
    };
    let json = given(&filter.format) == Some("json");
    let api = state.api().clone();
    struct Walk {
        api: Api,
        filter: Filter,
        range: (Option<u64>, Option<u64>),
        after: Option<u64>,
        json: bool,
        first: bool,
    }
    let start = Walk {
        api,
        filter,
        range,
        after: Some(0),
        json,
        first: true,
    };
    let head = if json { "[" } else { CSV_HEADER };
    let pages = futures_util::stream::unfold(start, |mut w| async move {
        let after = w.after?;
        let (cdrs, next) = match fetch(&w.api, w.range, after).await {
            Ok(page) => page,
            Err(e) => {
                w.after = None;
                let e = std::io::Error::other(e);
                return Some((Err(e), w));
            }
        };
        let mut chunk = String::new();
        for c in cdrs.iter().filter(|c| w.filter.matches(c)) {
            if w.json {
                chunk.push_str(if w.first { "\n" } else { ",\n" });
                chunk.push_str(&serde_json::to_string(c).unwrap_or_default());
            } else {
                chunk.push_str(&csv_row(c));
            }
            w.first = false;
        }
        w.after = next;
        if next.is_none() && w.json {
            chunk.push_str(if w.first { "]\n" } else { "\n]\n" });
        }
        Some((Ok::<_, std::io::Error>(chunk), w))
    });
    let body = futures_util::stream::iter([Ok::<_, std::io::Error>(head.to_owned())]).chain(pages);
    let (kind, file) = if json {
        ("application/json", "calls.json")
    } else {
        ("text/csv; charset=utf-8", "calls.csv")
    };
    (
        [
            (header::CONTENT_TYPE, kind.to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{file}\""),
            ),
        ],
        Body::from_stream(body),
    )
        .into_response()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE.md: unwrap is fine in tests
mod tests {
    use super::*;

    fn cdr(caller: &str, callee: &str, d: Disposition) -> Cdr {
        Cdr {
            call_id: "c".into(),
            caller: caller.into(),
            callee: callee.into(),
            start: 1,
            answer: None,
            end: 2,
            disposition: d,
            status: 200,
            leg: Default::default(),
        }
    }

    #[test]
    fn filters_match_either_party_and_the_outcome() {
        let f = Filter {
            ext: Some("101".into()),
            disposition: Some("no_answer".into()),
            ..Filter::default()
        };
        assert!(f.matches(&cdr("100", "101", Disposition::NoAnswer)));
        assert!(f.matches(&cdr("101", "0301234", Disposition::NoAnswer)));
        assert!(!f.matches(&cdr("101", "102", Disposition::Answered)));
        assert!(!f.matches(&cdr("100", "102", Disposition::NoAnswer)));
        assert!(Filter::default().matches(&cdr("1", "2", Disposition::Busy)));
        let f = Filter {
            from: Some("2026-12-07".into()),
            to: Some("2026-12-07".into()),
            ..Filter::default()
        };
        let (from, to) = f.range().unwrap();
        assert_eq!(
            to.unwrap() - from.unwrap(),
            86_400_000,
            "the end day is included"
        );
        let f = Filter {
            from: Some("2026-12-08".into()),
            to: Some("2026-12-07".into()),
            ..Filter::default()
        };
        assert!(f.range().is_err());
        assert!(Filter {
            from: Some("yesterday".into()),
            ..Filter::default()
        }
        .range()
        .is_err());
        assert_eq!(
            Filter {
                ext: Some("1&x=2".into()),
                ..Filter::default()
            }
            .query("csv"),
            "format=csv&ext=1%26x%3D2"
        );
    }
}
