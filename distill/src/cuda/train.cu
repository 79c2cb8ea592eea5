// Kernels of the CUDA student trainer. Each is the device form of a CPU training op
// (distill/src/ops.rs, runtime/src/ops/<op>/cpu.rs) with the same name; `common.cuh` of the
// runtime comes first. Sums over rows are split into fixed chunks and added in chunk order
// (no atomics), so a step is reproducible run to run.

#define GRID_STRIDE(i, n) \
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < (n); i += (long long)gridDim.x * blockDim.x)

__device__ __forceinline__ bool finite(float x) {
    return (__float_as_uint(x) & 0x7f800000u) != 0x7f800000u;
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

// ---- patch_embed: cols (B*HW, C*P*P) <- pixels (B, C, H, W)
extern "C" __global__ void im2col_forward(float *cols, const float *pix, int batch, int ch, int h,
                                          int w, int p, int gh, int gw) {
    long long pl = (long long)ch * p * p, n = (long long)batch * gh * gw * pl;
    GRID_STRIDE(i, n) {
        long long row = i / pl;
        int e = (int)(i % pl), hw = gh * gw;
        int b = (int)(row / hw), pi = (int)(row % hw), gy = pi / gw, gx = pi % gw;
        int c = e / (p * p), ky = (e / p) % p, kx = e % p;
        cols[i] = pix[(((long long)b * ch + c) * h + gy * p + ky) * w + gx * p + kx];
    }
}

// Token rows x (B*N, D) <- [cls, registers, emb].
extern "C" __global__ void assemble_forward(float *x, const float *emb, const float *cls,
                                            const float *regs, int batch, int n, int prefix, int dim) {
    long long total = (long long)batch * n * dim;
    int hw = n - prefix;
    GRID_STRIDE(i, total) {
        long long row = i / dim;
        int j = (int)(i % dim), b = (int)(row / n), t = (int)(row % n);
        x[i] = t == 0 ? cls[j] : t < prefix ? regs[(long long)(t - 1) * dim + j]
                               : emb[((long long)b * hw + t - prefix) * dim + j];
    }
}

// demb (=) from the patch rows of dx; dcls, dregs (+=) summed over images in order.
extern "C" __global__ void assemble_backward(float *demb, float *dcls, float *dregs, const float *dx,
                                             int batch, int n, int prefix, int dim) {
    int hw = n - prefix;
    long long patches = (long long)batch * hw * dim, total = patches + (long long)prefix * dim;
    GRID_STRIDE(i, total) {
        if (i < patches) {
            long long row = i / dim;
            int j = (int)(i % dim), b = (int)(row / hw), p = (int)(row % hw);
            demb[i] = dx[((long long)b * n + prefix + p) * dim + j];
        } else {
            int e = (int)(i - patches), t = e / dim, j = e % dim;
            float s = 0.0f;
            for (int b = 0; b < batch; b++) s += dx[((long long)b * n + t) * dim + j];
            if (t == 0) dcls[j] += s; else dregs[(long long)(t - 1) * dim + j] += s;
        }
    }
}

// ---- matmul helpers: bias rows before an accumulating GEMM, 16-bit GEMM inputs.
extern "C" __global__ void bias_rows(float *out, int ldo, const float *bias, int rows, int o) {
    GRID_STRIDE(i, (long long)rows * o) out[(i / o) * ldo + i % o] = bias[i % o];
}

extern "C" __global__ void to_bf16(unsigned short *dst, const float *src, long long n) {
    GRID_STRIDE(i, n) dst[i] = f32_to_bf16_bits(src[i]);
}

// Column sums over row chunks: partial[c * cols + j] = sum over rows of chunk c of
// mode 0: a[r, j]; mode 1: a[r, j] * b[r, j]; mode 2: a[r, j] * (b[r, j] - mean[r]) * rstd[r].
// Grid (ceil(cols / 256), chunks). `column_reduce_add` then adds the chunks in order.
extern "C" __global__ void column_partials(float *partial, const float *a, const float *b,
                                           const float *mean, const float *rstd, int ld, int rows,
                                           int cols, int chunk, int mode) {
    int j = blockIdx.x * blockDim.x + threadIdx.x, c = blockIdx.y;
    if (j >= cols) return;
    int r1 = min(rows, (c + 1) * chunk);
    float s = 0.0f;
    for (int r = c * chunk; r < r1; r++) {
        long long at = (long long)r * ld + j;
        float v = a[at];
        if (mode == 1) v *= b[at];
        else if (mode == 2) v *= (b[at] - mean[r]) * rstd[r];
        s += v;
    }
    partial[(long long)c * cols + j] = s;
}

extern "C" __global__ void column_reduce_add(float *acc, const float *partial, int chunks, int cols) {
    GRID_STRIDE(j, cols) {
        float s = 0.0f;
        for (int c = 0; c < chunks; c++) s += partial[(long long)c * cols + j];
        acc[j] += s;
    }
}

// ---- layer_norm: one warp per row; mean and rstd saved for the backward.
extern "C" __global__ void layer_norm_forward(float *out, float *mean, float *rstd, const float *inp,
                                              const float *w, const float *b, int rows, int cols,
                                              float eps) {
    int row = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
    if (row >= rows) return;
    const float *x = inp + (long long)row * cols;
    float s = 0.0f;
    for (int i = lane; i < cols; i += 32) s += x[i];
    float m = warp_sum(s) / cols, v = 0.0f;
    for (int i = lane; i < cols; i += 32) v += (x[i] - m) * (x[i] - m);
    float r = 1.0f / sqrtf(warp_sum(v) / cols + eps);
    float *o = out + (long long)row * cols;
    for (int i = lane; i < cols; i += 32) o[i] = (x[i] - m) * r * w[i] + b[i];
    if (lane == 0) { mean[row] = m; rstd[row] = r; }
}

// dinp (=) = rstd * (dnorm - mean(dnorm) - xhat * mean(dnorm * xhat)), dnorm = dout * w.
extern "C" __global__ void layer_norm_backward(float *dinp, const float *dout, const float *inp,
                                               const float *w, const float *mean, const float *rstd,
                                               int rows, int cols) {
    int row = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
    if (row >= rows) return;
    long long o = (long long)row * cols;
    float m = mean[row], r = rstd[row], a = 0.0f, bx = 0.0f;
    for (int i = lane; i < cols; i += 32) {
        float dn = dout[o + i] * w[i];
        a += dn;
        bx += dn * (inp[o + i] - m) * r;
    }
    a = warp_sum(a) / cols;
    bx = warp_sum(bx) / cols;
    for (int i = lane; i < cols; i += 32) {
        float dn = dout[o + i] * w[i], xh = (inp[o + i] - m) * r;
        dinp[o + i] = r * (dn - a - xh * bx);
    }
}

// ---- rope on q and k of the patch tokens of qkv (B*N, 3D); `inverse` rotates gradients back.
extern "C" __global__ void rope_apply(float *qkv, const float *cos, const float *sin, int batch,
                                      int n, int prefix, int dim, int hd, int inverse) {
    int half = hd / 2, heads = dim / hd, np = n - prefix;
    long long total = (long long)batch * np * 2 * heads * half;
    GRID_STRIDE(i, total) {
        int j = (int)(i % half);
        long long r = i / half;
        int hh = (int)(r % (2 * heads));  // q heads then k heads
        r /= 2 * heads;
        int p = (int)(r % np), b = (int)(r / np);
        float *x = qkv + ((long long)b * n + prefix + p) * 3 * dim + (long long)hh * hd;
        const float *c = cos + (long long)p * hd, *s = sin + (long long)p * hd;
        float a = x[j], bb = x[j + half];
        if (!inverse) {
            x[j] = a * c[j] - bb * s[j];
            x[j + half] = bb * c[j + half] + a * s[j + half];
        } else {
            x[j] = a * c[j] + bb * s[j + half];
            x[j + half] = -a * s[j] + bb * c[j + half];
        }
    }
}

// ---- attention (training): one thread per query, K/V tiles of ATT_TILE keys in shared memory,
// online softmax; saves lse[(b*H + h)*N + i] for the backward. Block = 64 queries of one head;
// grid (batch * heads, query tiles) (grid.y is limited to 65535, so the larger count goes on x).
#define ATT_TILE 32
#define ATT_Q 64

// Keys k0 .. k0 + ATT_TILE of one head (K and V rows of qkv from `base`) into shared tiles,
// zeros past the last key.
template <int HD>
__device__ __forceinline__ void load_kv_tile(float (*ks)[HD], float (*vs)[HD], const float *base,
                                             int k0, int n, int dim) {
    for (int e = threadIdx.x; e < ATT_TILE * HD; e += blockDim.x) {
        int kk = e / HD, t = e % HD, key = k0 + kk;
        ks[kk][t] = key < n ? base[(long long)key * 3 * dim + dim + t] : 0.0f;
        vs[kk][t] = key < n ? base[(long long)key * 3 * dim + 2 * dim + t] : 0.0f;
    }
}

template <int HD>
__device__ void attention_forward_t(float *out, float *lse, const float *qkv, int n, int heads) {
    __shared__ float ks[ATT_TILE][HD], vs[ATT_TILE][HD];
    int dim = heads * HD, bh = blockIdx.x, b = bh / heads, h = bh % heads;
    int i = blockIdx.y * ATT_Q + threadIdx.x;
    bool live = i < n;
    const float *base = qkv + (long long)b * n * 3 * dim + h * HD;
    float scale = rsqrtf((float)HD), q[HD], acc[HD], m = NEG_INF, l = 0.0f;
    for (int t = 0; t < HD; t++) {
        q[t] = live ? base[(long long)i * 3 * dim + t] * scale : 0.0f;
        acc[t] = 0.0f;
    }
    for (int k0 = 0; k0 < n; k0 += ATT_TILE) {
        __syncthreads();
        load_kv_tile<HD>(ks, vs, base, k0, n, dim);
        __syncthreads();
        int kn = min(ATT_TILE, n - k0);
        for (int kk = 0; kk < kn; kk++) {
            float s = 0.0f;
            for (int t = 0; t < HD; t++) s += q[t] * ks[kk][t];
            float m2 = fmaxf(m, s), corr = expf(m - m2), p = expf(s - m2);
            l = l * corr + p;
            for (int t = 0; t < HD; t++) acc[t] = acc[t] * corr + p * vs[kk][t];
            m = m2;
        }
    }
    if (live) {
        float *o = out + ((long long)b * n + i) * dim + h * HD;
        for (int t = 0; t < HD; t++) o[t] = acc[t] / l;
        lse[(long long)bh * n + i] = m + logf(l);
    }
}

// delta[(b*H + h)*N + i] = dout_i . out_i (per head).
extern "C" __global__ void attention_backward_delta(float *delta, const float *dout, const float *out,
                                                    int batch, int n, int heads, int hd) {
    int dim = heads * hd;
    GRID_STRIDE(e, (long long)batch * heads * n) {
        int i = (int)(e % n), bh = (int)(e / n), b = bh / heads, h = bh % heads;
        long long o = ((long long)b * n + i) * dim + h * hd;
        float s = 0.0f;
        for (int t = 0; t < hd; t++) s += dout[o + t] * out[o + t];
        delta[e] = s;
    }
}

// dq (=): one thread per query, looping over K/V tiles.
//   dS_ij = P_ij (dout_i . v_j - delta_i), dq_i = scale * sum_j dS_ij k_j.
template <int HD>
__device__ void attention_backward_dq_t(float *dqkv, const float *dout, const float *qkv,
                                        const float *lse, const float *delta, int n, int heads) {
    __shared__ float ks[ATT_TILE][HD], vs[ATT_TILE][HD];
    int dim = heads * HD, bh = blockIdx.x, b = bh / heads, h = bh % heads;
    int i = blockIdx.y * ATT_Q + threadIdx.x;
    bool live = i < n;
    const float *base = qkv + (long long)b * n * 3 * dim + h * HD;
    float scale = rsqrtf((float)HD), q[HD], dy[HD], dq[HD];
    long long orow = ((long long)b * n + i) * dim + h * HD;
    for (int t = 0; t < HD; t++) {
        q[t] = live ? base[(long long)i * 3 * dim + t] * scale : 0.0f;
        dy[t] = live ? dout[orow + t] : 0.0f;
        dq[t] = 0.0f;
    }
    float li = live ? lse[(long long)bh * n + i] : 0.0f, di = live ? delta[(long long)bh * n + i] : 0.0f;
    for (int k0 = 0; k0 < n; k0 += ATT_TILE) {
        __syncthreads();
        load_kv_tile<HD>(ks, vs, base, k0, n, dim);
        __syncthreads();
        int kn = min(ATT_TILE, n - k0);
        for (int kk = 0; kk < kn; kk++) {
            float s = 0.0f, dp = 0.0f;
            for (int t = 0; t < HD; t++) {
                s += q[t] * ks[kk][t];
                dp += dy[t] * vs[kk][t];
            }
            float ds = expf(s - li) * (dp - di);
            for (int t = 0; t < HD; t++) dq[t] += ds * ks[kk][t];
        }
    }
    if (live) {
        float *o = dqkv + ((long long)b * n + i) * 3 * dim + h * HD;
        for (int t = 0; t < HD; t++) o[t] = dq[t] * scale;
    }
}

// dk, dv (=): one thread per key, looping over tiles of queries (q, dout, lse, delta).
//   dv_j = sum_i P_ij dout_i, dk_j = scale * sum_i dS_ij q_i.
template <int HD>
__device__ void attention_backward_dkv_t(float *dqkv, const float *dout, const float *qkv,
                                         const float *lse, const float *delta, int n, int heads) {
    __shared__ float qs[ATT_TILE][HD], ys[ATT_TILE][HD], ls[ATT_TILE], ds_[ATT_TILE];
    int dim = heads * HD, bh = blockIdx.x, b = bh / heads, h = bh % heads;
    int j = blockIdx.y * ATT_Q + threadIdx.x;
    bool live = j < n;
    const float *base = qkv + (long long)b * n * 3 * dim + h * HD;
    float scale = rsqrtf((float)HD), k[HD], v[HD], dk[HD], dv[HD];
    for (int t = 0; t < HD; t++) {
        k[t] = live ? base[(long long)j * 3 * dim + dim + t] * scale : 0.0f;
        v[t] = live ? base[(long long)j * 3 * dim + 2 * dim + t] : 0.0f;
        dk[t] = 0.0f;
        dv[t] = 0.0f;
    }
    for (int q0 = 0; q0 < n; q0 += ATT_TILE) {
        __syncthreads();
        for (int e = threadIdx.x; e < ATT_TILE * HD; e += blockDim.x) {
            int qq = e / HD, t = e % HD, qi = q0 + qq;
            qs[qq][t] = qi < n ? base[(long long)qi * 3 * dim + t] : 0.0f;
            ys[qq][t] = qi < n ? dout[((long long)b * n + qi) * dim + h * HD + t] : 0.0f;
        }
        for (int e = threadIdx.x; e < ATT_TILE; e += blockDim.x) {
            int qi = q0 + e;
            ls[e] = qi < n ? lse[(long long)bh * n + qi] : 0.0f;
            ds_[e] = qi < n ? delta[(long long)bh * n + qi] : 0.0f;
        }
        __syncthreads();
        int qn = min(ATT_TILE, n - q0);
        for (int qq = 0; qq < qn; qq++) {
            float s = 0.0f, dp = 0.0f;
            for (int t = 0; t < HD; t++) {
                s += qs[qq][t] * k[t];
                dp += ys[qq][t] * v[t];
            }
            float p = expf(s - ls[qq]), ds = p * (dp - ds_[qq]);
            for (int t = 0; t < HD; t++) {
                dv[t] += p * ys[qq][t];
                dk[t] += ds * qs[qq][t];
            }
        }
    }
    if (live) {
        float *o = dqkv + ((long long)b * n + j) * 3 * dim + h * HD;
        for (int t = 0; t < HD; t++) {
            o[dim + t] = dk[t] * scale;
            o[2 * dim + t] = dv[t];
        }
    }
}

#define ATTENTION_KERNELS(HD)                                                                          \
    extern "C" __global__ void attention_forward_hd##HD(float *out, float *lse, const float *qkv,      \
                                                        int n, int heads) {                           \
        attention_forward_t<HD>(out, lse, qkv, n, heads);                                              \
    }                                                                                                  \
    extern "C" __global__ void attention_backward_dq_hd##HD(float *dqkv, const float *dout,            \
                                                            const float *qkv, const float *lse,        \
                                                            const float *delta, int n, int heads) {    \
        attention_backward_dq_t<HD>(dqkv, dout, qkv, lse, delta, n, heads);                            \
    }                                                                                                  \
    extern "C" __global__ void attention_backward_dkv_hd##HD(float *dqkv, const float *dout,           \
                                                             const float *qkv, const float *lse,       \
                                                             const float *delta, int n, int heads) {   \
        attention_backward_dkv_t<HD>(dqkv, dout, qkv, lse, delta, n, heads);                           \
    }
ATTENTION_KERNELS(16)
ATTENTION_KERNELS(32)
ATTENTION_KERNELS(64)
ATTENTION_KERNELS(128)

// ---- activation, swiglu, layer scale, residual
extern "C" __global__ void activation_forward(float *a, const float *h, long long n, int act) {
    GRID_STRIDE(i, n) a[i] = activate(h[i], act);
}

extern "C" __global__ void activation_backward(float *dh, const float *da, const float *h, long long n,
                                               int act) {
    GRID_STRIDE(i, n) dh[i] = da[i] * activate_derivative(h[i], act);
}

// a (R, I) = act(h[:, :I]) * h[:, I:]
extern "C" __global__ void swiglu_forward(float *a, const float *h, int rows, int hidden, int act) {
    GRID_STRIDE(i, (long long)rows * hidden) {
        long long r = i / hidden, j = i % hidden;
        a[i] = activate(h[r * 2 * hidden + j], act) * h[r * 2 * hidden + hidden + j];
    }
}

extern "C" __global__ void swiglu_backward(float *dh, const float *da, const float *h, int rows,
                                           int hidden, int act) {
    GRID_STRIDE(i, (long long)rows * hidden) {
        long long r = i / hidden, j = i % hidden, g = r * 2 * hidden + j;
        dh[g] = da[i] * h[g + hidden] * activate_derivative(h[g], act);
        dh[g + hidden] = da[i] * activate(h[g], act);
    }
}

// x += gamma * y (per column)
extern "C" __global__ void layer_scale_forward(float *x, const float *y, const float *gamma, long long n,
                                               int dim) {
    GRID_STRIDE(i, n) x[i] += gamma[i % dim] * y[i];
}

// dy (=) dx * gamma
extern "C" __global__ void layer_scale_backward(float *dy, const float *dx, const float *gamma,
                                                long long n, int dim) {
    GRID_STRIDE(i, n) dy[i] = dx[i] * gamma[i % dim];
}

extern "C" __global__ void add_into(float *acc, const float *x, long long n) {
    GRID_STRIDE(i, n) acc[i] += x[i];
}

// ---- loss
// dst row k = src row (k / per) * n + prefix + k % per (CLS rows: per 1, prefix 0).
extern "C" __global__ void gather_rows(float *dst, const float *src, int rows, int dim, int n, int prefix,
                                       int per) {
    GRID_STRIDE(i, (long long)rows * dim) {
        long long k = i / dim;
        dst[i] = src[((k / per) * n + prefix + k % per) * dim + i % dim];
    }
}

extern "C" __global__ void scatter_add_rows(float *dst, const float *src, int rows, int dim, int n,
                                            int prefix, int per) {
    GRID_STRIDE(i, (long long)rows * dim) {
        long long k = i / dim;
        dst[((k / per) * n + prefix + k % per) * dim + i % dim] += src[i];
    }
}

// One block per row of p against t: dp (=) the gradient of
// wc * (1 - cos(p, t)) + wl * smooth_l1(p - t); parts[2 r] = 1 - cos, parts[2 r + 1] = sum smooth-L1.
extern "C" __global__ void cos_smooth_l1(float *dp, float *parts, const float *p, const float *t,
                                         int dim, float wc, float wl) {
    __shared__ float red[32];
    long long o = (long long)blockIdx.x * dim;
    float pp = 0.0f, tt = 0.0f, pt = 0.0f, l1 = 0.0f;
    for (int j = threadIdx.x; j < dim; j += blockDim.x) {
        float a = p[o + j], b = t[o + j], e = a - b, ae = fabsf(e);
        pp += a * a; tt += b * b; pt += a * b;
        l1 += ae < 1.0f ? 0.5f * e * e : ae - 0.5f;
    }
    pp = block_sum(pp, red);
    tt = block_sum(tt, red);
    pt = block_sum(pt, red);
    l1 = block_sum(l1, red);
    float pn = fmaxf(sqrtf(pp), 1e-8f), tn = fmaxf(sqrtf(tt), 1e-8f), c = pt / (pn * tn);
    for (int j = threadIdx.x; j < dim; j += blockDim.x) {
        float a = p[o + j], b = t[o + j], e = a - b;
        float g = -wc * (b / (pn * tn) - c * a / (pn * pn));
        g += fabsf(e) < 1.0f ? wl * e : wl * (e > 0.0f ? 1.0f : e < 0.0f ? -1.0f : 0.0f);
        dp[o + j] = g;
    }
    if (threadIdx.x == 0) { parts[2 * blockIdx.x] = 1.0f - c; parts[2 * blockIdx.x + 1] = l1; }
}

// One block per row: u = x / max(|x|, 1e-12), norms[r] = max(|x|, 1e-12).
extern "C" __global__ void normalize_rows(float *u, float *norms, const float *x, int dim) {
    __shared__ float red[32];
    long long o = (long long)blockIdx.x * dim;
    float s = 0.0f;
    for (int j = threadIdx.x; j < dim; j += blockDim.x) s += x[o + j] * x[o + j];
    float nrm = fmaxf(sqrtf(block_sum(s, red)), 1e-12f);
    for (int j = threadIdx.x; j < dim; j += blockDim.x) u[o + j] = x[o + j] / nrm;
    if (threadIdx.x == 0) norms[blockIdx.x] = nrm;
}

// gs (=) coef * (gs - gt); partial[block] = sum (gs - gt)^2 of this block's elements.
extern "C" __global__ void gram_difference(float *gs, const float *gt, long long n, float coef,
                                           float *partial) {
    __shared__ float red[32];
    float s = 0.0f;
    GRID_STRIDE(i, n) {
        float d = gs[i] - gt[i];
        s += d * d;
        gs[i] = coef * d;
    }
    s = block_sum(s, red);
    if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

// One block per row, through the normalisation: dp += (du - u (u . du)) / norm.
extern "C" __global__ void normalize_rows_backward(float *dp, const float *u, const float *du,
                                                   const float *norms, int dim) {
    __shared__ float red[32];
    long long o = (long long)blockIdx.x * dim;
    float s = 0.0f;
    for (int j = threadIdx.x; j < dim; j += blockDim.x) s += u[o + j] * du[o + j];
    s = block_sum(s, red);
    float inv = 1.0f / norms[blockIdx.x];
    for (int j = threadIdx.x; j < dim; j += blockDim.x) dp[o + j] += (du[o + j] - u[o + j] * s) * inv;
}

// ---- optimizer
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
