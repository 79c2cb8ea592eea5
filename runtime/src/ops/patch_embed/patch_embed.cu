// patch_embed: im2col of the pixels, then (after the cuBLASLt product) token assembly.

// cols (B*HW, C*P*P) <- pixels (B, C, H, W), (c, ky, kx) order as the conv weight.
extern "C" __global__ void im2col(float *cols, const float *pixels, int batch, int channels, int height, int width,
                                  int patch, int grid_h, int grid_w) {
    int pl = channels * patch * patch, hw = grid_h * grid_w;
    long long n = (long long)batch * hw * pl;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        int e = (int)(i % pl);
        long long row = i / pl;
        int b = (int)(row / hw), pi = (int)(row % hw);
        int gy = pi / grid_w, gx = pi % grid_w;
        int c = e / (patch * patch), ky = (e / patch) % patch, kx = e % patch;
        cols[i] = pixels[(((long long)b * channels + c) * height + gy * patch + ky) * width + gx * patch + kx];
    }
}

// x (B, N, D) <- [cls (+pos[0]), registers, emb (+pos[1 + p])]; `pos` may be null.
extern "C" __global__ void assemble(float *x, const float *emb, const float *cls, const float *registers,
                                    const float *pos, int batch, int prefix, int patches, int dim) {
    int tokens = prefix + patches;
    long long n = (long long)batch * tokens * dim;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        int d = (int)(i % dim);
        long long r = i / dim;
        int t = (int)(r % tokens), b = (int)(r / tokens);
        float v;
        if (t == 0) {
            v = cls[d] + (pos ? pos[d] : 0.0f);
        } else if (t < prefix) {
            v = registers[(long long)(t - 1) * dim + d];
        } else {
            int p = t - prefix;
            v = emb[((long long)b * patches + p) * dim + d] + (pos ? pos[(long long)(1 + p) * dim + d] : 0.0f);
        }
        x[i] = v;
    }
}
