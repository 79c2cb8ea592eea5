// activation: functions the kernels of other ops call (matmul's epilogue, swiglu).

// erf(x), absolute error below 6e-7: the rational approximation of the fast CPU kernels
// (runtime/src/ops/activation/fast.rs), clamped at |x| = 4.
fn erf_approx(x0: f32) -> f32 {
    let x = clamp(x0, -4.0, 4.0);
    let x2 = x * x;
    var p = -2.7261423e-10;
    p = p * x2 + 2.7706813e-8;
    p = p * x2 - 2.101024e-6;
    p = p * x2 - 5.6925065e-5;
    p = p * x2 - 7.3499064e-4;
    p = p * x2 - 2.9546005e-3;
    p = p * x2 - 1.6096031e-2;
    var q = -1.456607e-5;
    q = q * x2 - 2.1337405e-4;
    q = q * x2 - 1.6828272e-3;
    q = q * x2 - 7.373329e-3;
    q = q * x2 - 1.4264747e-2;
    return clamp(x * p / q, -1.0, 1.0);
}

// act: 0 = none, 1 = gelu (erf), 2 = gelu (tanh), 3 = silu.
fn activate(x: f32, act: u32) -> f32 {
    switch act {
        case 1u: { return 0.5 * x * (1.0 + erf_approx(x * 0.70710678)); }
        case 2u: { return 0.5 * x * (1.0 + tanh(0.7978846 * (x + 0.044715 * x * x * x))); }
        case 3u: { return x / (1.0 + exp(-clamp(x, -80.0, 80.0))); }
        default: { return x; }
    }
}
