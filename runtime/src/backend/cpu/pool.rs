//! A fork-join thread pool for the fast CPU kernels, as ggml and pthreadpool do it:
//! `threads - 1` persistent workers plus the calling thread run `n_tasks` tasks of one
//! closure, claiming task indices from an atomic counter, and the call returns when all
//! are done. Dispatch allocates nothing, so a forward pass after warm-up is allocation-free.
//!
//! Workers spin briefly for the next job (ops arrive back to back inside a forward), then
//! sleep on a condition variable.
//!
//! A panicking task (a bug) never unwinds out of [`Pool::run`] while workers may still call
//! the closure: panics are caught on every thread, `run` always waits for the workers (a
//! drop guard, so even an unexpected unwind waits), and the panic is kept for
//! [`Pool::take_panic`], which the backends turn into an error for the op.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

/// The job being run: a type-erased `&(dyn Fn(usize) + Sync)` valid for the duration of
/// one [`Pool::run`] call.
#[derive(Clone, Copy)]
struct Job {
    f: *const (dyn Fn(usize) + Sync),
    n_tasks: usize,
}

// SAFETY: the pointer is only dereferenced while `Pool::run` keeps the closure alive, and the
// closure is `Sync`.
unsafe impl Send for Job {}

struct Shared {
    /// Incremented for every job; workers run a job once per new epoch.
    epoch: AtomicUsize,
    job: Mutex<Option<Job>>,
    wake: Condvar,
    /// Next task index to claim.
    next: AtomicUsize,
    /// Workers still inside the current job.
    busy: AtomicUsize,
    done: Condvar,
    done_lock: Mutex<()>,
    shutdown: AtomicBool,
    /// Spins before sleeping (see [`SPIN`]).
    spin: usize,
    /// The first task panic since the last [`Pool::take_panic`].
    panic: Mutex<Option<String>>,
}

/// The text of a caught panic (for errors that report one).
pub fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a task panicked".into())
}

impl Shared {
    fn record_panic(&self, p: Box<dyn std::any::Any + Send>) {
        let mut slot = self.panic.lock().unwrap_or_else(|e| e.into_inner());
        slot.get_or_insert_with(|| panic_message(&*p));
    }

    /// Blocks until every worker has left the current job: spin first, then sleep.
    fn wait_workers(&self) {
        let mut spins = 0;
        while self.busy.load(Ordering::Acquire) != 0 {
            if spins < self.spin {
                spins += 1;
                std::hint::spin_loop();
            } else {
                let g = self.done_lock.lock().unwrap_or_else(|e| e.into_inner());
                if self.busy.load(Ordering::Acquire) != 0 {
                    let _ = self
                        .done
                        .wait_timeout(g, std::time::Duration::from_millis(1));
                }
            }
        }
        *self.job.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

/// Waits for the workers when dropped: the closure they call outlives them on every path.
struct WaitForWorkers<'a>(&'a Shared);

impl Drop for WaitForWorkers<'_> {
    fn drop(&mut self) {
        self.0.wait_workers();
    }
}

pub struct Pool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    threads: usize,
    /// One `run` at a time (the pool is shared by reference inside a session).
    running: Mutex<()>,
}

/// How long a worker spins on the epoch before sleeping.
const SPIN: usize = 20_000;

impl Pool {
    /// A pool that runs jobs on `threads` threads in total (the caller included).
    pub fn new(threads: usize) -> std::io::Result<Self> {
        Self::with_spin(threads, SPIN)
    }

    /// A pool whose idle workers sleep at once: for work that comes in bursts once per frame
    /// (label propagation), where a spinning worker would only take CPU time from the
    /// forward that runs next.
    pub fn sleeping(threads: usize) -> std::io::Result<Self> {
        Self::with_spin(threads, 0)
    }

    fn with_spin(threads: usize, spin: usize) -> std::io::Result<Self> {
        let threads = threads.max(1);
        let shared = Arc::new(Shared {
            epoch: AtomicUsize::new(0),
            job: Mutex::new(None),
            wake: Condvar::new(),
            next: AtomicUsize::new(0),
            busy: AtomicUsize::new(0),
            done: Condvar::new(),
            done_lock: Mutex::new(()),
            shutdown: AtomicBool::new(false),
            spin,
            panic: Mutex::new(None),
        });
        let mut workers = Vec::with_capacity(threads - 1);
        for i in 1..threads {
            let s = shared.clone();
            workers.push(
                std::thread::Builder::new()
                    .name(format!("dinoedge-cpu-{i}"))
                    .spawn(move || worker(&s))?,
            );
        }
        Ok(Pool {
            shared,
            workers,
            threads,
            running: Mutex::new(()),
        })
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// The first task panic since the last call, if any: the op that ran it must report an
    /// error, since its output is incomplete.
    pub fn take_panic(&self) -> Option<String> {
        self.shared
            .panic
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    /// Runs `f(0..n_tasks)` across the pool and returns when every task has finished. A task
    /// that panics is recorded for [`Pool::take_panic`]; the other tasks still run.
    pub fn run<F: Fn(usize) + Sync>(&self, n_tasks: usize, f: F) {
        if n_tasks == 0 {
            return;
        }
        if self.threads == 1 || n_tasks == 1 {
            for t in 0..n_tasks {
                run_one(&self.shared, &f, t);
            }
            return;
        }
        let _guard = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let s = &*self.shared;
        let dyn_f: &(dyn Fn(usize) + Sync) = &f;
        // SAFETY: erases the closure's lifetime; every worker stops touching it before this
        // function returns (we wait for `busy == 0` below).
        let job = Job {
            f: unsafe {
                std::mem::transmute::<&(dyn Fn(usize) + Sync), &'static (dyn Fn(usize) + Sync)>(
                    dyn_f,
                )
            },
            n_tasks,
        };
        s.next.store(0, Ordering::Relaxed);
        s.busy.store(self.threads - 1, Ordering::Relaxed);
        let waiter = WaitForWorkers(s);
        {
            // The new epoch is published under the lock a sleeping worker checks it under,
            // so no worker can check the old one and then miss this wake-up.
            let mut slot = s.job.lock().unwrap_or_else(|e| e.into_inner());
            *slot = Some(job);
            s.epoch.fetch_add(1, Ordering::Release);
        }
        s.wake.notify_all();
        run_tasks(s, job);
        drop(waiter);
    }
}

/// Runs task `t`; a panic is recorded, and the caller goes on with the next task.
fn run_one(s: &Shared, f: &(dyn Fn(usize) + Sync), t: usize) {
    if let Err(p) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(t))) {
        s.record_panic(p);
    }
}

fn run_tasks(s: &Shared, job: Job) {
    // SAFETY: see `Pool::run`.
    let f = unsafe { &*job.f };
    loop {
        let t = s.next.fetch_add(1, Ordering::Relaxed);
        if t >= job.n_tasks {
            break;
        }
        run_one(s, f, t);
    }
}

fn worker(s: &Shared) {
    let mut seen = 0usize;
    loop {
        // Wait for a new epoch: spin, then sleep.
        let mut spins = 0;
        loop {
            if s.shutdown.load(Ordering::Acquire) {
                return;
            }
            let e = s.epoch.load(Ordering::Acquire);
            if e != seen {
                seen = e;
                break;
            }
            if spins < s.spin {
                spins += 1;
                std::hint::spin_loop();
            } else {
                let g = s.job.lock().unwrap_or_else(|e| e.into_inner());
                if s.epoch.load(Ordering::Acquire) == seen && !s.shutdown.load(Ordering::Acquire) {
                    let _ = s.wake.wait_timeout(g, std::time::Duration::from_millis(50));
                }
            }
        }
        let job = *s.job.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(job) = job {
            // Panics are caught per task (the caller reports them), so `busy` always drops.
            run_tasks(s, job);
        }
        if s.busy.fetch_sub(1, Ordering::AcqRel) == 1 {
            let _g = s.done_lock.lock().unwrap_or_else(|e| e.into_inner());
            s.done.notify_one();
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        {
            let _slot = self.shared.job.lock().unwrap_or_else(|e| e.into_inner());
            self.shared.shutdown.store(true, Ordering::Release);
        }
        self.shared.wake.notify_all();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

impl Pool {
    /// Splits `rows` into about four chunks per thread (at least `min_rows` each) and runs
    /// `f(first, end)` on each.
    pub fn run_rows<F: Fn(usize, usize) + Sync>(&self, rows: usize, min_rows: usize, f: F) {
        let chunk = rows.div_ceil(self.threads * 4).max(min_rows).max(1);
        self.run(rows.div_ceil(chunk), |t| {
            f(t * chunk, ((t + 1) * chunk).min(rows))
        });
    }
}

/// A row-major f32 buffer that pool tasks write in disjoint row ranges.
pub struct RowsMut<'a> {
    ptr: *mut f32,
    rows: usize,
    row_len: usize,
    _life: std::marker::PhantomData<&'a mut [f32]>,
}

// SAFETY: tasks only create non-overlapping row ranges (callers' contract on `rows`).
unsafe impl Send for RowsMut<'_> {}
unsafe impl Sync for RowsMut<'_> {}

impl<'a> RowsMut<'a> {
    pub fn new(buf: &'a mut [f32], row_len: usize) -> Self {
        RowsMut {
            ptr: buf.as_mut_ptr(),
            rows: buf.len() / row_len.max(1),
            row_len,
            _life: std::marker::PhantomData,
        }
    }

    /// Rows `r0..r1`.
    ///
    /// # Safety
    /// No two live slices may overlap.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn rows(&self, r0: usize, r1: usize) -> &'a mut [f32] {
        assert!(
            r0 <= r1 && r1 <= self.rows,
            "rows {r0}..{r1} of {}",
            self.rows
        );
        unsafe {
            std::slice::from_raw_parts_mut(
                self.ptr.add(r0 * self.row_len),
                (r1 - r0) * self.row_len,
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_task_runs_once() {
        // Spinning and sleeping pools (the sleeping one waits on the condition variables
        // for every job).
        for (threads, sleeping) in [(1, false), (2, false), (4, false), (2, true), (3, true)] {
            let pool = if sleeping {
                Pool::sleeping(threads).unwrap()
            } else {
                Pool::new(threads).unwrap()
            };
            for n in [0, 1, 3, 100, 1000] {
                let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
                pool.run(n, |t| {
                    hits[t].fetch_add(1, Ordering::Relaxed);
                });
                assert!(
                    hits.iter().all(|h| h.load(Ordering::Relaxed) == 1),
                    "threads {threads}, n {n}"
                );
            }
        }
    }

    #[test]
    fn a_panicking_task_is_reported_after_every_worker_has_stopped() {
        for threads in [1, 2, 3] {
            let pool = Pool::new(threads).unwrap();
            // Panics on the calling thread and on workers: `run` returns (no unwind), every
            // other task still ran, and the panic is reported once.
            for bad in [0usize, 5, 63] {
                let hits: Vec<AtomicUsize> = (0..64).map(|_| AtomicUsize::new(0)).collect();
                let quiet = std::panic::take_hook();
                std::panic::set_hook(Box::new(|_| {}));
                pool.run(64, |t| {
                    if t == bad {
                        panic!("task {t} failed");
                    }
                    std::thread::sleep(std::time::Duration::from_micros(200));
                    hits[t].fetch_add(1, Ordering::Relaxed);
                });
                std::panic::set_hook(quiet);
                let done = hits
                    .iter()
                    .filter(|h| h.load(Ordering::Relaxed) == 1)
                    .count();
                assert_eq!(done, 63, "threads {threads}, bad {bad}");
                let msg = pool.take_panic().expect("the panic is reported");
                assert!(msg.contains(&format!("task {bad} failed")), "{msg}");
                assert!(pool.take_panic().is_none());
            }
            // The pool still works afterwards.
            let sum = AtomicUsize::new(0);
            pool.run(10, |t| {
                sum.fetch_add(t, Ordering::Relaxed);
            });
            assert_eq!(sum.load(Ordering::Relaxed), 45);
        }
    }

    #[test]
    fn back_to_back_jobs_see_their_own_closure() {
        let pool = Pool::new(3).unwrap();
        for round in 0..200usize {
            let sum = AtomicUsize::new(0);
            pool.run(17, |t| {
                sum.fetch_add(t + round, Ordering::Relaxed);
            });
            assert_eq!(
                sum.load(Ordering::Relaxed),
                (0..17).sum::<usize>() + 17 * round
            );
        }
    }
}
