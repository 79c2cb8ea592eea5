//! A bounded soak of the live server on loopback (its own test binary, one test, so the
//! process's thread and descriptor counts are the server's): MJPEG clients that connect and
//! drop, slow clients, oversized requests, too many connections, and a source that ends.
//! After every round the server still answers, and threads and descriptors return to their
//! baseline. RSS before and after is printed.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dinoedge::live::LiveShared;
use dinoedge::live::server::{ServerOptions, serve};

fn count(dir: &str) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0)
}

fn request(addr: SocketAddr, raw: &[u8]) -> u16 {
    common::http_status(&addr.to_string(), raw)
}

fn get(addr: SocketAddr, path: &str) -> u16 {
    common::get(&addr.to_string(), path)
}

/// Polls until the process is back to (at most) `base` threads and descriptors.
fn settles(base: (usize, usize), what: &str) {
    let t0 = Instant::now();
    loop {
        let now = (count("/proc/self/task"), count("/proc/self/fd"));
        if now.0 <= base.0 && now.1 <= base.1 {
            eprintln!(
                "{what}: threads {} fds {} (baseline {} {})",
                now.0, now.1, base.0, base.1
            );
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "{what}: threads/fds {now:?} did not return to the baseline {base:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A tiny valid JPEG.
fn jpeg() -> Vec<u8> {
    let img = image::RgbImage::from_pixel(16, 16, image::Rgb([200, 30, 30]));
    let mut out = Vec::new();
    image::DynamicImage::ImageRgb8(img)
        .write_to(
            &mut std::io::Cursor::new(&mut out),
            image::ImageFormat::Jpeg,
        )
        .unwrap();
    out
}

#[test]
fn the_server_survives_hostile_clients_and_returns_to_baseline() {
    let shared = LiveShared::new();
    // A stand-in pipeline: 20 frames per second until told to end.
    let running = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let producer = {
        let (shared, running) = (shared.clone(), running.clone());
        let j = jpeg();
        std::thread::spawn(move || {
            while running.load(std::sync::atomic::Ordering::Relaxed) {
                shared.publish_frame(j.clone(), j.clone(), j.clone());
                std::thread::sleep(Duration::from_millis(50));
            }
            shared.end();
        })
    };
    let server = serve(
        ServerOptions {
            addr: "127.0.0.1:0".into(),
            max_connections: 32,
            header_timeout: Duration::from_secs(1),
            ..Default::default()
        },
        shared.clone(),
    )
    .unwrap();
    let addr = server.addr();
    assert_eq!(get(addr, "/stats"), 200);
    std::thread::sleep(Duration::from_millis(300));
    let base = (count("/proc/self/task"), count("/proc/self/fd"));
    let rss0 = rss_kib();

    // 1. MJPEG clients that connect, read a frame and drop, three rounds of 30.
    for round in 0..3 {
        let clients: Vec<TcpStream> = (0..30)
            .filter_map(|_| {
                let mut s = TcpStream::connect(addr).ok()?;
                s.write_all(
                    format!("GET /stream/view.mjpg HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes(),
                )
                .ok()?;
                Some(s)
            })
            .collect();
        for mut c in clients {
            c.set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            let _ = c.read(&mut [0u8; 1024]);
        }
        assert_eq!(get(addr, "/stats"), 200, "round {round}");
    }
    settles(base, "after MJPEG clients dropped");

    // 2. Slow clients (half a request head, then nothing): cut at the header timeout.
    let slow: Vec<TcpStream> = (0..20)
        .filter_map(|_| {
            let mut s = TcpStream::connect(addr).ok()?;
            s.write_all(b"GET /stats HTTP/1.1\r\nHost: 127").ok()?;
            Some(s)
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(get(addr, "/stats"), 200, "served while slow clients hang");
    drop(slow);
    settles(base, "after slow clients");

    // 3. Oversized requests: a 30 GB declared body, a long request line, many headers.
    let huge_body =
        format!("POST /reset HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 30000000000\r\n\r\n");
    assert_eq!(request(addr, huge_body.as_bytes()), 413);
    let long_line = format!(
        "GET /{} HTTP/1.1\r\nHost: {addr}\r\n\r\n",
        "a".repeat(1 << 20)
    );
    assert!(matches!(
        request(addr, long_line.as_bytes()),
        0 | 400 | 414 | 431
    ));
    let headers: String = (0..100_000).map(|i| format!("X-{i}: y\r\n")).collect();
    let many = format!("GET /stats HTTP/1.1\r\nHost: {addr}\r\n{headers}\r\n");
    assert!(matches!(request(addr, many.as_bytes()), 0 | 400 | 431));
    assert_eq!(get(addr, "/stats"), 200);
    settles(base, "after oversized requests");

    // 4. More connections than allowed: the extra ones are closed, the server keeps serving.
    let idle: Vec<TcpStream> = (0..60)
        .filter_map(|_| TcpStream::connect(addr).ok())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let refused = server
        .stats()
        .connections_refused
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(refused >= 20, "{} open, {refused} refused", idle.len());
    drop(idle);
    // Served again as soon as the flood's slots are released (at once on close, at the
    // header timeout for clients that stay silent).
    let t0 = Instant::now();
    while get(addr, "/stats") != 200 {
        assert!(
            t0.elapsed() < Duration::from_secs(3),
            "not serving after the flood"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    settles(base, "after a connection flood");

    // 5. The source ends: open streams get the last frame and close; new ones do the same.
    let mut streams: Vec<TcpStream> = (0..5)
        .map(|_| {
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(
                format!("GET /stream/input.mjpg HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes(),
            )
            .unwrap();
            s
        })
        .collect();
    running.store(false, std::sync::atomic::Ordering::Relaxed);
    producer.join().unwrap();
    for s in &mut streams {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut all = Vec::new();
        let _ = s.read_to_end(&mut all);
        assert!(String::from_utf8_lossy(&all).contains("--frame"));
    }
    drop(streams);
    let mut late = TcpStream::connect(addr).unwrap();
    late.write_all(format!("GET /stream/pca.mjpg HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .unwrap();
    late.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut all = Vec::new();
    let _ = late.read_to_end(&mut all);
    assert!(
        String::from_utf8_lossy(&all).contains("--frame"),
        "ended stream"
    );
    drop(late);
    assert_eq!(get(addr, "/frame/view.jpg"), 200);
    settles(base, "after the source ended");
    eprintln!("RSS {} KiB -> {} KiB", rss0, rss_kib());

    // Stopping closes everything: the server's thread is gone too.
    let before_stop = count("/proc/self/task");
    server.stop();
    assert!(count("/proc/self/task") < before_stop);
}
