//! The web admin page driven as a browser without scripts drives it: log in, read a page,
//! post a multipart form with a file (the update upload), over HTTPS accepting the box's
//! self-signed certificate. For tests that need no rendering (tests/tests/web_update.rs,
//! the image's update test).

use std::time::Duration;

use crate::browser::https;

/// A logged-in session of the web page at `base` (`https://host:port`).
#[derive(Debug, Clone)]
pub struct WebSession {
    /// `https://host:port`.
    pub base: String,
    /// `name=value` of the session cookie.
    pub cookie: String,
}

impl WebSession {
    /// Logs in with `password`; panics when the page refuses.
    pub fn log_in(base: &str, password: &str) -> WebSession {
        let body = format!("password={}", form_escape(password));
        let r = https(
            "POST",
            &format!("{base}/login"),
            &[("content-type", "application/x-www-form-urlencoded")],
            Some(&body),
        )
        .unwrap_or_else(|e| panic!("login at {base}: {e}"));
        assert_eq!(r.status, 303, "login at {base}: {}", r.body);
        let cookie = r
            .header("set-cookie")
            .and_then(|c| c.split(';').next())
            .expect("a session cookie")
            .to_owned();
        WebSession {
            base: base.to_owned(),
            cookie,
        }
    }

    /// GETs `path`; panics unless it answers 200. Returns the body.
    pub fn get(&self, path: &str) -> String {
        let r = https(
            "GET",
            &format!("{}{path}", self.base),
            &[("cookie", &self.cookie)],
            None,
        )
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        assert_eq!(r.status, 200, "GET {path}: {}", r.body);
        r.body
    }

    /// The session's CSRF token, from the form fields of `path`.
    pub fn csrf(&self, path: &str) -> String {
        let page = self.get(path);
        let marker = "name=\"csrf\" value=\"";
        let at = page.find(marker).expect("a CSRF field") + marker.len();
        page[at..].split('"').next().expect("a token").to_owned()
    }

    /// POSTs a urlencoded form (values already encoded); returns the status.
    pub fn post_form(&self, path: &str, body: &str) -> u16 {
        https(
            "POST",
            &format!("{}{path}", self.base),
            &[
                ("cookie", &self.cookie),
                ("content-type", "application/x-www-form-urlencoded"),
            ],
            Some(body),
        )
        .unwrap_or_else(|e| panic!("POST {path}: {e}"))
        .status
    }

    /// POSTs a multipart form as a browser sends it: `fields` in order, then `file` as the
    /// field `file_field`. Returns the status and the body. `timeout` bounds the whole
    /// request (a large file over a slow link).
    pub fn post_file(
        &self,
        path: &str,
        fields: &[(&str, &str)],
        file_field: &str,
        file: &[u8],
        timeout: Duration,
    ) -> (u16, String) {
        let boundary = "----outposttestboundary7d3a";
        let mut body = Vec::with_capacity(file.len() + 1024);
        for (name, value) in fields {
            body.extend_from_slice(
                format!(
                    "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
                )
                .as_bytes(),
            );
        }
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{file_field}\"; \
                 filename=\"upload.bin\"\r\nContent-Type: application/octet-stream\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(file);
        body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        let tls = ureq::tls::TlsConfig::builder()
            .disable_verification(true)
            .build();
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .tls_config(tls)
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_global(Some(timeout))
            .build()
            .into();
        let req = ureq::http::Request::builder()
            .method("POST")
            .uri(format!("{}{path}", self.base))
            .header("cookie", &self.cookie)
            .header(
                "content-type",
                format!("multipart/form-data; boundary={boundary}"),
            )
            .body(body)
            .unwrap_or_else(|e| panic!("POST {path}: {e}"));
        let mut resp = agent
            .run(req)
            .unwrap_or_else(|e| panic!("POST {path}: {e}"));
        let status = resp.status().as_u16();
        let text = resp
            .body_mut()
            .with_config()
            .limit(4 * 1024 * 1024)
            .read_to_string()
            .unwrap_or_default();
        (status, text)
    }
}

/// The flash message of a page (what the last form did), or an empty string.
pub fn flash(page: &str) -> String {
    page.find("class=\"flash")
        .map(|at| page[at..].chars().take(800).collect())
        .unwrap_or_default()
}

/// `application/x-www-form-urlencoded` escaping of a value.
pub fn form_escape(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
