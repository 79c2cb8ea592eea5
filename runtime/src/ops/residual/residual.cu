// residual: x += gamma * y per column (LayerScale), or x += y (no gamma). Inference fuses the
// LayerScale residual into the matmul epilogue; training runs it on its own.
extern "C" __global__ void residual_forward(float *x, const float *y, const float *gamma, long long n, int dim) {
    GRID_STRIDE(i, n) x[i] += (gamma ? gamma[i % dim] : 1.0f) * y[i];
}

// dy (=) dx * gamma (dgamma comes from column sums of dx * y).
extern "C" __global__ void residual_backward(float *dy, const float *dx, const float *gamma, long long n,
                                             int dim) {
    GRID_STRIDE(i, n) dy[i] = dx[i] * gamma[i % dim];
}
