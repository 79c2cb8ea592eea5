// attention: out (B, N, D) (=) softmax(q k^T / sqrt(hd)) v per head, from qkv (B, N, 3D).
// Two forward forms and the backward:
// - `attention_forward`: CUDA cores, head dims up to 128 (the launcher's bound: the tiles'
//   shared memory), for f32 sessions and for training, where it also saves each query's
//   log-sum-exp;
// - `attention_forward_mma_{f16,bf16}_hd*`: tensor cores (inference, 16-bit sessions, sm_80+);
// - `attention_backward_{delta,dq,dkv}`: flash-style backward from the saved log-sum-exp.
// No form builds the N x N matrix.

// attention_forward, flash-style: a block of ATT_WARPS warps takes ATT_WARPS queries of one
// (batch, head); key/value tiles of 32 tokens are staged in shared memory; each lane scores one
// key of the tile, the warp keeps an online softmax (running max and sum) and accumulates the
// output, each lane owning head_dim / 32 output values. With `lse` (training), it also saves
// lse[(b*H + h)*N + i] = max + ln(sum), the log of query i's softmax normaliser.
#define ATT_WARPS 4
#define ATT_TILE 32
#define ATT_MAX_HD 256

extern "C" __global__ void attention_forward(float *out, float *lse, const float *qkv, int tokens, int dim,
                                             int heads, float scale) {
    DYNAMIC_SHARED(float, smem);
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
        if (lse && lane == 0) lse[(long long)bh * tokens + qi] = m + logf(l);
    }
}

// ---- attention_mma: the tensor-core form for f16 / bf16 sessions on sm_80+ (mma.sync
// m16n8k16, f32 accumulation). A block of MMA_WARPS warps takes 16 queries per warp of one
// (batch, head); key tiles of MMA_KT tokens are staged in shared memory as 16-bit (K
// row-major, V transposed); S = Q K^T and O += P V run on tensor cores and the online softmax
// works on the S fragments in registers. Fragment layout (PTX ISA, mma.m16n8k16): lane
// (g = lane / 4, t = lane % 4) holds rows g and g + 8, columns 2t and 2t + 1 of each 8-wide
// block of C; A registers are (g, 2t) (g + 8, 2t) (g, 2t + 8) (g + 8, 2t + 8); B registers
// are (k = 2t, n = g) and (k = 2t + 8, n = g), two consecutive k per register.
#define MMA_WARPS 4
#define MMA_KT 64
#define MMA_PAD 8

#if __CUDA_ARCH__ >= 800
// KIND 0: f16, 1: bf16. Two floats to one register, `lo` in the low half.
template <int KIND> __device__ __forceinline__ unsigned pack2(float lo, float hi);
// f16 saturates instead of overflowing to inf (inf - inf in the softmax would be NaN).
__device__ __forceinline__ float f16_range(float x) { return fminf(fmaxf(x, -65504.0f), 65504.0f); }
#ifdef DINOEDGE_EMU
// The emulator's forms of the instructions below (emu.h), on the same fragments.
template <> __device__ __forceinline__ unsigned pack2<0>(float lo, float hi) {
    return emu_pack2(f16_range(lo), f16_range(hi), 0);
}
template <> __device__ __forceinline__ unsigned pack2<1>(float lo, float hi) { return emu_pack2(lo, hi, 1); }
template <int KIND> __device__ __forceinline__ unsigned short to16(float x) {
    return emu_to16(KIND == 0 ? f16_range(x) : x, KIND);
}
template <int KIND> __device__ __forceinline__ void mma16816(float *c, const unsigned *a, unsigned b0, unsigned b1) {
    emu_mma16816(c, a, b0, b1, KIND);
}
#else
template <> __device__ __forceinline__ unsigned pack2<0>(float lo, float hi) {
    lo = f16_range(lo);
    hi = f16_range(hi);
    unsigned r;
    asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}
template <> __device__ __forceinline__ unsigned pack2<1>(float lo, float hi) {
    unsigned r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}

template <int KIND> __device__ __forceinline__ unsigned short to16(float x);
template <> __device__ __forceinline__ unsigned short to16<0>(float x) {
    x = f16_range(x);
    unsigned short r;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(r) : "f"(x));
    return r;
}
template <> __device__ __forceinline__ unsigned short to16<1>(float x) {
    unsigned short r;
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(r) : "f"(x));
    return r;
}

// c (16 x 8, f32) += a (16 x 16) . b (16 x 8)
template <int KIND> __device__ __forceinline__ void mma16816(float *c, const unsigned *a, unsigned b0, unsigned b1);
template <> __device__ __forceinline__ void mma16816<0>(float *c, const unsigned *a, unsigned b0, unsigned b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
template <> __device__ __forceinline__ void mma16816<1>(float *c, const unsigned *a, unsigned b0, unsigned b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
#endif

__device__ __forceinline__ unsigned ld32(const unsigned short *p) { return *(const unsigned *)p; }

// `scale_log2` = head_dim^-1/2 * log2(e): the softmax runs in base 2.
template <int HD, int KIND>
__device__ __forceinline__ void attention_mma(float *out, const float *qkv, int tokens, int dim, int heads,
                                              float scale_log2) {
    constexpr int KS = HD / 16;            // k-steps over the head dim
    constexpr int NB = HD / 8;             // 8-wide output column blocks
    constexpr int SB = MMA_KT / 8;         // 8-key score blocks per tile
    constexpr int LDK = HD + MMA_PAD;      // 16-bit elements per K row
    constexpr int LDV = MMA_KT + MMA_PAD;  // 16-bit elements per V^T row
    DYNAMIC_SHARED(unsigned char, att_smem);
    unsigned short *ks = (unsigned short *)att_smem;  // MMA_KT x LDK
    unsigned short *vt = ks + MMA_KT * LDK;           // HD x LDV
    int bh = blockIdx.y, b = bh / heads, h = bh % heads;
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    int r0 = (blockIdx.x * MMA_WARPS + warp) * 16 + g, r1 = r0 + 8;
    long long row3 = 3LL * dim, base = (long long)b * tokens * row3 + h * HD;

    // Q as A fragments, scaled.
    unsigned qf[KS][4];
    for (int kk = 0; kk < KS; kk++) {
        for (int half = 0; half < 2; half++) {
            int c = kk * 16 + 2 * t + 8 * half;
            float a0 = 0.0f, a1 = 0.0f, b0 = 0.0f, b1 = 0.0f;
            if (r0 < tokens) {
                const float *q = qkv + base + r0 * row3 + c;
                a0 = q[0] * scale_log2;
                a1 = q[1] * scale_log2;
            }
            if (r1 < tokens) {
                const float *q = qkv + base + r1 * row3 + c;
                b0 = q[0] * scale_log2;
                b1 = q[1] * scale_log2;
            }
            qf[kk][2 * half] = pack2<KIND>(a0, a1);
            qf[kk][2 * half + 1] = pack2<KIND>(b0, b1);
        }
    }

    float o[NB][4];
    for (int nb = 0; nb < NB; nb++) o[nb][0] = o[nb][1] = o[nb][2] = o[nb][3] = 0.0f;
    float m0 = NEG_INF, m1 = NEG_INF, l0 = 0.0f, l1 = 0.0f;
    for (int t0 = 0; t0 < tokens; t0 += MMA_KT) {
        int n = min(MMA_KT, tokens - t0);
        __syncthreads();
        for (int e = threadIdx.x; e < MMA_KT * HD / 2; e += blockDim.x) {
            int key = e / (HD / 2), d = (e % (HD / 2)) * 2;
            float k0 = 0.0f, k1 = 0.0f, v0 = 0.0f, v1 = 0.0f;
            if (key < n) {
                const float *r = qkv + base + (t0 + key) * row3 + d;
                k0 = r[dim];
                k1 = r[dim + 1];
                v0 = r[2 * dim];
                v1 = r[2 * dim + 1];
            }
            *(unsigned *)&ks[key * LDK + d] = pack2<KIND>(k0, k1);
            vt[d * LDV + key] = to16<KIND>(v0);
            vt[(d + 1) * LDV + key] = to16<KIND>(v1);
        }
        __syncthreads();

        // S = Q K^T: B(k = head dim, n = key) = K[key][dim], two consecutive dims per register.
        float s[SB][4];
        for (int sb = 0; sb < SB; sb++) {
            s[sb][0] = s[sb][1] = s[sb][2] = s[sb][3] = 0.0f;
            const unsigned short *kr = ks + (sb * 8 + g) * LDK + 2 * t;
            for (int kk = 0; kk < KS; kk++) mma16816<KIND>(s[sb], qf[kk], ld32(kr + kk * 16), ld32(kr + kk * 16 + 8));
            for (int i = 0; i < 4; i++)
                if (sb * 8 + 2 * t + (i & 1) >= n) s[sb][i] = NEG_INF;
        }

        // Online softmax; a row's four lanes (same g) combine their maxima.
        float x0 = m0, x1 = m1;
        for (int sb = 0; sb < SB; sb++) {
            x0 = fmaxf(x0, fmaxf(s[sb][0], s[sb][1]));
            x1 = fmaxf(x1, fmaxf(s[sb][2], s[sb][3]));
        }
        for (int off = 1; off < 4; off <<= 1) {
            x0 = fmaxf(x0, __shfl_xor_sync(0xffffffffu, x0, off));
            x1 = fmaxf(x1, __shfl_xor_sync(0xffffffffu, x1, off));
        }
        float c0 = exp2f(m0 - x0), c1 = exp2f(m1 - x1);
        m0 = x0;
        m1 = x1;
        l0 *= c0;
        l1 *= c1;
        for (int nb = 0; nb < NB; nb++) {
            o[nb][0] *= c0;
            o[nb][1] *= c0;
            o[nb][2] *= c1;
            o[nb][3] *= c1;
        }
        for (int sb = 0; sb < SB; sb++) {
            s[sb][0] = exp2f(s[sb][0] - m0);
            s[sb][1] = exp2f(s[sb][1] - m0);
            s[sb][2] = exp2f(s[sb][2] - m1);
            s[sb][3] = exp2f(s[sb][3] - m1);
            l0 += s[sb][0] + s[sb][1];
            l1 += s[sb][2] + s[sb][3];
        }

        // O += P V: two S blocks (16 keys) are one A fragment; B(k = key, n = dim) = V^T[dim][key].
        for (int j = 0; j < MMA_KT / 16; j++) {
            unsigned pa[4] = {pack2<KIND>(s[2 * j][0], s[2 * j][1]), pack2<KIND>(s[2 * j][2], s[2 * j][3]),
                              pack2<KIND>(s[2 * j + 1][0], s[2 * j + 1][1]),
                              pack2<KIND>(s[2 * j + 1][2], s[2 * j + 1][3])};
            for (int nb = 0; nb < NB; nb++) {
                const unsigned short *vr = vt + (nb * 8 + g) * LDV + j * 16 + 2 * t;
                mma16816<KIND>(o[nb], pa, ld32(vr), ld32(vr + 8));
            }
        }
    }
    for (int off = 1; off < 4; off <<= 1) {
        l0 += __shfl_xor_sync(0xffffffffu, l0, off);
        l1 += __shfl_xor_sync(0xffffffffu, l1, off);
    }
    for (int nb = 0; nb < NB; nb++) {
        int c = h * HD + nb * 8 + 2 * t;
        if (r0 < tokens) {
            float *p = out + ((long long)b * tokens + r0) * dim + c;
            p[0] = o[nb][0] / l0;
            p[1] = o[nb][1] / l0;
        }
        if (r1 < tokens) {
            float *p = out + ((long long)b * tokens + r1) * dim + c;
            p[0] = o[nb][2] / l1;
            p[1] = o[nb][3] / l1;
        }
    }
}
#define ATTENTION_MMA_BODY(HD, KIND) attention_mma<HD, KIND>(out, qkv, tokens, dim, heads, scale_log2)
#else
// Before sm_80 there is no m16n8k16 (the host never launches these there).
#define ATTENTION_MMA_BODY(HD, KIND) __trap()
#endif

#define ATTENTION_MMA(NAME, HD, KIND)                                                                   \
    extern "C" __global__ void __launch_bounds__(MMA_WARPS * 32)                                       \
        NAME(float *out, const float *qkv, int tokens, int dim, int heads, float scale_log2) {         \
        ATTENTION_MMA_BODY(HD, KIND);                                                                  \
    }
ATTENTION_MMA(attention_forward_mma_f16_hd16, 16, 0)
ATTENTION_MMA(attention_forward_mma_f16_hd32, 32, 0)
ATTENTION_MMA(attention_forward_mma_f16_hd64, 64, 0)
ATTENTION_MMA(attention_forward_mma_f16_hd128, 128, 0)
ATTENTION_MMA(attention_forward_mma_bf16_hd16, 16, 1)
ATTENTION_MMA(attention_forward_mma_bf16_hd32, 32, 1)
ATTENTION_MMA(attention_forward_mma_bf16_hd64, 64, 1)
ATTENTION_MMA(attention_forward_mma_bf16_hd128, 128, 1)

// ---- the backward (training): one thread per query (dq) or key (dk, dv), K/V (or Q) tiles of
// ATT_TILE tokens in shared memory, from the forward's saved lse. Block = 64 queries or keys of
// one head; grid (batch * heads, tiles) (grid.y is limited to 65535, so the larger count goes
// on x).
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
