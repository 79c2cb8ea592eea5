//! A fork-join thread pool for the fast CPU kernels, as ggml and pthreadpool do it:
//! `threads - 1` persistent workers plus the calling thread run `n_tasks` tasks of one
//! closure, claiming task indices from an atomic counter, and the call returns when all
//! are done. Dispatch allocates nothing, so a forward pass after warm-up is allocation-free.
//!
//! Workers spin briefly for the next job (ops arrive back to back inside a forward), then
//! sleep on a condition variable.

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

    /// Runs `f(0..n_tasks)` across the pool and returns when every task has finished.
    pub fn run<F: Fn(usize) + Sync>(&self, n_tasks: usize, f: F) {
        if n_tasks == 0 {
            return;
        }
        if self.threads == 1 || n_tasks == 1 {
            for t in 0..n_tasks {
                f(t);
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
        *s.job.lock().unwrap_or_else(|e| e.into_inner()) = Some(job);
        s.epoch.fetch_add(1, Ordering::Release);
        s.wake.notify_all();
        run_tasks(s, job);
        // Wait for the workers: spin first, then sleep.
        let mut spins = 0;
        while s.busy.load(Ordering::Acquire) != 0 {
            if spins < SPIN {
                spins += 1;
                std::hint::spin_loop();
            } else {
                let g = s.done_lock.lock().unwrap_or_else(|e| e.into_inner());
                if s.busy.load(Ordering::Acquire) != 0 {
                    let _ = s.done.wait_timeout(g, std::time::Duration::from_millis(1));
                }
            }
        }
        *s.job.lock().unwrap_or_else(|e| e.into_inner()) = None;
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
        f(t);
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
            if spins < SPIN {
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
            // A panicking task must not leave the caller waiting forever.
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_tasks(s, job)));
            if r.is_err() {
                eprintln!("dinoedge: a CPU kernel task panicked (a bug)");
            }
        }
        if s.busy.fetch_sub(1, Ordering::AcqRel) == 1 {
            let _g = s.done_lock.lock().unwrap_or_else(|e| e.into_inner());
            s.done.notify_one();
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::Release);
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
        for threads in [1, 2, 4] {
            let pool = Pool::new(threads).unwrap();
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
