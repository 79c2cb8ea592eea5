// matmul epilogues cuBLASLt cannot fuse, and input conversion (the product is cuBLASLt).

// out (R, O) = act(out + bias)   (mode 0)
// out (R, O) += gamma * (acc + bias)   (mode 1: LayerScale + residual)
// A null bias means cuBLASLt added it already (or the layer has none).
extern "C" __global__ void matmul_epilogue(float *out, const float *acc, const float *bias, const float *gamma,
                                           int rows, int cols, int mode, int act) {
    long long n = (long long)rows * cols;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        int c = (int)(i % cols);
        float b = bias ? bias[c] : 0.0f;
        if (mode == 0) {
            out[i] = activate(out[i] + b, act);
        } else {
            out[i] += gamma[c] * (acc[i] + b);
        }
    }
}

// Activations to the GEMM's 16-bit input type: kind 0 f16, 1 bf16.
extern "C" __global__ void to_half(unsigned short *dst, const float *src, long long n, int kind) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        dst[i] = kind == 0 ? f32_to_f16_bits(src[i]) : f32_to_bf16_bits(src[i]);
    }
}
