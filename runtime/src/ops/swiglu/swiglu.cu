// swiglu: out (R, I) (=) act(gate_up[:, :I]) * gate_up[:, I:].
extern "C" __global__ void swiglu_forward(float *out, const float *gate_up, int rows, int hidden, int act) {
    GRID_STRIDE(i, (long long)rows * hidden) {
        long long r = i / hidden;
        int j = (int)(i % hidden);
        const float *gu = gate_up + r * 2 * hidden;
        out[i] = activate(gu[j], act) * gu[hidden + j];
    }
}

// dgate_up (=): d gate = dout * up * act'(gate), d up = dout * act(gate).
extern "C" __global__ void swiglu_backward(float *dh, const float *da, const float *h, int rows,
                                           int hidden, int act) {
    GRID_STRIDE(i, (long long)rows * hidden) {
        long long r = i / hidden, j = i % hidden, g = r * 2 * hidden + j;
        dh[g] = da[i] * h[g + hidden] * activate_derivative(h[g], act);
        dh[g + hidden] = da[i] * activate(h[g], act);
    }
}
