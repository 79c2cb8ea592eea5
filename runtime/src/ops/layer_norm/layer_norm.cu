// layer_norm: one warp per row, two passes (mean, then centred variance), as nn.LayerNorm;
// the training forward also saves mean and rstd per row (null pointers at inference).
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
    if (lane == 0 && mean) {
        mean[row] = m;
        rstd[row] = r;
    }
}

// dinp (=) rstd * (dnorm - mean(dnorm) - xhat * mean(dnorm * xhat)), dnorm = dout * w.
// (dweight, dbias come from column sums of dout * xhat and dout.)
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
