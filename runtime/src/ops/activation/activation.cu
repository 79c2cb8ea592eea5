// activation: elementwise gelu (erf, as nn.GELU), gelu_tanh, silu. Codes: 0 none, 1 gelu,
// 2 gelu_tanh, 3 silu (`Activation::code`). Other ops' kernels call `activate` too (matmul's
// epilogue, swiglu), so this file comes first among the ops.

__device__ __forceinline__ float activate(float x, int act) {
    switch (act) {
        case 1: return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f));
        case 2: return 0.5f * x * (1.0f + tanhf(0.7978845608028654f * (x + 0.044715f * x * x * x)));
        case 3: return x / (1.0f + expf(-x));
        default: return x;
    }
}

// d act(x) / dx, as `activation::cpu::derivative`.
__device__ __forceinline__ float activate_derivative(float x, int act) {
    switch (act) {
        case 1: {
            float cdf = 0.5f * (1.0f + erff(x * 0.70710678118654752f));
            return cdf + x * expf(-0.5f * x * x) * 0.3989422804f;
        }
        case 2: {
            const float c = 0.7978845608f;
            float t = tanhf(c * (x + 0.044715f * x * x * x));
            return 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * c * (1.0f + 3.0f * 0.044715f * x * x);
        }
        case 3: {
            float s = 1.0f / (1.0f + expf(-x));
            return s * (1.0f + x * (1.0f - s));
        }
        default: return 1.0f;
    }
}

// a (=) act(h)
extern "C" __global__ void activation_forward(float *a, const float *h, long long n, int act) {
    GRID_STRIDE(i, n) a[i] = activate(h[i], act);
}

// dh (=) da * act'(h)
extern "C" __global__ void activation_backward(float *dh, const float *da, const float *h, long long n,
                                               int act) {
    GRID_STRIDE(i, n) dh[i] = da[i] * activate_derivative(h[i], act);
}
