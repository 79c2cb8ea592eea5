//! [`LatestFrame`]: a source on its own thread, keeping only its newest frame.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

use super::*;

/// Shared state of [`LatestFrame`].
struct Slot {
    frame: Option<Frame>,
    /// Frames replaced before anyone took them.
    dropped: u64,
    /// Times the source was reopened after a failure.
    reconnects: u64,
    ended: bool,
    error: Option<String>,
    stop: bool,
}

/// Runs a source on its own thread and keeps only its newest frame. `reopen` (for cameras)
/// is called with backoff when the source fails, so a camera that disappears and comes back
/// resumes instead of ending the stream.
pub struct LatestFrame {
    shared: Arc<(Mutex<Slot>, Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// The source's description, for errors.
    name: String,
}

/// How to get a source again after a failure (None: failures end the stream).
pub type Reopen = Box<dyn FnMut() -> Result<Box<dyn FrameSource>> + Send>;

/// The capture thread: reads `source` into the slot until it ends, fails for good, or is stopped.
fn capture(source: Box<dyn FrameSource>, mut reopen: Option<Reopen>, s: &(Mutex<Slot>, Condvar)) {
    let lock = || s.0.lock().unwrap_or_else(|e| e.into_inner());
    let mut backoff = Duration::from_millis(200);
    // None while a failed source is being reopened: the old one is dropped first, so a
    // camera or an RTSP session that allows one client is free for the new one.
    let mut source = Some(source);
    loop {
        if lock().stop {
            return;
        }
        let Some(src) = source.as_mut() else {
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(Duration::from_secs(5));
            // Only sources that can be reopened are dropped.
            let Some(r) = reopen.as_mut() else { return };
            match r() {
                Ok(src) => {
                    source = Some(src);
                    let mut slot = lock();
                    slot.error = None;
                    slot.reconnects += 1;
                }
                Err(e) => {
                    lock().error = Some(format!(
                        "reopening failed: {e}; retrying in {:.1} s",
                        backoff.as_secs_f64()
                    ))
                }
            }
            continue;
        };
        match src.next_frame() {
            Ok(Some(f)) => {
                backoff = Duration::from_millis(200);
                let mut slot = lock();
                if slot.frame.is_some() {
                    slot.dropped += 1;
                }
                slot.frame = Some(f);
                s.1.notify_all();
            }
            Ok(None) => {
                lock().ended = true;
                s.1.notify_all();
                return;
            }
            Err(e) if reopen.is_some() => {
                source = None;
                lock().error = Some(format!("{e}; retrying in {:.1} s", backoff.as_secs_f64()));
            }
            Err(e) => {
                let mut slot = lock();
                slot.error = Some(e.to_string());
                slot.ended = true;
                s.1.notify_all();
                return;
            }
        }
    }
}

impl LatestFrame {
    pub fn start(source: Box<dyn FrameSource>, reopen: Option<Reopen>) -> Self {
        let name = source.describe();
        let shared = Arc::new((
            Mutex::new(Slot {
                frame: None,
                dropped: 0,
                reconnects: 0,
                ended: false,
                error: None,
                stop: false,
            }),
            Condvar::new(),
        ));
        let s = shared.clone();
        let thread = std::thread::spawn(move || capture(source, reopen, &s));
        LatestFrame {
            shared,
            thread: Some(thread),
            name,
        }
    }

    /// Waits (up to `timeout`) for a frame newer than the last one taken. `Ok(None)` when
    /// the stream ended; an error when it failed for good.
    pub fn take(&self, timeout: Duration) -> Result<Option<Frame>> {
        let (m, cv) = &*self.shared;
        let deadline = Instant::now() + timeout;
        let mut slot = m.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(f) = slot.frame.take() {
                return Ok(Some(f));
            }
            if slot.ended {
                return match &slot.error {
                    Some(e) => Err(Error::Source {
                        name: self.name.clone(),
                        reason: format!("failed: {e}"),
                    }),
                    None => Ok(None),
                };
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::Source {
                    name: self.name.clone(),
                    reason: format!(
                        "no frame for {:.1} s{}",
                        timeout.as_secs_f64(),
                        slot.error
                            .as_ref()
                            .map(|e| format!(" ({e})"))
                            .unwrap_or_default()
                    ),
                });
            }
            slot = cv
                .wait_timeout(slot, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Frames dropped so far because the consumer was slower than the source.
    pub fn dropped(&self) -> u64 {
        self.shared
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .dropped
    }

    /// Times the source was reopened after failing (a camera unplugged, an RTSP drop).
    pub fn reconnects(&self) -> u64 {
        self.shared
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .reconnects
    }

    /// The source ended or failed for good.
    pub fn ended(&self) -> bool {
        self.shared
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .ended
    }

    /// The source failed and is being reopened (with backoff) rather than ended.
    pub fn retrying(&self) -> bool {
        let slot = self.shared.0.lock().unwrap_or_else(|e| e.into_inner());
        slot.error.is_some() && !slot.ended
    }

    /// The current transient error (a camera being retried), if any.
    pub fn status(&self) -> Option<String> {
        self.shared
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .error
            .clone()
    }
}

impl Drop for LatestFrame {
    fn drop(&mut self) {
        self.shared.0.lock().unwrap_or_else(|e| e.into_inner()).stop = true;
        if let Some(t) = self.thread.take() {
            // The source is closed on its thread (a GStreamer pipeline set to NULL, which a
            // CSI camera needs to be usable again); a blocked camera read may not return, so
            // wait a little only.
            let deadline = Instant::now() + Duration::from_secs(2);
            while !t.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if t.is_finished() {
                let _ = t.join();
            }
        }
    }
}
