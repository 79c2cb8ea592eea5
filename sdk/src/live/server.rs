//! The live view's HTTP server (cargo feature `server`): axum routes on hyper's HTTP/1
//! connections, on a single-threaded tokio runtime of its own thread.
//!
//! Endpoints: `/` (page), `/stream/{input,pca,view}.mjpg`, `/frame/{input,pca,view}.jpg`,
//! `/stats` (JSON), `POST /click?mode=similarity|point&u=..&v=..` (u, v in [0, 1] of the
//! image), `POST /reset`.
//!
//! Everything a client can send is bounded:
//! - connections: at most [`ServerOptions::max_connections`] at once (more are closed at
//!   accept); request heads within 16 KiB and 64 headers, read within
//!   [`ServerOptions::header_timeout`] (slow clients are cut, idle keep-alives too);
//! - bodies: none is read, and a declared length over 1 KiB is refused with 413;
//! - requests other than streams finish within [`ServerOptions::request_timeout`]; MJPEG
//!   streams are capped at [`ServerOptions::max_streams`], resend the last frame every
//!   [`HEARTBEAT`] (a vanished client fails the write and is dropped), and end with the
//!   source;
//! - clicks queue at most [`super::MAX_PENDING_CLICKS`]; points at most [`super::MAX_POINTS`];
//! - connections take at most half the process's descriptor limit, and running out of
//!   descriptors anyway pauses accepting; it never stops the listener.
//!
//! Who may call: the `Host` header must be an IP literal, `localhost`, or a name given in
//! [`ServerOptions::allowed_hosts`] (DNS rebinding gets a 421); a `POST` with a foreign
//! `Origin` gets a 403; and when the server listens beyond loopback, every path but `/`
//! needs the per-run token printed in the URL (`?token=`, as Jupyter does), else a 401.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::{Semaphore, watch};

use super::{Click, LiveShared, View, Watching};
use crate::error::{Error, Result};

const PAGE: &str = include_str!("live.html");
/// An MJPEG stream resends the current frame this often when no new one came.
pub const HEARTBEAT: Duration = Duration::from_secs(2);
const MAX_HEAD_BYTES: usize = 16 * 1024;
const MAX_HEADERS: usize = 64;
const MAX_BODY_BYTES: usize = 1024;

/// How the server listens and whom it answers.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// `host:port` to listen on (`127.0.0.1:8080`; `0.0.0.0:8080` for the LAN).
    pub addr: String,
    /// Host names accepted besides IP literals and `localhost` (`jetson.local`).
    pub allowed_hosts: Vec<String>,
    /// Require this token on every path but `/`. `None`: a random one when the address is
    /// not loopback, none on loopback.
    pub token: Option<String>,
    pub max_connections: usize,
    pub max_streams: usize,
    pub header_timeout: Duration,
    pub request_timeout: Duration,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            addr: "127.0.0.1:8080".into(),
            allowed_hosts: Vec::new(),
            token: None,
            max_connections: 64,
            max_streams: 12,
            header_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// A running server; [`LiveServer::stop`] (or drop) closes it and every connection.
pub struct LiveServer {
    addr: SocketAddr,
    token: Option<String>,
    shutdown: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
    stats: Arc<ServerStats>,
}

/// Counters of refused connections and requests, for tests and logs.
#[derive(Debug, Default)]
pub struct ServerStats {
    pub connections_refused: AtomicU64,
    pub accept_errors: AtomicU64,
    pub requests_refused: AtomicU64,
}

impl LiveServer {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// The page's URL, with the token when one is required.
    pub fn url(&self) -> String {
        match &self.token {
            Some(t) => format!("http://{}/?token={t}", self.addr),
            None => format!("http://{}/", self.addr),
        }
    }

    pub fn stats(&self) -> &ServerStats {
        &self.stats
    }

    /// Stops accepting, closes every connection and joins the server thread.
    pub fn stop(mut self) {
        self.shutdown_now();
    }

    fn shutdown_now(&mut self) {
        let _ = self.shutdown.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for LiveServer {
    fn drop(&mut self) {
        self.shutdown_now();
    }
}

struct App {
    shared: Arc<LiveShared>,
    /// Latest frame version, `None` once the stream ended.
    frames: watch::Receiver<Option<u64>>,
    token: Option<String>,
    allowed_hosts: Vec<String>,
    streams: Arc<Semaphore>,
    stats: Arc<ServerStats>,
}

/// 128 random bits from the OS, as hex.
fn random_token() -> Result<String> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).map_err(|e| Error::resource("a random token", e))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// Binds `opts.addr` and serves `shared` on a thread of its own.
pub fn serve(opts: ServerOptions, shared: Arc<LiveShared>) -> Result<LiveServer> {
    let net = |reason: String| Error::Network {
        addr: opts.addr.clone(),
        reason,
    };
    let std_listener = std::net::TcpListener::bind(&opts.addr).map_err(|e| net(e.to_string()))?;
    let addr = std_listener.local_addr().map_err(|e| net(e.to_string()))?;
    std_listener
        .set_nonblocking(true)
        .map_err(|e| net(e.to_string()))?;
    let token = match &opts.token {
        Some(t) => Some(t.clone()),
        None if !addr.ip().is_loopback() => Some(random_token()?),
        None => None,
    };
    let (frames_tx, frames_rx) = watch::channel(Some(shared.views().version));
    shared.listen(move |v| {
        frames_tx.send_replace(v);
    });
    if shared.ended() {
        // A pipeline that already finished still serves its last frame.
        shared.end();
    }
    let stats = Arc::new(ServerStats::default());
    let app = Arc::new(App {
        shared,
        frames: frames_rx,
        token: token.clone(),
        allowed_hosts: opts
            .allowed_hosts
            .iter()
            .map(|h| h.to_ascii_lowercase())
            .collect(),
        streams: Arc::new(Semaphore::new(opts.max_streams)),
        stats: stats.clone(),
    });
    let (shutdown, shutdown_rx) = watch::channel(false);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::resource("the live server's runtime", e))?;
    let thread = std::thread::Builder::new()
        .name("dinoedge-live-http".into())
        .spawn(move || rt.block_on(accept_loop(std_listener, app, opts, shutdown_rx)))
        .map_err(|e| Error::resource("the live server thread", e))?;
    Ok(LiveServer {
        addr,
        token,
        shutdown,
        thread: Some(thread),
        stats,
    })
}

async fn accept_loop(
    std_listener: std::net::TcpListener,
    app: Arc<App>,
    opts: ServerOptions,
    mut shutdown: watch::Receiver<bool>,
) {
    let listener = match tokio::net::TcpListener::from_std(std_listener) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("live server: cannot listen: {e}");
            return;
        }
    };
    let router = routes(app.clone(), &opts);
    let conns = Arc::new(Semaphore::new(connection_cap(opts.max_connections)));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(opts.header_timeout)
        .max_buf_size(MAX_HEAD_BYTES)
        .max_headers(MAX_HEADERS);
    loop {
        let accepted = tokio::select! {
            _ = shutdown.changed() => break,
            r = listener.accept() => r,
        };
        let stream = match accepted {
            Ok((s, _)) => s,
            Err(e) => {
                // EMFILE and friends: pause, keep the listener. Never fatal.
                if app.stats.accept_errors.fetch_add(1, Ordering::Relaxed) == 0 {
                    eprintln!("live server: accept failed ({e}); retrying");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = conns.clone().try_acquire_owned() else {
            app.stats
                .connections_refused
                .fetch_add(1, Ordering::Relaxed);
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = hyper_util::service::TowerToHyperService::new(router.clone());
        let conn = http.serve_connection(TokioIo::new(stream), service);
        let mut stop = shutdown.clone();
        tokio::spawn(async move {
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = stop.changed() => {}
            }
            drop(permit);
        });
    }
}

/// At most half the process's descriptor limit (less a reserve) goes to connections, so
/// that a flood never starves the rest of the process (frame files, model files, logs).
fn connection_cap(wanted: usize) -> usize {
    let soft = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|l| {
            l.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3).map(str::to_string))
        })
        .and_then(|v| v.parse::<usize>().ok());
    match soft {
        Some(n) => wanted.min((n / 2).saturating_sub(8).max(4)),
        None => wanted,
    }
}

fn routes(app: Arc<App>, opts: &ServerOptions) -> Router {
    let timed = Router::new()
        .route("/", get(page))
        .route("/stats", get(stats))
        .route("/frame/{file}", get(frame))
        .route("/click", post(click))
        .route("/reset", post(reset))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            opts.request_timeout,
        ));
    Router::new()
        .route("/stream/{file}", get(stream))
        .merge(timed)
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found") })
        .layer(middleware::from_fn_with_state(app.clone(), check_caller))
        .layer(tower_http::limit::RequestBodyLimitLayer::new(
            MAX_BODY_BYTES,
        ))
        .with_state(app)
}

/// Host, Origin and token checks, before any handler runs.
async fn check_caller(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let refuse = |status: StatusCode, msg: &'static str| {
        app.stats.requests_refused.fetch_add(1, Ordering::Relaxed);
        (status, msg).into_response()
    };
    let headers = req.headers();
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return refuse(StatusCode::BAD_REQUEST, "a Host header is required");
    };
    if !host_allowed(host, &app.allowed_hosts) {
        return refuse(
            StatusCode::MISDIRECTED_REQUEST,
            "unknown Host (pass --allow-host NAME to serve under a DNS name)",
        );
    }
    if req.method() == Method::POST && !same_origin(headers, host) {
        return refuse(StatusCode::FORBIDDEN, "cross-origin request refused");
    }
    if let Some(want) = &app.token
        && req.uri().path() != "/"
        && !token_matches(req.uri().query(), headers, want)
    {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "this server needs the token from its URL (?token=...)",
        );
    }
    next.run(req).await
}

/// `Host` without its port.
fn host_name(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or("");
    }
    host.rsplit_once(':').map_or(host, |(h, p)| {
        if p.bytes().all(|b| b.is_ascii_digit()) {
            h
        } else {
            host
        }
    })
}

/// IP literals cannot be rebound by DNS; names must be `localhost` or allowed explicitly.
fn host_allowed(host: &str, allowed: &[String]) -> bool {
    let name = host_name(host).to_ascii_lowercase();
    name.parse::<IpAddr>().is_ok() || name == "localhost" || allowed.contains(&name)
}

/// A POST without `Origin` (curl, scripts) or from this very origin.
fn same_origin(headers: &HeaderMap, host: &str) -> bool {
    match headers.get(header::ORIGIN) {
        None => true,
        Some(o) => o
            .to_str()
            .ok()
            .and_then(|o| o.strip_prefix("http://"))
            .is_some_and(|o| o.eq_ignore_ascii_case(host)),
    }
}

fn token_matches(query: Option<&str>, headers: &HeaderMap, want: &str) -> bool {
    let from_query = query.and_then(|q| {
        q.split('&')
            .find_map(|kv| kv.strip_prefix("token="))
            .map(str::to_string)
    });
    let from_header = headers
        .get("x-dinoedge-token")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    [from_query, from_header]
        .into_iter()
        .flatten()
        .any(|got| constant_time_eq(got.as_bytes(), want.as_bytes()))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn no_store(mut r: Response) -> Response {
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

async fn page() -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], PAGE).into_response()
}

async fn stats(State(app): State<Arc<App>>) -> Response {
    let body = serde_json::to_string(&app.shared.stats()).unwrap_or_default();
    no_store(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// `input.jpg` -> `input`.
fn view_name<'a>(file: &'a str, ext: &str) -> Option<&'a str> {
    file.strip_suffix(ext)
        .filter(|n| matches!(*n, "input" | "pca" | "view"))
}

async fn frame(State(app): State<Arc<App>>, Path(file): Path<String>) -> Response {
    let Some(which) = view_name(&file, ".jpg") else {
        return (StatusCode::NOT_FOUND, "unknown view").into_response();
    };
    if let Some(v) = View::from_name(which) {
        app.shared.polled(v);
    }
    let views = app.shared.views();
    let data = views.get(which).cloned().unwrap_or_default();
    if data.is_empty() {
        return (StatusCode::SERVICE_UNAVAILABLE, "no frame yet").into_response();
    }
    let mut r = (
        [(header::CONTENT_TYPE, "image/jpeg")],
        Bytes::from(data.as_ref().clone()),
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&views.version.to_string()) {
        r.headers_mut().insert("x-frame-version", v);
    }
    no_store(r)
}

#[derive(serde::Deserialize)]
struct ClickQuery {
    mode: Option<String>,
    u: Option<f32>,
    v: Option<f32>,
}

async fn click(State(app): State<Arc<App>>, Query(q): Query<ClickQuery>) -> Response {
    // NaN is outside every range, so `contains` refuses it.
    let unit = |x: Option<f32>| x.filter(|v| (0.0..=1.0).contains(v));
    let c = match (q.mode.as_deref(), unit(q.u), unit(q.v)) {
        (Some("similarity"), Some(u), Some(v)) => Click::Similarity { u, v },
        (Some("point"), Some(u), Some(v)) => Click::Point { u, v },
        _ => return bad_click(),
    };
    queue(&app, c)
}

fn bad_click() -> Response {
    (
        StatusCode::BAD_REQUEST,
        "expected mode=similarity|point and u, v in [0, 1]",
    )
        .into_response()
}

fn queue(app: &App, c: Click) -> Response {
    if app.shared.click(c) {
        (StatusCode::OK, "ok").into_response()
    } else {
        (StatusCode::TOO_MANY_REQUESTS, "too many pending clicks").into_response()
    }
}

async fn reset(State(app): State<Arc<App>>) -> Response {
    queue(&app, Click::Reset)
}

/// `multipart/x-mixed-replace`: each new JPEG of one view, the current one again every
/// [`HEARTBEAT`], and the end of the body when the source ends.
async fn stream(State(app): State<Arc<App>>, Path(file): Path<String>) -> Response {
    let Some(which) = view_name(&file, ".mjpg") else {
        return (StatusCode::NOT_FOUND, "unknown stream").into_response();
    };
    let Ok(permit) = app.streams.clone().try_acquire_owned() else {
        app.stats.requests_refused.fetch_add(1, Ordering::Relaxed);
        return (StatusCode::SERVICE_UNAVAILABLE, "too many streams open").into_response();
    };
    struct St {
        app: Arc<App>,
        rx: watch::Receiver<Option<u64>>,
        which: &'static str,
        done: bool,
        _permit: tokio::sync::OwnedSemaphorePermit,
        /// The pipeline draws this view while the stream is open.
        _watching: Watching,
    }
    let view = View::from_name(which).unwrap_or(View::Overlay);
    let which = view.name();
    let mut rx = app.frames.clone();
    rx.mark_changed();
    let st = St {
        rx,
        app: app.clone(),
        which,
        done: false,
        _permit: permit,
        _watching: app.shared.watch(view),
    };
    let body = futures_util::stream::unfold(st, |mut st| async move {
        if st.done {
            return None;
        }
        // A new frame, the end of the stream, or the heartbeat.
        let ended = match tokio::time::timeout(HEARTBEAT, st.rx.changed()).await {
            Ok(Ok(())) => st.rx.borrow_and_update().is_none(),
            Ok(Err(_)) => true,
            Err(_) => st.app.shared.ended(),
        };
        st.done = ended;
        let data = st
            .app
            .shared
            .views()
            .get(st.which)
            .cloned()
            .unwrap_or_default();
        let mut part = format!(
            "--frame\r\nContent-Type: image/jpeg\r\nContent-Length: {}\r\n\r\n",
            data.len()
        )
        .into_bytes();
        part.extend_from_slice(&data);
        part.extend_from_slice(b"\r\n");
        Some((Ok::<_, std::io::Error>(Bytes::from(part)), st))
    });
    no_store(
        (
            [(
                header::CONTENT_TYPE,
                "multipart/x-mixed-replace; boundary=frame",
            )],
            Body::from_stream(body),
        )
            .into_response(),
    )
}

/// Feeds raw bytes to one connection of a server (a LAN server with token `fuzz`) through
/// an in-memory pipe and returns what it answered: the fuzz target for request handling.
#[doc(hidden)]
pub fn answer_raw(request: &[u8]) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    thread_local! {
        static RT: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a current-thread runtime");
        static ROUTER: Router = {
            let shared = LiveShared::new();
            shared.publish_frame(vec![0xFF, 0xD8, 0xFF, 0xD9], vec![1], vec![2]);
            shared.end();
            let (_, frames) = watch::channel(None);
            let app = Arc::new(App {
                shared,
                frames,
                token: Some("fuzz".into()),
                allowed_hosts: vec!["jetson.local".into()],
                streams: Arc::new(Semaphore::new(2)),
                stats: Arc::new(ServerStats::default()),
            });
            routes(app, &ServerOptions::default())
        };
    }
    let router = ROUTER.with(|r| r.clone());
    RT.with(|rt| {
        rt.block_on(async move {
            let (mut client, server) = tokio::io::duplex(1 << 16);
            let mut http = hyper::server::conn::http1::Builder::new();
            // The client half-closes after its bytes; answer what it sent before closing
            // (the real server drops such a client at once, to notice vanished streams).
            http.timer(TokioTimer::new())
                .half_close(true)
                .header_read_timeout(Duration::from_secs(1))
                .max_buf_size(MAX_HEAD_BYTES)
                .max_headers(MAX_HEADERS);
            let service = hyper_util::service::TowerToHyperService::new(router);
            let conn = http.serve_connection(TokioIo::new(server), service);
            let task = tokio::spawn(async move {
                let _ = conn.await;
            });
            let mut out = Vec::new();
            let exchange = async {
                let _ = client.write_all(request).await;
                let _ = client.shutdown().await;
                let _ = client.read_to_end(&mut out).await;
            };
            let _ = tokio::time::timeout(Duration::from_secs(3), exchange).await;
            task.abort();
            out
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_requests_get_the_right_status() {
        let status = |req: &str| {
            let out = answer_raw(req.as_bytes());
            String::from_utf8_lossy(&out)
                .lines()
                .next()
                .unwrap_or("")
                .to_string()
        };
        assert!(status("GET / HTTP/1.1\r\nHost: 10.0.0.2:8080\r\n\r\n").contains("200"));
        // DNS rebinding, missing token, cross-origin click, huge body, garbage.
        assert!(status("GET /stats HTTP/1.1\r\nHost: attacker.example\r\n\r\n").contains("421"));
        assert!(status("GET /stats HTTP/1.1\r\nHost: 10.0.0.2\r\n\r\n").contains("401"));
        assert!(status("GET /stats?token=fuzz HTTP/1.1\r\nHost: 10.0.0.2\r\n\r\n").contains("200"));
        assert!(
            status("POST /click?token=fuzz&mode=point&u=0.5&v=0.5 HTTP/1.1\r\nHost: 10.0.0.2\r\nOrigin: http://evil.example\r\n\r\n")
                .contains("403")
        );
        assert!(
            status("POST /click?token=fuzz&mode=point&u=0.5&v=0.5 HTTP/1.1\r\nHost: 10.0.0.2\r\nContent-Length: 30000000000\r\n\r\n")
                .contains("413")
        );
        assert!(
            status("\x00\x01garbage\r\n\r\n").contains("400")
                || status("\x00\x01garbage\r\n\r\n").is_empty()
        );
        // The ended stream sends its last frame and closes.
        let out =
            answer_raw(b"GET /stream/input.mjpg?token=fuzz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
        assert!(String::from_utf8_lossy(&out).contains("--frame"));
    }

    #[test]
    fn hosts_origins_and_tokens() {
        let allowed = vec!["jetson.local".to_string()];
        for ok in [
            "127.0.0.1:8080",
            "localhost:80",
            "[::1]:8080",
            "192.168.1.5",
            "Jetson.local:8080",
        ] {
            assert!(host_allowed(ok, &allowed), "{ok}");
        }
        for bad in [
            "attacker.example",
            "attacker.example:8080",
            "localhost.attacker.example",
        ] {
            assert!(!host_allowed(bad, &allowed), "{bad}");
        }
        let mut h = HeaderMap::new();
        assert!(same_origin(&h, "127.0.0.1:8080"));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:8080"),
        );
        assert!(same_origin(&h, "127.0.0.1:8080"));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://evil.example"),
        );
        assert!(!same_origin(&h, "127.0.0.1:8080"));
        h.insert(header::ORIGIN, HeaderValue::from_static("null"));
        assert!(!same_origin(&h, "127.0.0.1:8080"));
        let h = HeaderMap::new();
        assert!(token_matches(Some("a=1&token=abc"), &h, "abc"));
        assert!(!token_matches(Some("token=abd"), &h, "abc"));
        assert!(!token_matches(None, &h, "abc"));
        assert_eq!(random_token().unwrap().len(), 32);
        assert_ne!(random_token().unwrap(), random_token().unwrap());
    }
}
