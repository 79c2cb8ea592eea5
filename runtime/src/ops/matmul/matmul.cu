// matmul: the product runs on the device's GEMM (cuBLASLt); these kernels do what it cannot.

// Epilogues cuBLASLt cannot fuse: mode 0 out (=) act(out + bias); mode 1 (LayerScale +
// residual) out += gamma * (acc + bias). A null bias: cuBLASLt added it (or there is none).
extern "C" __global__ void matmul_forward_epilogue(float *out, const float *acc, const float *bias,
                                                   const float *gamma, int rows, int cols, int mode, int act) {
    GRID_STRIDE(i, (long long)rows * cols) {
        int c = (int)(i % cols);
        float b = bias ? bias[c] : 0.0f;
        if (mode == 0) {
            out[i] = activate(out[i] + b, act);
        } else {
            out[i] += gamma[c] * (acc[i] + b);
        }
    }
}

// GEMM inputs to 16 bits (kind 0 f16, 1 bf16), round to nearest even: the forward's and the
// backward's products both take their f32 operands through it.
extern "C" __global__ void matmul_forward_convert(unsigned short *dst, const float *src, long long n, int kind) {
    GRID_STRIDE(i, n) dst[i] = kind == 0 ? f32_to_f16_bits(src[i]) : f32_to_bf16_bits(src[i]);
}

// Rows of out (R, O; ldo) (=) bias, before a product that accumulates into them.
extern "C" __global__ void matmul_forward_bias_rows(float *out, int ldo, const float *bias, int rows, int o) {
    GRID_STRIDE(i, (long long)rows * o) out[(i / o) * ldo + i % o] = bias[i % o];
}
