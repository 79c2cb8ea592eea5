// attention, flash-style: a block of ATT_WARPS warps takes ATT_WARPS queries of one (batch,
// head); key/value tiles of 32 tokens are staged in shared memory; each lane scores one key
// of the tile, the warp keeps an online softmax (running max and sum) and accumulates the
// output, each lane owning head_dim / 32 output values. No N x N matrix exists.
#define ATT_WARPS 4
#define ATT_TILE 32
#define ATT_MAX_HD 256

extern "C" __global__ void attention(float *out, const float *qkv, int tokens, int dim, int heads, float scale) {
    extern __shared__ float smem[];
    int hd = dim / heads;
    float *ks = smem;                        // ATT_TILE x hd
    float *vs = ks + ATT_TILE * hd;          // ATT_TILE x hd
    float *qs = vs + ATT_TILE * hd;          // ATT_WARPS x hd
    int bh = blockIdx.y, b = bh / heads, h = bh % heads;
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int qi = blockIdx.x * ATT_WARPS + warp;
    long long base = (long long)b * tokens * 3 * dim + h * hd;
    bool active = qi < tokens;
    float *q = qs + warp * hd;
    for (int d = lane; d < hd; d += 32) q[d] = active ? qkv[base + (long long)qi * 3 * dim + d] * scale : 0.0f;
    const int per_lane = (hd + 31) / 32;
    float acc[ATT_MAX_HD / 32];
    for (int u = 0; u < ATT_MAX_HD / 32; u++) acc[u] = 0.0f;
    float m = NEG_INF, l = 0.0f;
    for (int t0 = 0; t0 < tokens; t0 += ATT_TILE) {
        __syncthreads();
        int n = min(ATT_TILE, tokens - t0);
        for (int e = threadIdx.x; e < ATT_TILE * hd; e += blockDim.x) {
            int t = e / hd, d = e % hd;
            bool in = t < n;
            long long row = base + (long long)(t0 + t) * 3 * dim;
            ks[e] = in ? qkv[row + dim + d] : 0.0f;
            vs[e] = in ? qkv[row + 2 * dim + d] : 0.0f;
        }
        __syncthreads();
        float s = NEG_INF;
        if (lane < n) {
            float dot = 0.0f;
            for (int d = 0; d < hd; d++) dot += q[d] * ks[lane * hd + d];
            s = dot;
        }
        float m_new = fmaxf(m, warp_max(s));
        float p = lane < n ? expf(s - m_new) : 0.0f;
        float corr = expf(m - m_new);
        l = l * corr + warp_sum(p);
        for (int u = 0; u < per_lane; u++) acc[u] *= corr;
        for (int j = 0; j < n; j++) {
            float pj = __shfl_sync(0xffffffffu, p, j);
            for (int u = 0; u < per_lane; u++) {
                int d = lane + 32 * u;
                if (d < hd) acc[u] += pj * vs[j * hd + d];
            }
        }
        m = m_new;
    }
    if (active) {
        float *o = out + ((long long)b * tokens + qi) * dim + h * hd;
        for (int u = 0; u < per_lane; u++) {
            int d = lane + 32 * u;
            if (d < hd) o[d] = acc[u] / l;
        }
    }
}
