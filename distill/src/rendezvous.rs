//! The rendezvous of data-parallel ranks: a private directory, a per-run secret, and an
//! authenticated handshake, so that no other local process can join, stall or feed a run.
//!
//! - The rendezvous directory is created with mode 0700 (and must be owned by this user with
//!   no group or other access), so its files (the TCP port, the NCCL id, the secret) are
//!   private.
//! - The secret is 32 random bytes, from `DINOEDGE_RENDEZVOUS_SECRET` (cluster launchers set
//!   it for every rank) or else the file `secret` (mode 0600) in the directory, which
//!   `dinoedge distill --nproc` or rank 0 writes before any rank connects.
//! - A connecting rank and rank 0 prove to each other that they hold the secret (HMAC-SHA256
//!   over fresh nonces from both sides and the rank), within [`HANDSHAKE_TIMEOUT`]. A
//!   connection that fails is dropped and counted; it never aborts or stalls the run.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

use crate::error::{DistillError, Result};

/// How long a peer has to complete the handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// The environment variable that carries the secret for cluster launchers.
pub const SECRET_ENV: &str = "DINOEDGE_RENDEZVOUS_SECRET";
const SECRET_FILE: &str = "secret";
const MAGIC: &[u8; 8] = b"DINORDV1";

fn cfg_err(m: String) -> DistillError {
    DistillError::Config(m)
}

/// The per-run secret shared by the ranks.
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl Secret {
    /// A fresh random secret.
    pub fn generate() -> Secret {
        let mut b = [0u8; 32];
        rand::rng().fill_bytes(&mut b);
        Secret(hex(&b).into_bytes())
    }

    fn from_text(text: &str, what: &str) -> Result<Secret> {
        let t = text.trim();
        if t.len() < 16 {
            return Err(cfg_err(format!(
                "{what}: the rendezvous secret must be at least 16 characters"
            )));
        }
        Ok(Secret(t.as_bytes().to_vec()))
    }

    fn mac(&self, parts: &[&[u8]]) -> [u8; 32] {
        let mut m = <Hmac<Sha256>>::new_from_slice(&self.0).expect("HMAC takes any key length");
        for p in parts {
            m.update(p);
        }
        m.finalize().into_bytes().into()
    }

    fn verify(&self, parts: &[&[u8]], tag: &[u8]) -> bool {
        let mut m = <Hmac<Sha256>>::new_from_slice(&self.0).expect("HMAC takes any key length");
        for p in parts {
            m.update(p);
        }
        m.verify_slice(tag).is_ok()
    }
}

/// Creates the rendezvous directory private to this user (mode 0700), or checks that an
/// existing one is: owned by us, no access for group or others.
pub fn prepare_dir(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| DistillError::io(dir, e))?;
        }
        let meta = std::fs::metadata(dir).map_err(|e| DistillError::io(dir, e))?;
        // SAFETY: getuid has no preconditions.
        let me = unsafe { libc_getuid() };
        if meta.uid() != me {
            return Err(cfg_err(format!(
                "{}: the rendezvous directory belongs to another user (uid {}); use a fresh directory of your own",
                dir.display(),
                meta.uid()
            )));
        }
        if meta.mode() & 0o077 != 0 {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| DistillError::io(dir, e))?;
        }
        Ok(())
    }
    #[cfg(not(unix))]
    {
        std::fs::create_dir_all(dir).map_err(|e| DistillError::io(dir, e))
    }
}

#[cfg(unix)]
unsafe extern "C" {
    #[link_name = "getuid"]
    fn libc_getuid() -> u32;
}

/// Writes a fresh secret file (mode 0600) into the rendezvous directory.
pub fn write_secret(dir: &Path) -> Result<Secret> {
    let secret = Secret::generate();
    let path = dir.join(SECRET_FILE);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(&path).map_err(|e| DistillError::io(&path, e))?;
    f.write_all(&secret.0)
        .and_then(|_| f.sync_all())
        .map_err(|e| DistillError::io(&path, e))?;
    Ok(secret)
}

/// The run's secret: the environment's, else the directory's file (rank 0 writes one when
/// there is none; other ranks wait up to `wait` for it).
pub fn secret(dir: &Path, rank: usize, wait: Duration) -> Result<Secret> {
    if let Ok(v) = std::env::var(SECRET_ENV) {
        return Secret::from_text(&v, SECRET_ENV);
    }
    let path = dir.join(SECRET_FILE);
    let t0 = std::time::Instant::now();
    loop {
        match std::fs::read_to_string(&path) {
            Ok(t) if !t.trim().is_empty() => {
                return Secret::from_text(&t, &path.display().to_string());
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && rank == 0 => {
                return write_secret(dir);
            }
            _ if t0.elapsed() > wait => {
                return Err(cfg_err(format!(
                    "rank {rank}: no rendezvous secret in {} or {SECRET_ENV} within {} s",
                    path.display(),
                    wait.as_secs()
                )));
            }
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

fn nonce() -> [u8; 32] {
    let mut n = [0u8; 32];
    rand::rng().fill_bytes(&mut n);
    n
}

/// Rank 0's side: reads the peer's claim and proves itself, then checks the peer's proof.
/// Returns the authenticated rank, or why the connection was refused.
pub fn accept(
    s: &mut TcpStream,
    secret: &Secret,
    world_size: usize,
) -> std::result::Result<usize, String> {
    s.set_read_timeout(Some(HANDSHAKE_TIMEOUT))
        .and_then(|_| s.set_write_timeout(Some(HANDSHAKE_TIMEOUT)))
        .map_err(|e| e.to_string())?;
    let mut hello = [0u8; 8 + 8 + 32];
    s.read_exact(&mut hello)
        .map_err(|e| format!("no handshake within {} s: {e}", HANDSHAKE_TIMEOUT.as_secs()))?;
    if &hello[..8] != MAGIC {
        return Err("not a dinoedge rank (bad magic)".into());
    }
    let rank_bytes: [u8; 8] = hello[8..16].try_into().expect("8 bytes");
    let rank = u64::from_le_bytes(rank_bytes);
    let client_nonce = &hello[16..];
    let server_nonce = nonce();
    let proof = secret.mac(&[b"server", client_nonce, &server_nonce, &rank_bytes]);
    s.write_all(&server_nonce)
        .and_then(|_| s.write_all(&proof))
        .map_err(|e| e.to_string())?;
    let mut tag = [0u8; 32];
    s.read_exact(&mut tag).map_err(|e| e.to_string())?;
    if !secret.verify(&[b"client", &server_nonce, client_nonce, &rank_bytes], &tag) {
        return Err("the peer does not hold the run's secret".into());
    }
    match usize::try_from(rank) {
        Ok(r) if r >= 1 && r < world_size => Ok(r),
        _ => Err(format!(
            "an authenticated peer claims rank {rank} of {world_size}"
        )),
    }
}

/// A rank's side: claims `rank`, checks rank 0's proof, and proves itself.
pub fn connect(s: &mut TcpStream, secret: &Secret, rank: usize) -> std::result::Result<(), String> {
    s.set_read_timeout(Some(HANDSHAKE_TIMEOUT))
        .and_then(|_| s.set_write_timeout(Some(HANDSHAKE_TIMEOUT)))
        .map_err(|e| e.to_string())?;
    let rank_bytes = (rank as u64).to_le_bytes();
    let client_nonce = nonce();
    let mut hello = Vec::with_capacity(48);
    hello.extend_from_slice(MAGIC);
    hello.extend_from_slice(&rank_bytes);
    hello.extend_from_slice(&client_nonce);
    s.write_all(&hello).map_err(|e| e.to_string())?;
    let mut reply = [0u8; 64];
    s.read_exact(&mut reply).map_err(|e| e.to_string())?;
    let (server_nonce, proof) = reply.split_at(32);
    if !secret.verify(
        &[b"server", &client_nonce, server_nonce, &rank_bytes],
        proof,
    ) {
        return Err("the process on the rendezvous port does not hold the run's secret".into());
    }
    let tag = secret.mac(&[b"client", server_nonce, &client_nonce, &rank_bytes]);
    s.write_all(&tag).map_err(|e| e.to_string())?;
    s.set_write_timeout(None).map_err(|e| e.to_string())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        (l.accept().unwrap().0, c)
    }

    #[test]
    fn only_holders_of_the_secret_get_through() {
        let secret = Secret::generate();
        let (mut srv, mut cli) = pair();
        let s2 = secret.clone();
        let t = std::thread::spawn(move || connect(&mut cli, &s2, 2));
        assert_eq!(accept(&mut srv, &secret, 4), Ok(2));
        assert_eq!(t.join().unwrap(), Ok(()));

        // A peer with another secret is refused on both sides.
        let (mut srv, mut cli) = pair();
        let other = Secret::generate();
        let t = std::thread::spawn(move || connect(&mut cli, &other, 1));
        let e = accept(&mut srv, &secret, 4).unwrap_err();
        assert!(e.contains("secret") || e.contains("failed") || !e.is_empty());
        assert!(t.join().unwrap().unwrap_err().contains("secret"));

        // 8 bytes of garbage: refused, not a rank.
        let (mut srv, mut cli) = pair();
        cli.write_all(&6073139484287059271u64.to_le_bytes())
            .unwrap();
        drop(cli);
        assert!(accept(&mut srv, &secret, 4).is_err());

        // A silent peer: refused after the handshake timeout, not 300 s.
        let (mut srv, _cli) = pair();
        let t0 = std::time::Instant::now();
        assert!(
            accept(&mut srv, &secret, 4)
                .unwrap_err()
                .contains("no handshake")
        );
        assert!(t0.elapsed() < HANDSHAKE_TIMEOUT + Duration::from_secs(2));
    }

    #[cfg(unix)]
    #[test]
    fn the_directory_and_the_secret_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("rdv");
        prepare_dir(&dir).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        let s = secret(&dir, 0, Duration::ZERO).unwrap();
        assert_eq!(mode(&dir.join("secret")), 0o600);
        // Another rank reads the same secret.
        let s1 = secret(&dir, 1, Duration::ZERO).unwrap();
        assert_eq!(s.mac(&[b"x"]), s1.mac(&[b"x"]));
        // A world-readable existing directory is closed.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        prepare_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
    }
}
