# Emulates attention_mma's per-lane indexing with the PTX m16n8k16 fragment layout, to check
# the kernel's index math (not the hardware). Mirrors attention.cu line by line.
import numpy as np
rng = np.random.default_rng(0)
def frag_mma(c, a, b0, b1):
    # c: [32][4] per lane; a: [32][4] regs each (lo, hi); b: [32] regs (lo, hi)
    A = np.zeros((16, 16)); B = np.zeros((16, 8))
    for lane in range(32):
        g, t = lane >> 2, lane & 3
        for r, (row, col) in enumerate([(g, 2*t), (g+8, 2*t), (g, 2*t+8), (g+8, 2*t+8)]):
            A[row, col], A[row, col+1] = a[lane][r]
        B[2*t, g], B[2*t+1, g] = b0[lane]
        B[2*t+8, g], B[2*t+9, g] = b1[lane]
    D = A @ B
    for lane in range(32):
        g, t = lane >> 2, lane & 3
        c[lane][0] += D[g, 2*t]; c[lane][1] += D[g, 2*t+1]; c[lane][2] += D[g+8, 2*t]; c[lane][3] += D[g+8, 2*t+1]

def run(tokens, hd, KT=64, PAD=8):
    q, k, v = rng.standard_normal((3, tokens, hd))
    scale = hd ** -0.5; sl2 = scale * np.log2(np.e)
    out = np.zeros((tokens, hd))
    KS, NB, SB, LDK, LDV = hd//16, hd//8, KT//8, hd+PAD, KT+PAD
    for q0 in range(0, tokens, 16):  # one warp
        qf = [[[None]*4 for _ in range(KS)] for _ in range(32)]
        for lane in range(32):
            g, t = lane >> 2, lane & 3; r0, r1 = q0+g, q0+g+8
            for kk in range(KS):
                for half in range(2):
                    c = kk*16 + 2*t + 8*half
                    a = (q[r0, c]*sl2, q[r0, c+1]*sl2) if r0 < tokens else (0, 0)
                    b = (q[r1, c]*sl2, q[r1, c+1]*sl2) if r1 < tokens else (0, 0)
                    qf[lane][kk][2*half] = a; qf[lane][kk][2*half+1] = b
        o = np.zeros((32, NB, 4)); m0 = np.full(32, -np.inf); m1 = np.full(32, -np.inf); l0 = np.zeros(32); l1 = np.zeros(32)
        for t0 in range(0, tokens, KT):
            n = min(KT, tokens - t0)
            ks = np.zeros(KT*LDK); vt = np.zeros(hd*LDV)
            for e in range(KT*hd//2):
                key, d = e // (hd//2), (e % (hd//2))*2
                k0=k1=v0=v1=0.0
                if key < n: k0, k1, v0, v1 = k[t0+key, d], k[t0+key, d+1], v[t0+key, d], v[t0+key, d+1]
                ks[key*LDK+d] = k0; ks[key*LDK+d+1] = k1; vt[d*LDV+key] = v0; vt[(d+1)*LDV+key] = v1
            s = np.zeros((32, SB, 4))
            for sb in range(SB):
                for kk in range(KS):
                    b0 = []; b1 = []
                    for lane in range(32):
                        g, t = lane >> 2, lane & 3; base = (sb*8+g)*LDK + 2*t + kk*16
                        b0.append((ks[base], ks[base+1])); b1.append((ks[base+8], ks[base+9]))
                    frag_mma(s[:, sb], [qf[l][kk] for l in range(32)], b0, b1)
                for lane in range(32):
                    t = lane & 3
                    for i in range(4):
                        if sb*8 + 2*t + (i & 1) >= n: s[lane, sb, i] = -np.inf
            x0 = np.maximum(m0, s[:, :, 0:2].max(axis=(1, 2))); x1 = np.maximum(m1, s[:, :, 2:4].max(axis=(1, 2)))
            for off in (1, 2):
                x0 = np.maximum(x0, x0[np.arange(32) ^ off]); x1 = np.maximum(x1, x1[np.arange(32) ^ off])
            c0 = np.exp2(m0 - x0); c1 = np.exp2(m1 - x1); m0, m1 = x0, x1
            l0 *= c0; l1 *= c1; o[:, :, 0:2] *= c0[:, None, None]; o[:, :, 2:4] *= c1[:, None, None]
            s[:, :, 0:2] = np.exp2(s[:, :, 0:2] - m0[:, None, None]); s[:, :, 2:4] = np.exp2(s[:, :, 2:4] - m1[:, None, None])
            l0 += s[:, :, 0:2].sum(axis=(1, 2)); l1 += s[:, :, 2:4].sum(axis=(1, 2))
            for j in range(KT//16):
                pa = [[(s[l, 2*j, 0], s[l, 2*j, 1]), (s[l, 2*j, 2], s[l, 2*j, 3]), (s[l, 2*j+1, 0], s[l, 2*j+1, 1]), (s[l, 2*j+1, 2], s[l, 2*j+1, 3])] for l in range(32)]
                for nb in range(NB):
                    b0 = []; b1 = []
                    for lane in range(32):
                        g, t = lane >> 2, lane & 3; base = (nb*8+g)*LDV + j*16 + 2*t
                        b0.append((vt[base], vt[base+1])); b1.append((vt[base+8], vt[base+9]))
                    frag_mma(o[:, nb], pa, b0, b1)
        for off in (1, 2):
            l0 = l0 + l0[np.arange(32) ^ off]; l1 = l1 + l1[np.arange(32) ^ off]
        for lane in range(32):
            g, t = lane >> 2, lane & 3; r0, r1 = q0+g, q0+g+8
            for nb in range(NB):
                c = nb*8 + 2*t
                if r0 < tokens: out[r0, c:c+2] = o[lane, nb, 0:2] / l0[lane]
                if r1 < tokens: out[r1, c:c+2] = o[lane, nb, 2:4] / l1[lane]
    ref_s = q @ k.T * scale; ref_s -= ref_s.max(1, keepdims=True); p = np.exp(ref_s); p /= p.sum(1, keepdims=True)
    return np.abs(out - p @ v).max()
for tokens, hd in [(5, 16), (37, 16), (70, 32), (201, 64), (130, 128)]:
    print(tokens, hd, run(tokens, hd))
