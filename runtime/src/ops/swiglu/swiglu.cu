// swiglu: out (R, I) = act(gate_up[:, :I]) * gate_up[:, I:].
extern "C" __global__ void swiglu(float *out, const float *gate_up, int rows, int hidden, int act) {
    long long n = (long long)rows * hidden;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        long long r = i / hidden;
        int j = (int)(i % hidden);
        const float *gu = gate_up + r * 2 * hidden;
        out[i] = activate(gu[j], act) * gu[hidden + j];
    }
}
