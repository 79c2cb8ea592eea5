// patch_embed, step 3 (assemble): x (B, N, D) <- [cls (+pos[0]), registers, emb (+pos[1 + p])].

struct Params {
    batch: u32, channels: u32, height: u32, width: u32,
    psize: u32, grid_h: u32, grid_w: u32, prefix: u32,
    dim: u32, has_pos: u32, _p0: u32, _p1: u32,
}

@group(0) @binding(0) var<storage, read> src: array<f32>;
@group(0) @binding(1) var<storage, read_write> dst: array<f32>;
@group(0) @binding(2) var<storage, read> cls: array<f32>;
@group(0) @binding(3) var<storage, read> regs: array<f32>;
@group(0) @binding(4) var<storage, read> pos: array<f32>;
@group(0) @binding(5) var<uniform> p: Params;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = linear_id(wg, 64u) + lid;
    let hw = p.grid_h * p.grid_w;
    let n = p.prefix + hw;
    if (i >= p.batch * n * p.dim) { return; }
    let row = i / p.dim;
    let c = i % p.dim;
    let b = row / n;
    let t = row % n;
    var v = 0.0;
    if (t == 0u) {
        v = cls[c];
        if (p.has_pos == 1u) { v += pos[c]; }
    } else if (t < p.prefix) {
        v = regs[(t - 1u) * p.dim + c];
    } else {
        let q = t - p.prefix;
        v = src[(b * hw + q) * p.dim + c];
        if (p.has_pos == 1u) { v += pos[(1u + q) * p.dim + c]; }
    }
    dst[i] = v;
}
