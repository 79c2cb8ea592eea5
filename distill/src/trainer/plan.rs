//! The trainer's memory plan: every buffer of a step as a named span of one arena, listed
//! once. A backend allocates the arena in one piece, and the memory a run reports (the
//! activations, with and without `--recompute`) is summed from the same list.

use dinoedge_runtime::dispatch::train::Buf;

/// Spans start on multiples of this many f32 (256 bytes: what GEMM libraries and SIMD loads
/// like best).
const ALIGN: usize = 64;

/// Named spans laid end to end.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    pub spans: Vec<(&'static str, Buf)>,
    pub len: usize,
}

impl Plan {
    /// The next `n` f32, for `what` (named in out-of-memory errors and reports).
    pub fn take(&mut self, what: &'static str, n: usize) -> Buf {
        let b = Buf {
            off: self.len,
            len: n,
        };
        self.len += n.div_ceil(ALIGN) * ALIGN;
        self.spans.push((what, b));
        b
    }

    /// Bytes of the arena so far.
    pub fn bytes(&self) -> u64 {
        4 * self.len as u64
    }

    /// What the arena holds, largest first ("block activations 1.20 GiB, objective 0.10 GiB,
    /// ..."): named in out-of-memory errors.
    pub fn summary(&self) -> String {
        let mut by: Vec<(&str, u64)> = Vec::new();
        for (what, _) in &self.spans {
            if !by.iter().any(|(w, _)| w == what) {
                by.push((what, self.bytes_of(what)));
            }
        }
        by.sort_by_key(|e| std::cmp::Reverse(e.1));
        let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
        by.iter()
            .map(|(w, b)| format!("{w} {:.2} GiB", gib(*b)))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Bytes planned for `what`.
    pub fn bytes_of(&self, what: &str) -> u64 {
        let n: usize = self
            .spans
            .iter()
            .filter(|(w, _)| *w == what)
            .map(|(_, b)| b.len.div_ceil(ALIGN) * ALIGN)
            .sum();
        4 * n as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_are_aligned_and_disjoint() {
        let mut p = Plan::default();
        let a = p.take("a", 3);
        let b = p.take("b", 65);
        let c = p.take("a", 0);
        assert_eq!((a.off, b.off, c.off), (0, 64, 192));
        assert_eq!(p.len, 192);
        assert_eq!(p.bytes_of("a"), 4 * 64);
        assert_eq!(p.bytes(), 4 * 192);
        assert_eq!(p.summary(), "b 0.00 GiB, a 0.00 GiB");
    }
}
