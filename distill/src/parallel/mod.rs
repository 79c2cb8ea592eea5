//! Data-parallel training: one process per GPU (or per CPU socket), each training on its
//! share of every batch; gradients and loss values are summed across processes before the
//! clip and the update, so every process keeps the same weights. Only rank 0 writes files.
//!
//! Ranks find each other through environment variables (set by `dinoedge distill --nproc N`,
//! or by a cluster launcher):
//!   `DINOEDGE_RANK` (0-based), `DINOEDGE_WORLD_SIZE`, and `DINOEDGE_RENDEZVOUS`, a fresh
//!   directory every rank can read (a shared filesystem across machines).
//!
//! Sums go through NCCL on GPUs (libnccl.so.2 at run time, one GPU per rank; works across
//! machines), or through TCP to rank 0 on one machine (CPU or emulated trainers; ranks added
//! in rank order). Every rank gets the same sums, so the weights stay identical. A rank that
//! disappears makes the others fail (TCP: the socket closes; NCCL: its asynchronous error is
//! watched and the communicator aborted); checkpoints are written atomically by rank 0, so
//! the last one stays intact for `--resume`.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub mod launch;

use crate::cuda::{DevPtr, Device, bytes, bytes_mut};
use crate::error::{DistillError, Result};
use crate::rendezvous;
use dinoedge_runtime::dispatch::train::AllReduce;

/// This process's place among the data-parallel processes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct World {
    pub rank: usize,
    pub size: usize,
    pub rendezvous: PathBuf,
    /// This rank's index on its machine (`DINOEDGE_LOCAL_RANK`, `LOCAL_RANK` as torchrun
    /// sets it, `SLURM_LOCALID`, else the rank): its GPU by default.
    pub local_rank: usize,
}

/// How long a rank waits for the others to appear, and for one step's sums.
const JOIN_TIMEOUT: Duration = Duration::from_secs(300);
const STEP_TIMEOUT: Duration = Duration::from_secs(3600);

fn cfg_err(m: String) -> DistillError {
    DistillError::Config(m)
}

impl World {
    /// The world from `DINOEDGE_RANK`, `DINOEDGE_WORLD_SIZE` and `DINOEDGE_RENDEZVOUS`, or
    /// `None` when none is set (a single process).
    pub fn from_env() -> Result<Option<World>> {
        let get = |k: &str| std::env::var(k).ok();
        let (rank, size, dir) = (
            get("DINOEDGE_RANK"),
            get("DINOEDGE_WORLD_SIZE"),
            get("DINOEDGE_RENDEZVOUS"),
        );
        if rank.is_none() && size.is_none() && dir.is_none() {
            return Ok(None);
        }
        let (Some(rank), Some(size), Some(dir)) = (rank, size, dir) else {
            return Err(cfg_err(
                "data-parallel training needs all of DINOEDGE_RANK, DINOEDGE_WORLD_SIZE and DINOEDGE_RENDEZVOUS".into(),
            ));
        };
        let num = |k: &str, v: &str| {
            v.parse::<usize>()
                .map_err(|e| cfg_err(format!("{k}={v:?}: {e}")))
        };
        let (rank, size) = (
            num("DINOEDGE_RANK", &rank)?,
            num("DINOEDGE_WORLD_SIZE", &size)?,
        );
        if size == 0 || rank >= size {
            return Err(cfg_err(format!(
                "DINOEDGE_RANK={rank} with DINOEDGE_WORLD_SIZE={size}: ranks are 0..{size}"
            )));
        }
        let local_rank = match ["DINOEDGE_LOCAL_RANK", "LOCAL_RANK", "SLURM_LOCALID"]
            .iter()
            .find_map(|k| Some((*k, get(k)?)))
        {
            Some((k, v)) => num(k, &v)?,
            None => rank,
        };
        Ok(Some(World {
            rank,
            size,
            rendezvous: PathBuf::from(dir),
            local_rank,
        }))
    }
}

/// Sums across ranks.
pub trait Collective {
    /// `v` summed over every rank (the same result on each).
    fn sum_f64(&mut self, v: &mut [f64]) -> Result<()>;
    fn sum_f32(&mut self, v: &mut [f32]) -> Result<()>;
    /// A device buffer of `n` f32 summed in place.
    fn sum_device(&mut self, dev: &dyn Device, p: DevPtr, n: usize) -> Result<()> {
        let mut host = vec![0.0f32; n];
        dev.download(p, bytes_mut(&mut host))?;
        self.sum_f32(&mut host)?;
        Ok(dev.upload(p, bytes(&host))?)
    }
    fn describe(&self) -> String;
}

/// A [`Collective`] as the runtime's training seam takes it
/// (`dinoedge_runtime::dispatch::train::AllReduce`), keeping the collective's own error
/// (a peer gone, a timeout) to report instead of the runtime's summary of it.
pub struct Ranks<'a> {
    c: &'a mut dyn Collective,
    err: Option<DistillError>,
}

impl<'a> Ranks<'a> {
    pub fn new(c: &'a mut dyn Collective) -> Self {
        Ranks { c, err: None }
    }

    /// The outcome of an op that summed through these ranks.
    pub fn result(mut self, r: dinoedge_runtime::Result<()>) -> Result<()> {
        match self.err.take() {
            Some(e) => Err(e),
            None => Ok(r?),
        }
    }

    fn keep(&mut self, r: Result<()>) -> dinoedge_runtime::Result<()> {
        r.map_err(|e| {
            let reason = e.to_string();
            self.err = Some(e);
            dinoedge_runtime::RuntimeError::Device {
                backend: self.c.describe(),
                reason,
            }
        })
    }
}

impl AllReduce for Ranks<'_> {
    fn sum_f32(&mut self, v: &mut [f32]) -> dinoedge_runtime::Result<()> {
        let r = self.c.sum_f32(v);
        self.keep(r)
    }

    fn sum_device(
        &mut self,
        dev: &dyn Device,
        p: DevPtr,
        n: usize,
    ) -> dinoedge_runtime::Result<()> {
        let r = self.c.sum_device(dev, p, n);
        self.keep(r)
    }
}

/// Writes `data` to `path` atomically (other ranks poll for it).
fn publish(path: &Path, data: &[u8]) -> Result<()> {
    dinoedge_runtime::fsutil::write_atomic(path, data).map_err(DistillError::Runtime)
}

/// Waits for rank 0's file `name` in the rendezvous directory.
fn wait_for(world: &World, name: &str) -> Result<Vec<u8>> {
    let path = world.rendezvous.join(name);
    let t0 = Instant::now();
    loop {
        if let Ok(b) = std::fs::read(&path) {
            return Ok(b);
        }
        if t0.elapsed() > JOIN_TIMEOUT {
            return Err(cfg_err(format!(
                "rank {}: rank 0 did not publish {} within {} s (is rank 0 running, with the same DINOEDGE_RENDEZVOUS?)",
                world.rank,
                path.display(),
                JOIN_TIMEOUT.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Rank 0: accepts connections until every other rank has joined with a valid handshake.
/// Each handshake runs on its own short-lived thread (at most [`MAX_PENDING`] at once), so a
/// silent or garbage connection costs nothing but itself: it is dropped and counted.
fn accept_ranks(w: &World, l: &TcpListener, secret: &rendezvous::Secret) -> Result<Vec<TcpStream>> {
    const MAX_PENDING: usize = 32;
    l.set_nonblocking(true)
        .map_err(|e| io_err(w, "listening", e))?;
    let (tx, rx) = std::sync::mpsc::channel::<(TcpStream, std::result::Result<usize, String>)>();
    let pending = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut by_rank: Vec<Option<TcpStream>> = (1..w.size).map(|_| None).collect();
    let mut refused: Vec<String> = Vec::new();
    let t0 = Instant::now();
    while by_rank.iter().any(Option::is_none) {
        match l.accept() {
            Ok((mut s, addr)) => {
                use std::sync::atomic::Ordering;
                if pending.load(Ordering::Relaxed) >= MAX_PENDING
                    || s.set_nonblocking(false).is_err()
                {
                    refused.push(format!("{addr}: too many pending handshakes"));
                    continue;
                }
                pending.fetch_add(1, Ordering::Relaxed);
                let (tx, secret, size, pending) =
                    (tx.clone(), secret.clone(), w.size, pending.clone());
                std::thread::spawn(move || {
                    let r = rendezvous::accept(&mut s, &secret, size);
                    pending.fetch_sub(1, Ordering::Relaxed);
                    let _ = tx.send((s, r));
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            // Out of descriptors and the like: wait, keep listening.
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
        while let Ok((s, r)) = rx.try_recv() {
            match r {
                Ok(r) if by_rank[r - 1].is_none() => {
                    s.set_read_timeout(Some(STEP_TIMEOUT))
                        .and_then(|_| s.set_write_timeout(None))
                        .map_err(|e| io_err(w, "accepting", e))?;
                    by_rank[r - 1] = Some(s);
                }
                Ok(r) => {
                    return Err(cfg_err(format!(
                        "rank 0: two processes joined as rank {r} (world of {}); each rank needs its own DINOEDGE_RANK",
                        w.size
                    )));
                }
                Err(why) => {
                    let who = s.peer_addr().map_or("?".into(), |a| a.to_string());
                    eprintln!("rank 0: refused a rendezvous connection from {who}: {why}");
                    refused.push(format!("{who}: {why}"));
                }
            }
        }
        if t0.elapsed() > JOIN_TIMEOUT {
            let missing: Vec<usize> = (1..w.size).filter(|r| by_rank[r - 1].is_none()).collect();
            let note = if refused.is_empty() {
                String::new()
            } else {
                format!(
                    "; {} connection(s) were refused, the last: {}",
                    refused.len(),
                    refused.last().map_or("", String::as_str)
                )
            };
            return Err(cfg_err(format!(
                "rank 0: ranks {missing:?} did not join within {} s{note}",
                JOIN_TIMEOUT.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(by_rank
        .into_iter()
        .map(|s| s.expect("all joined"))
        .collect())
}

/// Sums through rank 0 over TCP on this machine: every rank sends its values, rank 0 adds
/// them in rank order and sends the total back.
pub struct Tcp {
    world: World,
    /// Rank 0: a stream per rank 1..; other ranks: the stream to rank 0.
    peers: Vec<TcpStream>,
}

fn io_err(world: &World, what: &str, e: std::io::Error) -> DistillError {
    cfg_err(format!(
        "rank {} of {}: {what}: {e} (a rank stopped or disappeared; the last checkpoint is intact, resume with --resume)",
        world.rank, world.size
    ))
}

impl Tcp {
    pub fn join(world: &World) -> Result<Tcp> {
        let w = world.clone();
        let mut peers = Vec::new();
        if w.rank == 0 {
            rendezvous::prepare_dir(&w.rendezvous)?;
            let secret = rendezvous::secret(&w.rendezvous, 0, JOIN_TIMEOUT)?;
            let l = TcpListener::bind("127.0.0.1:0").map_err(|e| io_err(&w, "listening", e))?;
            let port = l
                .local_addr()
                .map_err(|e| io_err(&w, "listening", e))?
                .port();
            publish(&w.rendezvous.join("tcp-port"), port.to_string().as_bytes())?;
            peers = accept_ranks(&w, &l, &secret)?;
        } else {
            let port = String::from_utf8_lossy(&wait_for(&w, "tcp-port")?)
                .trim()
                .to_string();
            let secret = rendezvous::secret(&w.rendezvous, w.rank, JOIN_TIMEOUT)?;
            let mut s = TcpStream::connect(format!("127.0.0.1:{port}"))
                .map_err(|e| io_err(&w, "connecting to rank 0", e))?;
            rendezvous::connect(&mut s, &secret, w.rank).map_err(|e| {
                cfg_err(format!(
                    "rank {}: rendezvous with rank 0 failed: {e}",
                    w.rank
                ))
            })?;
            s.set_read_timeout(Some(STEP_TIMEOUT))
                .map_err(|e| io_err(&w, "connecting", e))?;
            peers.push(s);
        }
        for s in &peers {
            let _ = s.set_nodelay(true);
        }
        Ok(Tcp { world: w, peers })
    }

    /// Sums raw little-endian values of `width` bytes with `add`.
    fn sum_bytes(&mut self, buf: &mut [u8], add: impl Fn(&mut [u8], &[u8])) -> Result<()> {
        let w = &self.world;
        if w.rank == 0 {
            let mut other = vec![0u8; buf.len()];
            for (k, s) in self.peers.iter_mut().enumerate() {
                s.read_exact(&mut other)
                    .map_err(|e| io_err(w, &format!("receiving from rank {}", k + 1), e))?;
                add(buf, &other);
            }
            for (k, s) in self.peers.iter_mut().enumerate() {
                s.write_all(buf)
                    .map_err(|e| io_err(w, &format!("sending to rank {}", k + 1), e))?;
            }
        } else {
            let s = &mut self.peers[0];
            s.write_all(buf)
                .map_err(|e| io_err(w, "sending to rank 0", e))?;
            s.read_exact(buf)
                .map_err(|e| io_err(w, "receiving from rank 0", e))?;
        }
        Ok(())
    }
}

impl Collective for Tcp {
    fn sum_f64(&mut self, v: &mut [f64]) -> Result<()> {
        let mut b: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.sum_bytes(&mut b, |acc, x| {
            for (a, y) in acc.chunks_exact_mut(8).zip(x.chunks_exact(8)) {
                let s = f64::from_le_bytes(a.try_into().expect("8 bytes"))
                    + f64::from_le_bytes(y.try_into().expect("8 bytes"));
                a.copy_from_slice(&s.to_le_bytes());
            }
        })?;
        for (x, c) in v.iter_mut().zip(b.chunks_exact(8)) {
            *x = f64::from_le_bytes(c.try_into().expect("8 bytes"));
        }
        Ok(())
    }

    fn sum_f32(&mut self, v: &mut [f32]) -> Result<()> {
        self.sum_bytes(bytes_mut(v), |acc, x| {
            for (a, y) in acc.chunks_exact_mut(4).zip(x.chunks_exact(4)) {
                let s = f32::from_le_bytes(a.try_into().expect("4 bytes"))
                    + f32::from_le_bytes(y.try_into().expect("4 bytes"));
                a.copy_from_slice(&s.to_le_bytes());
            }
        })
    }

    fn describe(&self) -> String {
        format!("tcp on this machine, {} ranks", self.world.size)
    }
}

/// Data-parallel sums in NCCL (GPU buffers summed on the GPUs; host values through a small
/// device buffer). libnccl is loaded at run time by its soname (`libnccl.so.2`, as NCCL
/// packages and the nvidia-nccl wheels ship it), with the five functions used.
#[cfg(feature = "cuda")]
pub mod nccl {
    use std::ffi::{c_char, c_int, c_void};

    use super::*;

    type Comm = *mut c_void;
    /// ncclUniqueId: 128 opaque bytes.
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct UniqueId([u8; 128]);
    const FLOAT32: c_int = 7;
    const FLOAT64: c_int = 8;
    const SUM: c_int = 0;
    const IN_PROGRESS: c_int = 7;

    struct Lib {
        _lib: libloading::Library,
        get_unique_id: unsafe extern "C" fn(*mut UniqueId) -> c_int,
        comm_init_rank: unsafe extern "C" fn(*mut Comm, c_int, UniqueId, c_int) -> c_int,
        all_reduce: unsafe extern "C" fn(
            *const c_void,
            *mut c_void,
            usize,
            c_int,
            c_int,
            Comm,
            *mut c_void,
        ) -> c_int,
        comm_get_async_error: unsafe extern "C" fn(Comm, *mut c_int) -> c_int,
        comm_abort: unsafe extern "C" fn(Comm) -> c_int,
        comm_destroy: unsafe extern "C" fn(Comm) -> c_int,
        error_string: unsafe extern "C" fn(c_int) -> *const c_char,
        get_version: unsafe extern "C" fn(*mut c_int) -> c_int,
    }

    impl Lib {
        fn load() -> Result<Lib> {
            // SAFETY: loading NCCL runs its (trivial) initialisers.
            let lib = ["libnccl.so.2", "libnccl.so"]
                .iter()
                .find_map(|n| unsafe { libloading::Library::new(n) }.ok())
                .ok_or_else(|| {
                    cfg_err("data-parallel training on GPUs needs NCCL: libnccl.so.2 not found on the loader path (install NCCL, or pip install nvidia-nccl-cu13 and add its lib folder to LD_LIBRARY_PATH)".into())
                })?;
            // SAFETY: NCCL 2.x's C signatures.
            unsafe {
                macro_rules! sym {
                    ($n:literal) => {
                        *lib.get(concat!($n, "\0").as_bytes())
                            .map_err(|e| cfg_err(format!("libnccl: {}: {e}", $n)))?
                    };
                }
                Ok(Lib {
                    get_unique_id: sym!("ncclGetUniqueId"),
                    comm_init_rank: sym!("ncclCommInitRank"),
                    all_reduce: sym!("ncclAllReduce"),
                    comm_get_async_error: sym!("ncclCommGetAsyncError"),
                    comm_abort: sym!("ncclCommAbort"),
                    comm_destroy: sym!("ncclCommDestroy"),
                    error_string: sym!("ncclGetErrorString"),
                    get_version: sym!("ncclGetVersion"),
                    _lib: lib,
                })
            }
        }

        fn check(&self, world: &World, what: &str, rc: c_int) -> Result<()> {
            if rc == 0 {
                return Ok(());
            }
            // SAFETY: NCCL returns a static string for any result code.
            let msg =
                unsafe { std::ffi::CStr::from_ptr((self.error_string)(rc)) }.to_string_lossy();
            Err(cfg_err(format!(
                "rank {} of {}: NCCL {what}: {msg} (code {rc}; the last checkpoint is intact, resume with --resume)",
                world.rank, world.size
            )))
        }
    }

    /// The NCCL version found on the loader path ("2.27.3"), and a fresh unique id made by it
    /// (no GPU needed): checks the library and the signatures used.
    pub fn probe() -> Result<(String, usize)> {
        let lib = Lib::load()?;
        let w = World {
            rank: 0,
            size: 1,
            rendezvous: PathBuf::new(),
            local_rank: 0,
        };
        let mut v: c_int = 0;
        // SAFETY: `v` receives the version code.
        lib.check(&w, "version", unsafe { (lib.get_version)(&mut v) })?;
        let mut id = UniqueId([0; 128]);
        // SAFETY: `id` receives 128 bytes.
        lib.check(&w, "unique id", unsafe { (lib.get_unique_id)(&mut id) })?;
        let version = format!("{}.{}.{}", v / 10000, (v / 100) % 100, v % 100);
        Ok((version, id.0.iter().filter(|&&b| b != 0).count()))
    }

    pub struct Nccl {
        world: World,
        lib: Lib,
        comm: Comm,
    }

    impl Nccl {
        /// Joins the world (rank 0 publishes the NCCL id in the rendezvous directory). Call
        /// with this rank's GPU current (the trainer's device is opened first).
        pub fn join(world: &World) -> Result<Nccl> {
            let lib = Lib::load()?;
            let mut id = UniqueId([0; 128]);
            if world.rank == 0 {
                crate::rendezvous::prepare_dir(&world.rendezvous)?;
                // SAFETY: `id` receives 128 bytes.
                lib.check(world, "unique id", unsafe { (lib.get_unique_id)(&mut id) })?;
                publish(&world.rendezvous.join("nccl-id"), &id.0)?;
            } else {
                let raw = wait_for(world, "nccl-id")?;
                id.0 = raw.as_slice().try_into().map_err(|_| {
                    cfg_err(format!(
                        "rank {}: a malformed NCCL id ({} bytes)",
                        world.rank,
                        raw.len()
                    ))
                })?;
            }
            let mut comm: Comm = std::ptr::null_mut();
            // SAFETY: `comm` receives the communicator; the id is the world's.
            let rc = unsafe {
                (lib.comm_init_rank)(&mut comm, world.size as c_int, id, world.rank as c_int)
            };
            lib.check(world, "init", rc)?;
            Ok(Nccl {
                world: world.clone(),
                lib,
                comm,
            })
        }

        /// In-place sum of `n` values of `ty` at `p` on the trainer's stream; waits for it
        /// while watching NCCL's asynchronous errors (a lost peer aborts instead of hanging).
        fn all_reduce(&self, dev: &dyn Device, p: DevPtr, n: usize, ty: c_int) -> Result<()> {
            let stream = dev
                .raw_stream()
                .ok_or_else(|| cfg_err("NCCL needs the CUDA trainer (--backend cuda)".into()))?;
            // SAFETY: `p` is a live device buffer of n values of `ty` on this rank's GPU;
            // in place, ordered on the trainer's stream.
            let rc = unsafe {
                (self.lib.all_reduce)(
                    p as *const c_void,
                    p as *mut c_void,
                    n,
                    ty,
                    SUM,
                    self.comm,
                    stream as *mut c_void,
                )
            };
            self.lib.check(&self.world, "all-reduce", rc)?;
            let t0 = Instant::now();
            while !dev.idle()? {
                let mut e: c_int = 0;
                // SAFETY: our communicator.
                let rc = unsafe { (self.lib.comm_get_async_error)(self.comm, &mut e) };
                let bad = if rc != 0 {
                    rc
                } else if e != 0 && e != IN_PROGRESS {
                    e
                } else {
                    0
                };
                let late = t0.elapsed() > STEP_TIMEOUT;
                if bad != 0 || late {
                    // SAFETY: our communicator; aborting unblocks the stream.
                    unsafe { (self.lib.comm_abort)(self.comm) };
                    if late {
                        return Err(cfg_err(format!(
                            "rank {} of {}: NCCL all-reduce did not finish in {} s (a rank stopped?); aborted (the last checkpoint is intact)",
                            self.world.rank,
                            self.world.size,
                            STEP_TIMEOUT.as_secs()
                        )));
                    }
                    return self.lib.check(
                        &self.world,
                        "all-reduce (a peer failed or disappeared)",
                        bad,
                    );
                }
                std::thread::sleep(Duration::from_micros(50));
            }
            Ok(())
        }

        /// Host values through a device buffer of `dev`.
        fn host_sum(&self, dev: &dyn Device, v: &mut [u8], n: usize, ty: c_int) -> Result<()> {
            let p = dev.alloc(v.len(), "NCCL host sums")?;
            let r = dev
                .upload(p, v)
                .map_err(DistillError::from)
                .and_then(|_| self.all_reduce(dev, p, n, ty))
                .and_then(|_| Ok(dev.download(p, v)?));
            dev.free(p);
            r
        }
    }

    impl Drop for Nccl {
        fn drop(&mut self) {
            // SAFETY: our communicator, destroyed once.
            let _ = unsafe { (self.lib.comm_destroy)(self.comm) };
        }
    }

    /// NCCL with the device its host sums go through.
    pub struct NcclOn {
        pub nccl: Nccl,
        pub dev: std::sync::Arc<dyn Device>,
    }

    impl Collective for NcclOn {
        fn sum_f64(&mut self, v: &mut [f64]) -> Result<()> {
            let mut b: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            self.nccl.host_sum(&*self.dev, &mut b, v.len(), FLOAT64)?;
            for (x, c) in v.iter_mut().zip(b.chunks_exact(8)) {
                *x = f64::from_le_bytes(c.try_into().expect("8 bytes"));
            }
            Ok(())
        }

        fn sum_f32(&mut self, v: &mut [f32]) -> Result<()> {
            let n = v.len();
            self.nccl.host_sum(&*self.dev, bytes_mut(v), n, FLOAT32)
        }

        fn sum_device(&mut self, dev: &dyn Device, p: DevPtr, n: usize) -> Result<()> {
            self.nccl.all_reduce(dev, p, n, FLOAT32)
        }

        fn describe(&self) -> String {
            format!("nccl, {} ranks", self.nccl.world.size)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rank 0 with attackers at the door: garbage, silence and a fake rank 1 without the
    /// secret are refused (and do not delay the real rank past the handshake timeout); the
    /// real rank joins and sums work.
    #[test]
    fn only_the_real_rank_joins_and_garbage_costs_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let rdv = tmp.path().join("rdv");
        let world = |rank| World {
            rank,
            size: 2,
            rendezvous: rdv.clone(),
            local_rank: rank,
        };
        let w0 = world(0);
        let rank0 = std::thread::spawn(move || Tcp::join(&w0));
        let t0 = Instant::now();
        let port = loop {
            if let Ok(p) = std::fs::read_to_string(rdv.join("tcp-port")) {
                break p.trim().to_string();
            }
            assert!(t0.elapsed() < Duration::from_secs(10));
            std::thread::sleep(Duration::from_millis(5));
        };
        let addr = format!("127.0.0.1:{port}");
        let mut garbage = TcpStream::connect(&addr).unwrap();
        garbage
            .write_all(&6073139484287059271u64.to_le_bytes())
            .unwrap();
        let _silent = TcpStream::connect(&addr).unwrap();
        let mut fake = TcpStream::connect(&addr).unwrap();
        let wrong = rendezvous::Secret::generate();
        let impostor = std::thread::spawn(move || rendezvous::connect(&mut fake, &wrong, 1));
        assert!(impostor.join().unwrap().is_err());
        // The real rank 1 joins while the silent peer is still connected.
        let mut one = Tcp::join(&world(1)).unwrap();
        let mut zero = rank0.join().unwrap().unwrap();
        assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
        let summer = std::thread::spawn(move || {
            let mut v = [1.0f64, 2.0];
            one.sum_f64(&mut v).map(|_| v)
        });
        let mut v = [10.0f64, 20.0];
        zero.sum_f64(&mut v).unwrap();
        assert_eq!(v, [11.0, 22.0]);
        assert_eq!(summer.join().unwrap().unwrap(), [11.0, 22.0]);
    }
}
