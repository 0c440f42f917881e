//! The page shell (navigation, messages, the log-out form) and small shared pieces.

use maud::{html, Markup, DOCTYPE};

use super::session::Flash;

/// The pages in the navigation: path and label.
pub const NAV: [(&str, &str); 9] = [
    ("/", "Dashboard"),
    ("/extensions", "Extensions"),
    ("/calls", "Calls"),
    ("/voicemail", "Voicemail"),
    ("/firewall", "Firewall"),
    ("/config", "Configuration"),
    ("/backups", "Backups"),
    ("/updates", "Updates"),
    ("/system", "System"),
];

/// What every logged-in page needs from the request.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// The session's CSRF token, put into every form.
    pub csrf: String,
    /// The message left by the last form.
    pub flash: Option<Flash>,
    /// The navigation entry to mark as current.
    pub nav: &'static str,
}

/// A whole page.
pub fn page(ctx: &Ctx, title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title, true))
            body {
                a.skip href="#main" { "Skip to content" }
                header {
                    span.brand { "Outpost" }
                    nav aria-label="Main" {
                        @for (path, label) in NAV {
                            @if path == ctx.nav {
                                a href=(path) aria-current="page" { (label) }
                            } @else {
                                a href=(path) { (label) }
                            }
                        }
                    }
                    form method="post" action="/logout" {
                        (csrf_field(&ctx.csrf))
                        button type="submit" { "Log out" }
                    }
                }
                main #main tabindex="-1" {
                    h1 { (title) }
                    (flash(ctx.flash.as_ref()))
                    (body)
                }
            }
        }
    }
}

/// A page outside the login (the login form, errors before login).
pub fn bare(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title, false))
            body {
                header { span.brand { "Outpost" } }
                main #main { (body) }
            }
        }
    }
}

fn head(title: &str, script: bool) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            title { (title) " · Outpost" }
            link rel="stylesheet" href="/static/outpost.css";
            @if script {
                script src="/static/outpost.js" defer {}
            }
        }
    }
}

/// The hidden CSRF field every state-changing form carries.
pub fn csrf_field(csrf: &str) -> Markup {
    html! { input type="hidden" name="csrf" value=(csrf); }
}

/// The one-shot message of the last form.
pub fn flash(flash: Option<&Flash>) -> Markup {
    html! {
        @match flash {
            Some(Flash::Done(m)) => div.flash.done role="status" { (m) },
            Some(Flash::Error(m)) => div.flash.error role="alert" { (m) },
            None => {},
        }
    }
}

/// A one-button form posting to `action` (with the CSRF token and hidden fields).
pub fn button_form(
    csrf: &str,
    action: &str,
    fields: &[(&str, &str)],
    label: &str,
    class: &str,
    confirm: Option<&str>,
) -> Markup {
    html! {
        form.inline method="post" action=(action) data-confirm=[confirm] {
            (csrf_field(csrf))
            @for (name, value) in fields {
                input type="hidden" name=(name) value=(value);
            }
            button type="submit" class=(class) { (label) }
        }
    }
}

/// `2026-12-07 04:12:58 UTC` for milliseconds since the epoch.
pub fn time_utc(ms: u64) -> String {
    let t = crate::civil::UtcTime::from_millis(ms);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
        t.year, t.month, t.day, t.hour, t.minute, t.second
    )
}

/// `3 h 20 min`, `42 s`: a duration for people.
pub fn duration(secs: u64) -> String {
    match secs {
        0..=119 => format!("{secs} s"),
        120..=7_199 => format!("{} min {} s", secs / 60, secs % 60),
        7_200..=172_799 => format!("{} h {} min", secs / 3600, secs % 3600 / 60),
        _ => format!("{} d {} h", secs / 86_400, secs % 86_400 / 3600),
    }
}

/// Milliseconds as seconds with one decimal, rounded: `3.0 s` for 2,960 ms.
pub fn seconds_1(ms: u64) -> String {
    let tenths = ms.saturating_add(50) / 100;
    format!("{}.{} s", tenths / 10, tenths % 10)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE.md: unwrap is fine in tests
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_and_forms_carry_the_token() {
        let ctx = Ctx {
            csrf: "tok".into(),
            flash: Some(Flash::Error("<script>x</script>".into())),
            nav: "/firewall",
        };
        let html = page(&ctx, "Fire<wall>", html! { p { "body" } }).into_string();
        assert!(html.contains("&lt;script&gt;x&lt;/script&gt;"), "{html}");
        assert!(!html.contains("<script>x"));
        assert!(html.contains("Fire&lt;wall&gt;"));
        assert!(html.contains(r#"<a href="/firewall" aria-current="page">"#));
        assert!(html.contains(r#"name="csrf" value="tok""#));
        assert!(
            !html.contains("style="),
            "no inline style: the CSP forbids it"
        );
    }

    #[test]
    fn times_and_durations_read_well() {
        assert_eq!(time_utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(duration(42), "42 s");
        assert_eq!(duration(600), "10 min 0 s");
        assert_eq!(duration(3 * 3600 + 20 * 60), "3 h 20 min");
        assert_eq!(duration(3 * 86_400), "3 d 0 h");
        assert_eq!(seconds_1(2_960), "3.0 s");
        assert_eq!(seconds_1(2_940), "2.9 s");
    }
}
