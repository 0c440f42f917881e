//! A real browser for the web admin page's tests: Debian's `chromium`, headless, driven
//! over WebDriver by `chromedriver` through `fantoccini`; plus raw HTTPS requests and `curl`
//! inside a network namespace for what a browser would not send.
//!
//! [`Browser`] is synchronous (each call runs the WebDriver exchange on its own
//! current-thread runtime) so tests read like the others. It starts `chromedriver` on a
//! free loopback port and kills it on drop; chromium runs as root with `--no-sandbox`, a
//! private profile directory, and accepts the box's self-signed certificate
//! (`acceptInsecureCerts`). Every wait is bounded; a failed wait panics with the page's
//! text and saves a screenshot.
//!
//! Screenshots go to `<target>/browser-screenshots/<test>/<name>.png` (the path is printed)
//! and must not be blank: at least [`MIN_NOT_BACKGROUND`] of the pixels differ from the
//! most common colour ([`not_blank`]).
//!
//! These tests REQUIRE `chromium` and `chromedriver` (`tests/run-all` installs them):
//! without them they fail saying so, they never skip.

use std::collections::HashMap;
use std::io::Cursor;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

use crate::{free_port, run_with_timeout, workspace_root, Netns};

/// Share of pixels that must differ from the most common colour for a screenshot to count
/// as not blank (2 %).
pub const MIN_NOT_BACKGROUND: f64 = 0.02;
/// Largest screenshot decoded (pixels): a 1280×900 page is about 1.2 million.
const MAX_PIXELS: u64 = 16 * 1024 * 1024;
/// How long chromedriver may take to listen, and a WebDriver session to open.
const START: Duration = Duration::from_secs(20);
/// How long one WebDriver command may take.
const COMMAND: Duration = Duration::from_secs(30);
/// Desktop window size.
pub const DESKTOP: (u32, u32) = (1280, 900);
/// Phone window size (an iPhone 12-14's CSS pixels).
pub const PHONE: (u32, u32) = (390, 844);

/// A headless chromium session (see the module documentation).
pub struct Browser {
    rt: tokio::runtime::Runtime,
    client: Option<Client>,
    driver: Child,
    shots: PathBuf,
    // Chromium's profile; deleted after the driver is gone.
    _profile: tempfile::TempDir,
}

impl std::fmt::Debug for Browser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Browser")
            .field("driver", &self.driver.id())
            .field("shots", &self.shots)
            .finish_non_exhaustive()
    }
}

impl Browser {
    /// Starts chromedriver and a headless chromium at desktop size; `test` names the
    /// screenshot directory.
    pub fn start(test: &str) -> Browser {
        let chromium = which("chromium").unwrap_or_else(|| {
            panic!("chromium is not installed (apt-get install chromium; tests/run-all does)")
        });
        let chromedriver = which("chromedriver").unwrap_or_else(|| {
            panic!(
                "chromedriver is not installed (apt-get install chromium-driver; tests/run-all does)"
            )
        });
        let port = free_port();
        let driver = Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", chromedriver.display()));
        let profile = tempfile::tempdir().expect("profile directory");
        let shots = target_dir().join("browser-screenshots").join(test);
        std::fs::create_dir_all(&shots)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", shots.display()));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let mut browser = Browser {
            rt,
            client: None,
            driver,
            shots,
            _profile: profile,
        };
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let deadline = Instant::now() + START;
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if let Ok(Some(status)) = browser.driver.try_wait() {
                panic!("chromedriver exited at start: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver did not listen on {addr} within {START:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let (w, h) = DESKTOP;
        let mut caps = serde_json::Map::new();
        caps.insert("acceptInsecureCerts".into(), json!(true));
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": chromium,
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--no-first-run",
                    format!("--window-size={w},{h}"),
                    format!("--user-data-dir={}", browser._profile.path().display()),
                ],
            }),
        );
        let url = format!("http://{addr}");
        let client = browser
            .rt
            .block_on(async {
                tokio::time::timeout(
                    START,
                    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                        .capabilities(caps)
                        .connect(&url),
                )
                .await
            })
            .unwrap_or_else(|_| panic!("no WebDriver session within {START:?}"))
            .unwrap_or_else(|e| panic!("cannot open a WebDriver session with chromium: {e}"));
        browser.client = Some(client);
        browser
    }

    fn client(&self) -> &Client {
        self.client
            .as_ref()
            .expect("the session is open until drop")
    }

    /// Runs one WebDriver exchange, bounded by [`COMMAND`].
    fn run<T, E: std::fmt::Display>(
        &self,
        what: &str,
        fut: impl std::future::Future<Output = Result<T, E>>,
    ) -> Result<T, String> {
        // The timer is made inside the runtime (it needs its clock).
        match self
            .rt
            .block_on(async { tokio::time::timeout(COMMAND, fut).await })
        {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(format!("{what}: {e}")),
            Err(_) => Err(format!("{what}: no answer within {COMMAND:?}")),
        }
    }

    /// Opens `url` and waits for it to load.
    pub fn goto(&self, url: &str) {
        self.run(&format!("goto {url}"), self.client().goto(url))
            .unwrap_or_else(|e| panic!("{e}"));
    }

    /// The address the browser shows now.
    pub fn current_url(&self) -> String {
        self.run("current url", self.client().current_url())
            .map(|u| u.to_string())
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// The visible text of the page (`document.body.innerText`).
    pub fn page_text(&self) -> String {
        self.run(
            "page text",
            self.client().execute(
                "return document.body ? document.body.innerText : '';",
                vec![],
            ),
        )
        .map(|v| v.as_str().unwrap_or_default().to_owned())
        .unwrap_or_else(|e| panic!("{e}"))
    }

    /// The page's HTML as the browser has it now.
    pub fn page_source(&self) -> String {
        self.run("page source", self.client().source())
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Waits up to `timeout` for `text` to appear in the page's visible text; panics with
    /// the page text (and saves a screenshot) when it does not.
    pub fn wait_for_text(&self, text: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let page = self.page_text();
            if page.contains(text) {
                return;
            }
            if Instant::now() >= deadline {
                let shot = self.save_png("timeout", &self.png());
                panic!(
                    "{text:?} not on the page within {timeout:?} (at {}; screenshot {}):\n{page}",
                    self.current_url(),
                    shot.display()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The form control whose `<label>` reads `label_or_name` (by `for=`, or wrapping it),
    /// or whose `aria-label` or `name` it is.
    pub fn control(&self, label_or_name: &str) -> Element {
        let lit = xpath_literal(label_or_name);
        let controls = "self::input or self::select or self::textarea";
        let xpaths = [
            format!("//*[({controls}) and @id=//label[normalize-space(.)={lit}]/@for]"),
            format!("//label[normalize-space(.)={lit}]//*[{controls}]"),
            format!("//*[({controls}) and @aria-label={lit}]"),
            format!("//*[({controls}) and @name={lit}]"),
        ];
        for xpath in &xpaths {
            if let Ok(mut found) = self.run("find", self.client().find_all(Locator::XPath(xpath))) {
                if !found.is_empty() {
                    return found.swap_remove(0);
                }
            }
        }
        panic!(
            "no form control labelled or named {label_or_name:?} on {}:\n{}",
            self.current_url(),
            self.page_text()
        );
    }

    /// Types `value` into the control labelled or named `label_or_name`, replacing what
    /// it held.
    pub fn fill(&self, label_or_name: &str, value: &str) {
        let el = self.control(label_or_name);
        self.run("clear", el.clear())
            .unwrap_or_else(|e| panic!("{e}"));
        self.run("type", el.send_keys(value))
            .unwrap_or_else(|e| panic!("{e}"));
    }

    /// Clicks the button, link or submit input whose text (or value) is `text`.
    pub fn click_text(&self, text: &str) {
        let lit = xpath_literal(text);
        let xpath = format!(
            "//button[normalize-space(.)={lit}] | //a[normalize-space(.)={lit}] | \
             //input[(@type='submit' or @type='button') and @value={lit}]"
        );
        let el = self
            .run("find", self.client().find(Locator::XPath(&xpath)))
            .unwrap_or_else(|e| {
                panic!(
                    "no button or link {text:?} on {} ({e}):\n{}",
                    self.current_url(),
                    self.page_text()
                )
            });
        self.run(&format!("click {text:?}"), el.click())
            .unwrap_or_else(|e| panic!("{e}"));
    }

    /// Resizes the window (CSS pixels).
    pub fn set_size(&self, (width, height): (u32, u32)) {
        self.run(
            "set window size",
            self.client().set_window_size(width, height),
        )
        .unwrap_or_else(|e| panic!("{e}"));
    }

    /// Phone width: 390×844.
    pub fn phone(&self) {
        self.set_size(PHONE);
    }

    /// The viewport's width as the page sees it (`window.innerWidth`).
    pub fn inner_width(&self) -> u64 {
        self.run(
            "inner width",
            self.client().execute("return window.innerWidth;", vec![]),
        )
        .ok()
        .and_then(|v| v.as_u64())
        .unwrap_or(0)
    }

    /// Runs `script` (a function body; `return` gives the result) in the page.
    pub fn eval(&self, script: &str) -> serde_json::Value {
        self.run("execute script", self.client().execute(script, vec![]))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// The page's full width (`document.documentElement.scrollWidth`): wider than the
    /// window means sideways scrolling.
    pub fn scroll_width(&self) -> u64 {
        self.run(
            "scroll width",
            self.client()
                .execute("return document.documentElement.scrollWidth;", vec![]),
        )
        .ok()
        .and_then(|v| v.as_u64())
        .unwrap_or(u64::MAX)
    }

    fn png(&self) -> Vec<u8> {
        self.run("screenshot", self.client().screenshot())
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn save_png(&self, name: &str, png: &[u8]) -> PathBuf {
        let path = self.shots.join(format!("{name}.png"));
        std::fs::write(&path, png)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        path
    }

    /// Saves a screenshot as `<name>.png` under the test's directory (printed) and panics
    /// unless it is not blank ([`not_blank`]). Returns its path.
    pub fn screenshot(&self, name: &str) -> PathBuf {
        let png = self.png();
        let path = self.save_png(name, &png);
        println!("screenshot: {}", path.display());
        match not_blank(&png) {
            Ok(share) => {
                println!(
                    "  {:.1} % of pixels differ from the background",
                    share * 100.0
                );
                path
            }
            Err(why) => panic!(
                "screenshot {} is blank: {why}\npage text:\n{}",
                path.display(),
                self.page_text()
            ),
        }
    }

    /// The directory screenshots go to.
    pub fn screenshot_dir(&self) -> &Path {
        &self.shots
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            // Ends the session (chromium exits); bounded, and chromedriver dies below anyway.
            let _ = self.rt.block_on(async {
                tokio::time::timeout(Duration::from_secs(5), client.close()).await
            });
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Whether a PNG shows something: `Ok(share)` with the share of pixels that differ from
/// the most common colour when it is at least [`MIN_NOT_BACKGROUND`], else why not.
pub fn not_blank(png_bytes: &[u8]) -> Result<f64, String> {
    let mut decoder = png::Decoder::new(Cursor::new(png_bytes));
    decoder.set_transformations(png::Transformations::normalize_to_color8());
    let mut reader = decoder.read_info().map_err(|e| format!("not a PNG: {e}"))?;
    let (width, height) = {
        let info = reader.info();
        (info.width, info.height)
    };
    let pixels = u64::from(width) * u64::from(height);
    if pixels == 0 || pixels > MAX_PIXELS {
        return Err(format!("{width}×{height} pixels"));
    }
    let size = reader
        .output_buffer_size()
        .ok_or_else(|| "image too large".to_owned())?;
    let mut buf = vec![0; size];
    let frame = reader
        .next_frame(&mut buf)
        .map_err(|e| format!("cannot decode: {e}"))?;
    let channels = frame.color_type.samples();
    let mut counts: HashMap<&[u8], u64> = HashMap::new();
    for row in buf[..frame.line_size * height as usize].chunks_exact(frame.line_size) {
        for px in row[..width as usize * channels].chunks_exact(channels) {
            *counts.entry(px).or_default() += 1;
        }
    }
    let background = counts.values().copied().max().unwrap_or(0);
    let share = (pixels - background) as f64 / pixels as f64;
    if share >= MIN_NOT_BACKGROUND {
        Ok(share)
    } else {
        Err(format!(
            "only {:.2} % of {width}×{height} pixels differ from the most common colour \
             (at least {:.0} % needed)",
            share * 100.0,
            MIN_NOT_BACKGROUND * 100.0
        ))
    }
}

/// What an HTTPS request got back.
#[derive(Debug, Clone)]
pub struct HttpsReply {
    /// The status code.
    pub status: u16,
    /// The headers, names in lower case.
    pub headers: Vec<(String, String)>,
    /// The body as text (lossy), at most 4 MiB.
    pub body: String,
}

impl HttpsReply {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One raw HTTPS (or HTTP) request from the test, accepting any certificate (the box's is
/// self-signed), following no redirect, 15 s at most. `Err` when no response came (refused,
/// timed out, TLS failed).
pub fn https(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Result<HttpsReply, String> {
    let tls = ureq::tls::TlsConfig::builder()
        .disable_verification(true)
        .build();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .tls_config(tls)
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_global(Some(Duration::from_secs(15)))
        .build()
        .into();
    let mut req = ureq::http::Request::builder().method(method).uri(url);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let req = req
        .body(body.unwrap_or_default().to_owned())
        .map_err(|e| format!("{method} {url}: {e}"))?;
    let mut resp = agent.run(req).map_err(|e| format!("{method} {url}: {e}"))?;
    let status = resp.status().as_u16();
    let headers = resp
        .headers()
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_ascii_lowercase(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let bytes = resp
        .body_mut()
        .with_config()
        .limit(4 * 1024 * 1024)
        .read_to_vec()
        .map_err(|e| format!("{method} {url}: body: {e}"))?;
    Ok(HttpsReply {
        status,
        headers,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    })
}

/// What `curl` made of a request.
#[derive(Debug, Clone)]
pub struct CurlOutcome {
    /// curl's exit code (0: a response came; 7: refused; 28: timed out; `None`: killed).
    pub code: Option<i32>,
    /// The HTTP status, when a response came.
    pub status: Option<u16>,
    /// The body (lossy).
    pub body: String,
    /// curl's error text.
    pub stderr: String,
}

/// `curl -k` of `url` from inside `ns` (as a client on another network would), giving up
/// after `timeout`.
pub fn curl_in(ns: &Netns, url: &str, timeout: Duration) -> CurlOutcome {
    let secs = timeout.as_secs().max(1).to_string();
    let out = run_with_timeout(
        ns.command("curl").args([
            "-k",
            "-sS",
            "--max-time",
            &secs,
            "-w",
            "\n%{http_code}",
            url,
        ]),
        timeout + Duration::from_secs(5),
    );
    let (body, code) = out
        .stdout
        .rsplit_once('\n')
        .map_or((String::new(), None), |(b, c)| {
            (b.to_owned(), c.trim().parse().ok())
        });
    CurlOutcome {
        code: out.code,
        status: code.filter(|c| *c != 0),
        body,
        stderr: out.stderr,
    }
}

/// An XPath string literal for `s` (`concat()` when it holds both quote kinds).
fn xpath_literal(s: &str) -> String {
    if !s.contains('\'') {
        format!("'{s}'")
    } else if !s.contains('"') {
        format!("\"{s}\"")
    } else {
        let parts: Vec<String> = s.split('\'').map(|p| format!("'{p}'")).collect();
        format!("concat({})", parts.join(", \"'\", "))
    }
}

/// The program's path if it is on PATH.
fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join(program))
        .find(|p| p.is_file())
}

/// `$CARGO_TARGET_DIR`, else the workspace's `target/`.
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|p| {
            if p.is_absolute() {
                p
            } else {
                workspace_root().join(p)
            }
        })
        .unwrap_or_else(|| workspace_root().join("target"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE.md: unwrap is fine in tests
mod tests {
    use super::*;

    fn png_of(width: u32, height: u32, paint: impl Fn(u32, u32) -> [u8; 3]) -> Vec<u8> {
        let mut out = Vec::new();
        {
            let mut enc = png::Encoder::new(&mut out, width, height);
            enc.set_color(png::ColorType::Rgb);
            enc.set_depth(png::BitDepth::Eight);
            let mut w = enc.write_header().unwrap();
            let mut data = Vec::new();
            for y in 0..height {
                for x in 0..width {
                    data.extend_from_slice(&paint(x, y));
                }
            }
            w.write_image_data(&data).unwrap();
        }
        out
    }

    #[test]
    fn a_white_page_is_blank_and_a_page_with_text_is_not() {
        let white = png_of(200, 100, |_, _| [255, 255, 255]);
        let err = not_blank(&white).unwrap_err();
        assert!(err.contains("0.00 %"), "{err}");
        // One stray line of pixels (1 %) is still blank.
        let speck = png_of(200, 100, |_, y| if y == 0 { [0, 0, 0] } else { [255; 3] });
        assert!(not_blank(&speck).is_err());
        // A band of "text" over 10 % of the page is not.
        let text = png_of(200, 100, |x, y| {
            if (40..50).contains(&y) && x % 2 == 0 {
                [20, 20, 20]
            } else {
                [255; 3]
            }
        });
        let share = not_blank(&text).unwrap();
        assert!((0.04..0.06).contains(&share), "{share}");
        assert!(not_blank(b"not a png").is_err());
    }

    #[test]
    fn xpath_literals_quote_any_text() {
        assert_eq!(xpath_literal("Log in"), "'Log in'");
        assert_eq!(xpath_literal("it's"), "\"it's\"");
        assert_eq!(xpath_literal("a'b\"c"), "concat('a', \"'\", 'b\"c')");
    }
}
