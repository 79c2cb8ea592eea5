// token_pool: out (B, 1 + N, C) (=) [mean of the N cells, the cells]; the mean sums the cells
// in order in f32, as every form.
extern "C" __global__ void token_pool_forward(float *out, const float *inp, int batch, int cells, int channels) {
    GRID_STRIDE(i, (long long)batch * (1 + cells) * channels) {
        int c = (int)(i % channels);
        long long r = i / channels;
        int t = (int)(r % (1 + cells)), b = (int)(r / (1 + cells));
        const float *x = inp + (long long)b * cells * channels;
        if (t == 0) {
            float s = 0.0f;
            for (int n = 0; n < cells; n++) s += x[(long long)n * channels + c];
            out[i] = s * (1.0f / (float)cells);
        } else {
            out[i] = x[(long long)(t - 1) * channels + c];
        }
    }
}

// Backward: dinp (B, N, C) (=) each cell's gradient plus the pooled token's over N.
extern "C" __global__ void token_pool_backward(float *dinp, const float *dout, int batch, int cells, int channels) {
    GRID_STRIDE(i, (long long)batch * cells * channels) {
        int c = (int)(i % channels);
        long long r = i / channels;
        int n = (int)(r % cells), b = (int)(r / cells);
        const float *g = dout + (long long)b * (1 + cells) * channels;
        dinp[i] = g[(long long)(1 + n) * channels + c] + g[c] * (1.0f / (float)cells);
    }
}
