//! Helpers shared by the CLI test binaries (each includes this module with `mod common;`).
#![allow(dead_code)]

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use dinoedge::davis::{Mask, write_mask};

/// Reads a `dinoedge live` process's stderr until it prints its URL; returns `host:port`.
pub fn server_addr(stderr: &mut impl Read) -> String {
    let mut text = String::new();
    let t0 = Instant::now();
    loop {
        let mut buf = [0u8; 256];
        let n = stderr.read(&mut buf).unwrap();
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
        if let Some(rest) = text.split("http://").nth(1)
            && let Some(end) = rest.find('/')
        {
            return rest[..end].to_string();
        }
        assert!(
            n > 0 && t0.elapsed() < Duration::from_secs(60),
            "the server did not start: {text}"
        );
    }
}

/// Sends `raw` on a new connection and returns the response's status code (0 when the
/// server closed without answering).
pub fn http_status(addr: &str, raw: &[u8]) -> u16 {
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return 0;
    };
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(raw);
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).unwrap_or(0);
    String::from_utf8_lossy(&buf[..n])
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// `GET path` with `Connection: close`, its status code.
pub fn get(addr: &str, path: &str) -> u16 {
    http_status(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
}

/// A `w x h` mask with object 1 on every `every`-th pixel, written as an indexed PNG.
pub fn mask_file(path: &Path, w: usize, h: usize, every: usize) {
    write_mask(
        path,
        &Mask {
            width: w,
            height: h,
            labels: (0..w * h).map(|i| (i % every == 0) as u8).collect(),
        },
    )
    .unwrap();
}

/// `fixtures/` at the repository root.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures")
}

/// The `dinoedge` binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_dinoedge")
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Runs the CLI; a panic or an internal error in its stderr fails the test.
pub fn run<A: AsRef<OsStr>>(args: &[A]) -> Output {
    let out = Command::new(bin())
        .args(args)
        .output()
        .expect("run dinoedge");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("panicked") && !stderr.contains("internal error"),
        "panic: {stderr}"
    );
    out
}

fn shown<A: AsRef<OsStr>>(args: &[A]) -> Vec<String> {
    args.iter()
        .map(|a| a.as_ref().to_string_lossy().into_owned())
        .collect()
}

/// Runs a command that must succeed; returns stdout.
pub fn ok<A: AsRef<OsStr>>(args: &[A]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "dinoedge {:?} failed:\n{}",
        shown(args),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs a command that must fail with status 1; returns stderr.
pub fn fails<A: AsRef<OsStr>>(args: &[A]) -> String {
    let out = run(args);
    assert_eq!(
        out.status.code(),
        Some(1),
        "dinoedge {:?} should fail:\n{}",
        shown(args),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stderr).unwrap()
}
