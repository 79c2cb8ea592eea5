// attention: out (B, N, D) = softmax(q kᵀ / sqrt(hd)) v per head, flash-style.
// One thread per query, 64 queries of one (batch, head) per workgroup. Keys and values go
// through workgroup memory in tiles of `tile` keys (K in the first half of `kv`, V in the
// second); each thread keeps a running max, a running sum and its output row in registers,
// so no N x N matrix exists at any size. hd <= 128.

struct Params { batch: u32, tokens: u32, dim: u32, heads: u32, hd: u32, tile: u32, scale: f32, _p: u32 }

@group(0) @binding(0) var<storage, read> qkv: array<f32>;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<uniform> p: Params;

var<workgroup> kv: array<f32, 4096>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let bh = wg.y;
    let b = bh / p.heads;
    let h = bh % p.heads;
    let qi = wg.x * 64u + lid;
    let row3 = 3u * p.dim;
    let live = qi < p.tokens;
    var q: array<f32, 128>;
    var acc: array<f32, 128>;
    if (live) {
        let base = (b * p.tokens + qi) * row3 + h * p.hd;
        for (var d = 0u; d < p.hd; d++) { q[d] = qkv[base + d] * p.scale; }
    }
    var m = -3.0e38;
    var l = 0.0;
    let half_kv = 2048u;
    for (var k0 = 0u; k0 < p.tokens; k0 += p.tile) {
        let nk = min(p.tile, p.tokens - k0);
        for (var idx = lid; idx < nk * p.hd; idx += 64u) {
            let key = k0 + idx / p.hd;
            let d = idx % p.hd;
            let src = (b * p.tokens + key) * row3 + h * p.hd + d;
            kv[idx] = qkv[src + p.dim];
            kv[half_kv + idx] = qkv[src + 2u * p.dim];
        }
        workgroupBarrier();
        if (live) {
            for (var j = 0u; j < nk; j++) {
                var s = 0.0;
                for (var d = 0u; d < p.hd; d++) { s = fma(q[d], kv[j * p.hd + d], s); }
                if (s > m) {
                    let c = exp(m - s);
                    l *= c;
                    for (var d = 0u; d < p.hd; d++) { acc[d] *= c; }
                    m = s;
                }
                let e = exp(s - m);
                l += e;
                for (var d = 0u; d < p.hd; d++) { acc[d] = fma(e, kv[half_kv + j * p.hd + d], acc[d]); }
            }
        }
        workgroupBarrier();
    }
    if (live) {
        let o = (b * p.tokens + qi) * p.dim + h * p.hd;
        let inv = 1.0 / l;
        for (var d = 0u; d < p.hd; d++) { out[o + d] = acc[d] * inv; }
    }
}
