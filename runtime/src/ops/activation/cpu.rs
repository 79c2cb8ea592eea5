//! CPU reference of `activation`.

use rayon::prelude::*;

use super::Activation;

#[inline]
pub fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + libm::erff(x * std::f32::consts::FRAC_1_SQRT_2))
}

#[inline]
pub fn gelu_tanh(x: f32) -> f32 {
    const C: f32 = 0.797_884_6; // sqrt(2/pi)
    0.5 * x * (1.0 + (C * (x + 0.044715 * x * x * x)).tanh())
}

#[inline]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

#[inline]
pub fn apply(act: Activation, x: f32) -> f32 {
    match act {
        Activation::Gelu => gelu(x),
        Activation::GeluTanh => gelu_tanh(x),
        Activation::Silu => silu(x),
    }
}

/// `x = act(x)` over a slice (serial; callers parallelise over rows).
pub fn activation_rows(x: &mut [f32], act: Activation) {
    for v in x.iter_mut() {
        *v = apply(act, *v);
    }
}

/// `x = act(x)`, in parallel.
pub fn activation_forward(x: &mut [f32], act: Activation) {
    x.par_chunks_mut(4096).for_each(|c| activation_rows(c, act));
}

/// d act(x) / dx.
#[inline]
pub fn derivative(act: Activation, x: f32) -> f32 {
    match act {
        Activation::Gelu => {
            // Phi(x) + x phi(x)
            let cdf = 0.5 * (1.0 + libm::erff(x * std::f32::consts::FRAC_1_SQRT_2));
            let pdf = (-0.5 * x * x).exp() * 0.398_942_3;
            cdf + x * pdf
        }
        Activation::GeluTanh => {
            const C: f32 = 0.797_884_6;
            let u = C * (x + 0.044715 * x * x * x);
            let t = u.tanh();
            0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * C * (1.0 + 3.0 * 0.044715 * x * x)
        }
        Activation::Silu => {
            let s = 1.0 / (1.0 + (-x).exp());
            s * (1.0 + x * (1.0 - s))
        }
    }
}

/// Backward of `activation`: dinp = dout * act'(pre), `=`.
pub fn activation_backward(dinp: &mut [f32], dout: &[f32], pre: &[f32], act: Activation) {
    dinp.par_chunks_mut(4096)
        .zip(dout.par_chunks(4096))
        .zip(pre.par_chunks(4096))
        .for_each(|((d, g), x)| {
            for i in 0..d.len() {
                d[i] = g[i] * derivative(act, x[i]);
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        // torch.nn.functional.gelu / silu at a few points (float64, rounded).
        for (x, g, s) in [
            (-3.0f32, -0.004_049_694, -0.142_277_62),
            (-0.5, -0.154_268_77, -0.188_770_34),
            (1.0, 0.841_344_7, 0.731_058_6),
            (2.5, 2.484_475_8, 2.310_354_5),
        ] {
            assert!((gelu(x) - g).abs() < 1e-6, "gelu({x}) = {}", gelu(x));
            assert!((silu(x) - s).abs() < 1e-6, "silu({x}) = {}", silu(x));
        }
        assert!((gelu_tanh(1.0) - 0.841_191_9).abs() < 1e-6);
        // Tails: no NaN from exp overflow.
        assert_eq!(silu(-200.0), -0.0);
        assert_eq!(gelu(-20.0), -0.0);
        assert_eq!(gelu(20.0), 20.0);
    }
}
