// matmul: out (R, N) = epilogue(a (R, K) · w (K, N) + bias (N)).
// w is the Linear weight transposed at upload (K, N), so both tiles load coalesced.
// 64 x 64 output tile per workgroup, 16 x 16 threads with 4 x 4 outputs each, K in steps of 16.
// epi: 0 store, 1 act(acc + b), 2 out += gamma * (acc + b) (LayerScale + residual).

struct Params { rows: u32, k: u32, n: u32, epi: u32, act: u32, _p0: u32, _p1: u32, _p2: u32 }

@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read> w: array<WTYPE>;
@group(0) @binding(2) var<storage, read> bias: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<storage, read> gamma: array<f32>;
@group(0) @binding(5) var<uniform> p: Params;

var<workgroup> ta: array<f32, 1024>; // 64 rows x 16
var<workgroup> tb: array<f32, 1024>; // 16 x 64 columns

@compute @workgroup_size(16, 16)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let row0 = wg.y * 64u;
    let col0 = wg.x * 64u;
    let t = lid.y * 16u + lid.x;
    var acc: array<array<f32, 4>, 4>;
    for (var k0 = 0u; k0 < p.k; k0 += 16u) {
        for (var i = 0u; i < 4u; i++) {
            let idx = t * 4u + i;
            let r = idx / 16u;
            let c = idx % 16u;
            var v = 0.0;
            if (row0 + r < p.rows && k0 + c < p.k) { v = a[(row0 + r) * p.k + k0 + c]; }
            ta[idx] = v;
            let rb = idx / 64u;
            let cb = idx % 64u;
            var u = 0.0;
            if (k0 + rb < p.k && col0 + cb < p.n) { u = f32(w[(k0 + rb) * p.n + col0 + cb]); }
            tb[idx] = u;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < 16u; kk++) {
            var av: array<f32, 4>;
            var bv: array<f32, 4>;
            for (var i = 0u; i < 4u; i++) {
                av[i] = ta[(lid.y * 4u + i) * 16u + kk];
                bv[i] = tb[kk * 64u + lid.x * 4u + i];
            }
            for (var i = 0u; i < 4u; i++) {
                for (var j = 0u; j < 4u; j++) {
                    acc[i][j] = fma(av[i], bv[j], acc[i][j]);
                }
            }
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < 4u; i++) {
        let r = row0 + lid.y * 4u + i;
        if (r >= p.rows) { continue; }
        for (var j = 0u; j < 4u; j++) {
            let c = col0 + lid.x * 4u + j;
            if (c >= p.n) { continue; }
            let v = acc[i][j] + bias[c];
            let o = r * p.n + c;
            if (p.epi == 2u) {
                out[o] = out[o] + gamma[c] * v;
            } else if (p.epi == 1u) {
                out[o] = activate(v, p.act);
            } else {
                out[o] = v;
            }
        }
    }
}
