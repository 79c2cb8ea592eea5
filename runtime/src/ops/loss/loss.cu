// Kernels of the distillation objective (ops/loss; cpu.rs holds their CPU forms): row
// selection, cosine + smooth-L1 per row, and DINOv3's Gram term. `common.cuh` and the op kernels come
// first (ops::cuda_program()). Per-row sums are block sums in a fixed order; the host adds
// the per-row and per-block parts in f64, so a step is reproducible run to run.

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
