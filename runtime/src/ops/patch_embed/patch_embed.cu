// patch_embed: im2col of the pixels, the product (matmul), then token assembly.

// cols (B*HW, C*P*P) (=) the patches of src: planar pixels (B, C, H, W) in (c, ky, kx)
// order as the conv weight, or a channels-last map (B, H, W, C) in (ky, kx, c) order.
extern "C" __global__ void patch_embed_forward_im2col(float *cols, const float *src, int batch, int channels,
                                                      int height, int width, int patch, int grid_h, int grid_w,
                                                      int channels_last) {
    int pl = channels * patch * patch, hw = grid_h * grid_w;
    GRID_STRIDE(i, (long long)batch * hw * pl) {
        int e = (int)(i % pl);
        long long row = i / pl;
        int b = (int)(row / hw), pi = (int)(row % hw);
        int gy = pi / grid_w, gx = pi % grid_w;
        if (channels_last) {
            int ky = e / (patch * channels), kx = (e / channels) % patch, c = e % channels;
            cols[i] = src[(((long long)b * height + gy * patch + ky) * width + gx * patch + kx) * channels + c];
        } else {
            int c = e / (patch * patch), ky = (e / patch) % patch, kx = e % patch;
            cols[i] = src[(((long long)b * channels + c) * height + gy * patch + ky) * width + gx * patch + kx];
        }
    }
}

// Backward of the channels-last im2col: dx (B, H, W, C) (=) each patch value's gradient
// put back; pixels past the last full patch get zero.
extern "C" __global__ void patch_embed_backward_im2col_nhwc(float *dx, const float *dcols, int batch, int channels,
                                                            int height, int width, int patch, int grid_h,
                                                            int grid_w) {
    GRID_STRIDE(i, (long long)batch * height * width * channels) {
        int c = (int)(i % channels);
        long long p = i / channels;
        int x = (int)(p % width), y = (int)((p / width) % height), b = (int)(p / ((long long)width * height));
        int gy = y / patch, gx = x / patch;
        float v = 0.0f;
        if (gy < grid_h && gx < grid_w) {
            long long row = ((long long)b * grid_h + gy) * grid_w + gx;
            v = dcols[row * channels * patch * patch + ((y % patch) * patch + x % patch) * channels + c];
        }
        dx[i] = v;
    }
}

// x (B, N, D) (=) [cls (+pos[0]), registers, emb (+pos[1 + p])]; `pos` may be null.
extern "C" __global__ void patch_embed_forward_assemble(float *x, const float *emb, const float *cls,
                                               const float *registers, const float *pos, int batch, int prefix,
                                               int patches, int dim) {
    int tokens = prefix + patches;
    GRID_STRIDE(i, (long long)batch * tokens * dim) {
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

// demb (=) the patch rows of dx; dcls, dregs (+=) summed over images in order.
extern "C" __global__ void patch_embed_backward(float *demb, float *dcls, float *dregs, const float *dx,
                                                int batch, int prefix, int patches, int dim) {
    int n = prefix + patches;
    long long pe = (long long)batch * patches * dim, total = pe + (long long)prefix * dim;
    GRID_STRIDE(i, total) {
        if (i < pe) {
            long long row = i / dim;
            int j = (int)(i % dim), b = (int)(row / patches), p = (int)(row % patches);
            demb[i] = dx[((long long)b * n + prefix + p) * dim + j];
        } else {
            int e = (int)(i - pe), t = e / dim, j = e % dim;
            float s = 0.0f;
            for (int b = 0; b < batch; b++) s += dx[((long long)b * n + t) * dim + j];
            if (t == 0) dcls[j] += s; else dregs[(long long)(t - 1) * dim + j] += s;
        }
    }
}
