//! The process supervisor of `--nproc N`: starts the same command N times as ranks 0..N of
//! one data-parallel run, watches them, and when one fails stops the others and says which
//! rank stopped, why, and which checkpoint is intact.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::error::{DistillError, Result};
use crate::{checkpoint, rendezvous};

/// What to start: `exe args` `n` times, splitting `batch`; `out` is the run directory (its
/// `.rendezvous/` holds the ranks' secret and logs).
pub struct Ranks {
    pub n: usize,
    pub batch: usize,
    pub exe: PathBuf,
    pub args: Vec<OsString>,
    pub out: PathBuf,
}

/// Runs the ranks to the end. Rank 0 keeps the terminal; the others log to
/// `OUT/.rendezvous/rank-K.log`.
pub fn launch_ranks(r: &Ranks) -> Result<()> {
    let n = r.n;
    if n == 0 || !r.batch.is_multiple_of(n) {
        return Err(DistillError::Config(format!(
            "--batch {} does not split over --nproc {n}: give a multiple of {n}",
            r.batch
        )));
    }
    let rdv = r.out.join(".rendezvous");
    // A private directory (0700) with a fresh secret (0600): only these ranks can join.
    let _ = std::fs::remove_dir_all(&rdv);
    rendezvous::prepare_dir(&rdv)?;
    rendezvous::write_secret(&rdv)?;
    let mut children = Vec::new();
    for k in 0..n {
        children.push(start(r, k, &rdv)?);
    }
    let status = watch(&mut children)?;
    if status.iter().all(|s| s.success()) {
        let _ = std::fs::remove_dir_all(&rdv);
        return Ok(());
    }
    Err(failure(r, &rdv, &status))
}

fn start(r: &Ranks, k: usize, rdv: &Path) -> Result<Child> {
    let mut c = Command::new(&r.exe);
    c.args(&r.args)
        .env("DINOEDGE_RANK", k.to_string())
        .env("DINOEDGE_WORLD_SIZE", r.n.to_string())
        .env("DINOEDGE_RENDEZVOUS", rdv)
        // One GPU per rank: the rank's index on this machine.
        .env("DINOEDGE_LOCAL_RANK", k.to_string());
    if k > 0 {
        let log = rdv.join(format!("rank-{k}.log"));
        let f = std::fs::File::create(&log).map_err(|e| DistillError::io(&log, e))?;
        c.stdout(Stdio::null()).stderr(f);
    }
    c.spawn().map_err(|e| DistillError::io(&r.exe, e))
}

/// Polls the ranks; after the first failure gives the others 2 s to stop on their own (a rank
/// that lost a peer fails too), then stops the rest. Returns every rank's status (a killed
/// rank's is its kill).
fn watch(children: &mut [Child]) -> Result<Vec<ExitStatus>> {
    let n = children.len();
    let mut status: Vec<Option<ExitStatus>> = vec![None; n];
    let mut failed_at: Option<Instant> = None;
    loop {
        for (k, c) in children.iter_mut().enumerate() {
            if status[k].is_none() {
                status[k] = c
                    .try_wait()
                    .map_err(|e| DistillError::RankFailed(format!("rank {k}: {e}")))?;
            }
        }
        if failed_at.is_none() && status.iter().flatten().any(|s| !s.success()) {
            failed_at = Some(Instant::now());
        }
        let all = status.iter().all(Option::is_some);
        if all || failed_at.is_some_and(|t| t.elapsed() >= Duration::from_secs(2)) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut out = Vec::with_capacity(n);
    for (k, c) in children.iter_mut().enumerate() {
        out.push(match status[k] {
            Some(s) => s,
            None => {
                let _ = c.kill();
                c.wait()
                    .map_err(|e| DistillError::RankFailed(format!("rank {k}: {e}")))?
            }
        });
    }
    Ok(out)
}

/// Names every rank that stopped (rank 0, every other rank's peer, last), with the tail of
/// its log, and the checkpoint to resume from.
fn failure(r: &Ranks, rdv: &Path, status: &[ExitStatus]) -> DistillError {
    let n = r.n;
    let mut failed: Vec<(usize, ExitStatus)> = status
        .iter()
        .enumerate()
        .filter(|(_, s)| !s.success())
        .map(|(k, s)| (k, *s))
        .collect();
    failed.sort_by_key(|&(k, _)| (k == 0, k));
    let what: Vec<String> = failed
        .iter()
        .map(|&(k, st)| {
            let tail = if k == 0 {
                "its error is above".to_string()
            } else {
                let log = rdv.join(format!("rank-{k}.log"));
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                let mut lines: Vec<&str> = text.lines().rev().take(3).collect();
                lines.reverse();
                format!("{} (log: {})", lines.join(" | "), log.display())
            };
            format!("rank {k} of {n} stopped ({st}): {tail}")
        })
        .collect();
    let last = checkpoints_under(&r.out).map_or("no checkpoint was written yet".to_string(), |p| {
        format!(
            "the last checkpoint, {}, is intact: rerun with --resume",
            p.display()
        )
    });
    DistillError::RankFailed(format!(
        "{}; the other ranks were stopped; {last}",
        what.join("; ")
    ))
}

/// The newest checkpoint of a run directory (or of its students' directories).
fn checkpoints_under(out: &Path) -> Option<PathBuf> {
    let latest = |d: &Path| checkpoint::latest(&d.join("checkpoints")).ok().flatten();
    latest(out).or_else(|| {
        let mut subs: Vec<PathBuf> = std::fs::read_dir(out)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_dir())
            .collect();
        subs.sort();
        subs.iter().find_map(|d| latest(d))
    })
}
