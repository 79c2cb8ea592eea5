// rope: rotates q and k of the patch tokens of qkv (B, N, 3D) in place.
// One thread per (row, q or k, head, j < hd/2): x[j], x[j + hd/2] <- rotated pair.

struct Params { rows: u32, tokens: u32, prefix: u32, dim: u32, hd: u32, heads: u32, _p0: u32, _p1: u32 }

@group(0) @binding(0) var<storage, read_write> qkv: array<f32>;
@group(0) @binding(1) var<storage, read> cos_t: array<f32>;
@group(0) @binding(2) var<storage, read> sin_t: array<f32>;
@group(0) @binding(3) var<uniform> p: Params;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = linear_id(wg, 64u) + lid;
    let hh = p.hd / 2u;
    let per_row = 2u * p.heads * hh;
    if (i >= p.rows * per_row) { return; }
    let row = i / per_row;
    let tok = row % p.tokens;
    if (tok < p.prefix) { return; }
    let rem = i % per_row;
    let which = rem / (p.heads * hh); // 0 = q, 1 = k
    let head = (rem / hh) % p.heads;
    let j = rem % hh;
    let pt = tok - p.prefix;
    let base = row * 3u * p.dim + which * p.dim + head * p.hd;
    let a = qkv[base + j];
    let b = qkv[base + j + hh];
    let t = pt * p.hd;
    qkv[base + j] = a * cos_t[t + j] - b * sin_t[t + j];
    qkv[base + j + hh] = b * cos_t[t + j + hh] + a * sin_t[t + j + hh];
}
