// column_sum: sums over the rows of a matrix, in fixed row chunks added in chunk order (no
// atomics), so gradients are reproducible run to run. The backward passes use it for bias,
// LayerNorm and LayerScale gradients.

// partial[c * cols + j] (=) sum over the rows of chunk c of: mode 0 a[r, j]; mode 1
// a[r, j] * b[r, j]; mode 2 a[r, j] * (b[r, j] - mean[r]) * rstd[r].
// Grid (ceil(cols / 256), chunks).
extern "C" __global__ void column_sum_forward(float *partial, const float *a, const float *b, const float *mean,
                                              const float *rstd, int ld, int rows, int cols, int chunk,
                                              int mode) {
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

// acc[j] += the chunks' partials, in chunk order.
extern "C" __global__ void column_sum_forward_reduce(float *acc, const float *partial, int chunks, int cols) {
    GRID_STRIDE(j, cols) {
        float s = 0.0f;
        for (int c = 0; c < chunks; c++) s += partial[(long long)c * cols + j];
        acc[j] += s;
    }
}
