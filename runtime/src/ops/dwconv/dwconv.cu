// dwconv: depthwise 7x7 convolution, zero padding 3, on a channels-last map; weight (49, C)
// tap-major. One thread per output value; taps summed ky-major then kx, as every form.
extern "C" __global__ void dwconv_forward(float *out, const float *inp, const float *weight, const float *bias,
                                          int batch, int height, int width, int channels) {
    GRID_STRIDE(i, (long long)batch * height * width * channels) {
        int c = (int)(i % channels);
        long long p = i / channels;
        int x = (int)(p % width), y = (int)((p / width) % height), b = (int)(p / ((long long)width * height));
        float acc = bias[c];
        for (int ky = 0; ky < 7; ky++) {
            int iy = y + ky - 3;
            if (iy < 0 || iy >= height) continue;
            for (int kx = 0; kx < 7; kx++) {
                int ix = x + kx - 3;
                if (ix < 0 || ix >= width) continue;
                acc += weight[(ky * 7 + kx) * channels + c] *
                       inp[(((long long)b * height + iy) * width + ix) * channels + c];
            }
        }
        out[i] = acc;
    }
}

// Backward, din (=): the transposed convolution of dout (the taps flipped, no bias).
extern "C" __global__ void dwconv_backward_input(float *din, const float *dout, const float *weight, int batch,
                                                 int height, int width, int channels) {
    GRID_STRIDE(i, (long long)batch * height * width * channels) {
        int c = (int)(i % channels);
        long long p = i / channels;
        int x = (int)(p % width), y = (int)((p / width) % height), b = (int)(p / ((long long)width * height));
        float acc = 0.0f;
        for (int ky = 0; ky < 7; ky++) {
            int oy = y - ky + 3;
            if (oy < 0 || oy >= height) continue;
            for (int kx = 0; kx < 7; kx++) {
                int ox = x - kx + 3;
                if (ox < 0 || ox >= width) continue;
                acc += weight[(ky * 7 + kx) * channels + c] *
                       dout[(((long long)b * height + oy) * width + ox) * channels + c];
            }
        }
        din[i] = acc;
    }
}

// Backward, dweight (49, C) and dbias (C) (+=): a block per (tap, 32 channels), tap 49 the
// bias. Its DWCONV_ROWS rows of 32 threads each sum every DWCONV_ROWS-th pixel (coalesced over
// the channels), then row 0 adds the rows in order: the same bits at any grid size.
#define DWCONV_ROWS 8
extern "C" __global__ void dwconv_backward_weight(float *dweight, float *dbias, const float *dout,
                                                  const float *inp, int batch, int height, int width,
                                                  int channels) {
    __shared__ float part[DWCONV_ROWS][32];
    int t = blockIdx.x, lane = threadIdx.x % 32, row = threadIdx.x / 32;
    int c = blockIdx.y * 32 + lane, dy = t / 7 - 3, dx = t % 7 - 3;
    long long pixels = (long long)batch * height * width;
    float acc = 0.0f;
    // (x, y) of pixel p, advanced by DWCONV_ROWS pixels a step without a division.
    int x = row % width, y = (row / width) % height;
    for (long long p = row; c < channels && p < pixels; p += DWCONV_ROWS) {
        float g = dout[p * channels + c];
        int iy = y + dy, ix = x + dx;
        if (t == 49) acc += g;
        else if (iy >= 0 && iy < height && ix >= 0 && ix < width)
            acc += g * inp[(p + (long long)dy * width + dx) * channels + c];
        for (x += DWCONV_ROWS; x >= width; x -= width)
            if (++y == height) y = 0;
    }
    part[row][lane] = acc;
    __syncthreads();
    if (row == 0 && c < channels) {
        float s = 0.0f;
        for (int r = 0; r < DWCONV_ROWS; r++) s += part[r][lane];
        if (t == 49) dbias[c] += s;
        else dweight[(long long)t * channels + c] += s;
    }
}
