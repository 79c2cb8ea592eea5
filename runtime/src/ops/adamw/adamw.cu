// Kernels of the optimizer (ops/adamw; cpu.rs holds their CPU forms): the gradient norm's
// partial sums and the fused clip + AdamW + EMA update.

// partial[block] = sum of squares of this block's share of g (the host adds them in f64).
extern "C" __global__ void sum_squares(float *partial, const float *g, long long n) {
    __shared__ float red[32];
    float s = 0.0f;
    GRID_STRIDE(i, n) s += g[i] * g[i];
    s = block_sum(s, red);
    if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

// Fused clip + AdamW (decoupled decay on `decay[i]`) + EMA + bf16 copy, as optim.rs. Values
// below `frozen` keep their weights (heads-only runs) while their moments still update.
extern "C" __global__ void adamw_ema(float *p, float *m, float *v, float *ema, unsigned short *half,
                                    const float *g, const unsigned char *decay, long long n,
                                    long long frozen, float gscale, float b1, float b2, float eps,
                                    float shrink, float step, float bc2_sqrt, float ema_d, int *bad) {
    GRID_STRIDE(i, n) {
        float gi = i < frozen ? 0.0f : g[i] * gscale;
        float mi = b1 * m[i] + (1.0f - b1) * gi, vi = b2 * v[i] + (1.0f - b2) * gi * gi;
        m[i] = mi;
        v[i] = vi;
        float pi = p[i];
        if (i >= frozen) {
            pi = pi * (decay[i] ? shrink : 1.0f) - step * mi / (sqrtf(vi) / bc2_sqrt + eps);
            p[i] = pi;
        }
        ema[i] = ema_d * ema[i] + (1.0f - ema_d) * pi;
        if (half) half[i] = f32_to_bf16_bits(pi);
        if (!finite(pi)) bad[0] = 1;
    }
}
