// layer_norm: one block per row, two-pass mean / variance (biased), as nn.LayerNorm.
extern "C" __global__ void layer_norm(float *out, const float *inp, const float *weight, const float *bias,
                                      int cols, float eps) {
    __shared__ float red[32];
    const float *x = inp + (long long)blockIdx.x * cols;
    float *y = out + (long long)blockIdx.x * cols;
    float s = 0.0f;
    for (int i = threadIdx.x; i < cols; i += blockDim.x) s += x[i];
    float mean = block_sum(s, red) / cols;
    float v = 0.0f;
    for (int i = threadIdx.x; i < cols; i += blockDim.x) {
        float d = x[i] - mean;
        v += d * d;
    }
    float rstd = rsqrtf(block_sum(v, red) / cols + eps);
    for (int i = threadIdx.x; i < cols; i += blockDim.x) y[i] = (x[i] - mean) * rstd * weight[i] + bias[i];
}
