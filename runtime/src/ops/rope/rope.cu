// rope: rotates q and k of patch tokens in place; one thread per (row, part, head, j < hd/2).
extern "C" __global__ void rope(float *qkv, const float *cos_t, const float *sin_t, int rows, int tokens,
                                int prefix, int dim, int head_dim) {
    int half = head_dim / 2, heads = dim / head_dim;
    long long n = (long long)rows * 2 * heads * half;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        int j = (int)(i % half);
        long long r = i / half;
        int h = (int)(r % heads);
        r /= heads;
        int part = (int)(r % 2);
        long long row = r / 2;
        int t = (int)(row % tokens);
        if (t < prefix) continue;
        int p = t - prefix;
        float *x = qkv + row * 3 * dim + part * dim + h * head_dim;
        const float *c = cos_t + (long long)p * head_dim, *s = sin_t + (long long)p * head_dim;
        float a = x[j], b = x[j + half];
        x[j] = a * c[j] - b * s[j];
        x[j + half] = b * c[j + half] + a * s[j + half];
    }
}
