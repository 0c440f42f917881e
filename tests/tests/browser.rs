//! The browser harness itself (tests/src/browser.rs), against a tiny page served by the
//! test: headless chromium fills a form by its label, clicks by text, reads the answer,
//! takes non-blank screenshots at desktop and phone width; the raw HTTP client and `curl`
//! in a namespace get their answers. The web admin page's own tests build on this.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

use outpost_tests::browser::{curl_in, https, Browser, PHONE};
use outpost_tests::{require_root, Netns};

const FORM: &str = r#"<!doctype html><html><head><title>Harness</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body style="margin:0;font-family:sans-serif">
<header style="background:#234;color:#fff;padding:40px 16px;font-size:28px">Outpost harness</header>
<form action="/greet" method="get" style="padding:16px">
<label for="who">Your name</label> <input id="who" name="who">
<button type="submit">Greet me</button></form></body></html>"#;

/// Serves `FORM` at `/` and a greeting at `/greet?who=X`, plain HTTP on loopback, until
/// the test process ends (one thread, each connection answered and closed).
fn serve() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    let port = listener.local_addr().expect("addr").port();
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            answer(stream);
        }
    });
    port
}

/// The same over HTTPS with a self-signed certificate for 127.0.0.1, as the box has.
fn serve_tls() -> u16 {
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .expect("params")
        .self_signed(&key)
        .expect("self-signed certificate");
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(
        vec![cert.der().clone()],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    )
    .expect("server config");
    let config = Arc::new(config);
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    let port = listener.local_addr().expect("addr").port();
    thread::spawn(move || {
        for tcp in listener.incoming().flatten() {
            let _ = tcp.set_read_timeout(Some(Duration::from_secs(5)));
            let Ok(tls) = rustls::ServerConnection::new(config.clone()) else {
                continue;
            };
            let mut stream = rustls::StreamOwned::new(tls, tcp);
            answer(&mut stream);
            stream.conn.send_close_notify();
            let _ = stream.flush();
        }
    });
    port
}

fn answer(mut stream: impl Read + Write) {
    let mut line = String::new();
    let mut reader = BufReader::new(&mut stream);
    if reader.read_line(&mut line).is_err() {
        return;
    }
    // Drain the headers (bounded: 100 lines).
    for _ in 0..100 {
        let mut h = String::new();
        if reader.read_line(&mut h).map_or(true, |n| n == 0) || h == "\r\n" {
            break;
        }
    }
    drop(reader);
    let target = line.split_whitespace().nth(1).unwrap_or("/");
    let (status, body) = if let Some(q) = target.strip_prefix("/greet?who=") {
        let who: String = q
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .take(32)
            .collect();
        (
            "200 OK",
            format!(
                "<!doctype html><body style=\"margin:0\"><h1 style=\"background:#264;color:#fff;\
                 padding:40px\">Hello, {who}!</h1></body>"
            ),
        )
    } else if target == "/" {
        ("200 OK", FORM.to_owned())
    } else {
        ("404 Not Found", "no".to_owned())
    };
    let _ = write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
}

#[test]
fn the_harness_fills_clicks_reads_and_screenshots_a_page() {
    let port = serve();
    let base = format!("http://127.0.0.1:{port}");
    let browser = Browser::start("harness");
    browser.goto(&format!("{base}/"));
    browser.wait_for_text("Outpost harness", Duration::from_secs(5));
    browser.screenshot("form");
    browser.fill("Your name", "Ada");
    browser.click_text("Greet me");
    browser.wait_for_text("Hello, Ada!", Duration::from_secs(5));
    assert!(browser.current_url().ends_with("/greet?who=Ada"));
    let shot = browser.screenshot("greeting");
    assert!(shot.starts_with(browser.screenshot_dir()) && shot.is_file());
    // By name as well as by label.
    browser.goto(&format!("{base}/"));
    browser.fill("who", "Bob");
    browser.click_text("Greet me");
    browser.wait_for_text("Hello, Bob!", Duration::from_secs(5));
    browser.phone();
    assert_eq!(browser.inner_width(), u64::from(PHONE.0), "phone width");
    browser.screenshot("greeting-phone");

    // The raw client (no browser, no CSRF token) gets the server's answer.
    let r = https("GET", &format!("{base}/nothing"), &[], None).expect("a response");
    assert_eq!(r.status, 404);
    let r = https("GET", &format!("{base}/"), &[], None).expect("a response");
    assert_eq!(r.header("Content-Type"), Some("text/html; charset=utf-8"));
    assert!(r.body.contains("Greet me"));
}

#[test]
fn a_self_signed_https_page_is_accepted_by_the_browser_and_the_raw_client() {
    let port = serve_tls();
    let url = format!("https://127.0.0.1:{port}/");
    let r = https("GET", &url, &[], None).expect("a response despite the self-signed cert");
    assert_eq!(r.status, 200);
    assert!(r.body.contains("Greet me"));
    let browser = Browser::start("harness-tls");
    browser.goto(&url);
    browser.wait_for_text("Outpost harness", Duration::from_secs(5));
    browser.fill("Your name", "Eve");
    browser.click_text("Greet me");
    browser.wait_for_text("Hello, Eve!", Duration::from_secs(5));
    browser.screenshot("greeting-tls");
}

#[test]
fn curl_from_another_namespace_reports_no_response() {
    require_root("curl in a network namespace");
    let port = serve();
    let ns = Netns::create("curl");
    // The listener is on this namespace's loopback: from another, nothing answers.
    let out = curl_in(
        &ns,
        &format!("http://127.0.0.1:{port}/"),
        Duration::from_secs(2),
    );
    assert!(
        out.status.is_none() && matches!(out.code, Some(7 | 28)),
        "{out:?}"
    );
}
