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

// Backward, dweight (49, C) and dbias (C) (+=): one thread per (tap, channel), tap 49 the
// bias, summing the pixels in row order (the same bits at any launch size).
extern "C" __global__ void dwconv_backward_weight(float *dweight, float *dbias, const float *dout,
                                                  const float *inp, int batch, int height, int width,
                                                  int channels) {
    GRID_STRIDE(i, 50LL * channels) {
        int c = (int)(i % channels), t = (int)(i / channels);
        int ky = t / 7, kx = t % 7;
        float acc = 0.0f;
        for (int b = 0; b < batch; b++)
            for (int y = 0; y < height; y++)
                for (int x = 0; x < width; x++) {
                    float g = dout[(((long long)b * height + y) * width + x) * channels + c];
                    if (t == 49) {
                        acc += g;
                        continue;
                    }
                    int iy = y + ky - 3, ix = x + kx - 3;
                    if (iy < 0 || iy >= height || ix < 0 || ix >= width) continue;
                    acc += g * inp[(((long long)b * height + iy) * width + ix) * channels + c];
                }
        if (t == 49) dbias[c] += acc;
        else dweight[i] += acc;
    }
}
