//! Latency statistics and process memory for `dinoedge bench`.

use serde::Serialize;

/// Summary of repeated timings, in milliseconds.
#[derive(Clone, Debug, Serialize)]
pub struct Stats {
    pub iters: usize,
    pub median_ms: f64,
    pub p90_ms: f64,
    pub min_ms: f64,
    pub mean_ms: f64,
}

impl Stats {
    /// `samples` in milliseconds; percentiles by nearest rank.
    pub fn from_ms(samples: &[f64]) -> Option<Stats> {
        if samples.is_empty() {
            return None;
        }
        let mut v = samples.to_vec();
        v.sort_by(|a, b| a.total_cmp(b));
        let rank = |q: f64| v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
        let median = if v.len() % 2 == 1 {
            v[v.len() / 2]
        } else {
            (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
        };
        Some(Stats {
            iters: v.len(),
            median_ms: median,
            p90_ms: rank(0.9),
            min_ms: v[0],
            mean_ms: v.iter().sum::<f64>() / v.len() as f64,
        })
    }
}

/// Peak resident set size of this process (Linux `VmHWM`), in bytes.
pub fn peak_rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let s = Stats::from_ms(&[5.0, 1.0, 3.0, 2.0, 4.0, 10.0, 6.0, 7.0, 8.0, 9.0]).unwrap();
        assert_eq!(
            (s.median_ms, s.p90_ms, s.min_ms, s.mean_ms),
            (5.5, 9.0, 1.0, 5.5)
        );
        assert_eq!(Stats::from_ms(&[4.0]).unwrap().p90_ms, 4.0);
        assert!(Stats::from_ms(&[]).is_none());
    }
}
