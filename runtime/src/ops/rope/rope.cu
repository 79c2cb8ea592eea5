// rope: rotates q and k of the patch tokens of qkv (B*N, 3D) in place, one thread per rotated
// pair; the backward rotates gradients back (the inverse rotation).
__device__ __forceinline__ void rope_apply(float *qkv, const float *cos_t, const float *sin_t, int batch,
                                           int n, int prefix, int dim, int hd, int inverse) {
    int half = hd / 2, heads = dim / hd, np = n - prefix;
    GRID_STRIDE(i, (long long)batch * np * 2 * heads * half) {
        int j = (int)(i % half);
        long long r = i / half;
        int hh = (int)(r % (2 * heads));  // q heads then k heads
        r /= 2 * heads;
        int p = (int)(r % np), b = (int)(r / np);
        float *x = qkv + ((long long)b * n + prefix + p) * 3 * dim + (long long)hh * hd;
        const float *c = cos_t + (long long)p * hd, *s = sin_t + (long long)p * hd;
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

extern "C" __global__ void rope_forward(float *qkv, const float *cos_t, const float *sin_t, int batch, int n,
                                        int prefix, int dim, int hd) {
    rope_apply(qkv, cos_t, sin_t, batch, n, prefix, dim, hd, 0);
}

extern "C" __global__ void rope_backward(float *dqkv, const float *cos_t, const float *sin_t, int batch, int n,
                                         int prefix, int dim, int hd) {
    rope_apply(dqkv, cos_t, sin_t, batch, n, prefix, dim, hd, 1);
}
