// layer_norm: out (R, C) = (x - mean) / sqrt(var + eps) * weight + bias, one workgroup per row.

struct Params { rows: u32, cols: u32, eps: f32, _p: u32 }

@group(0) @binding(0) var<storage, read> inp: array<f32>;
@group(0) @binding(1) var<storage, read> weight: array<f32>;
@group(0) @binding(2) var<storage, read> bias: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<uniform> p: Params;

var<workgroup> red: array<f32, 256>;

fn reduce_sum(lid: u32, v: f32) -> f32 {
    red[lid] = v;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s >>= 1u) {
        if (lid < s) { red[lid] += red[lid + s]; }
        workgroupBarrier();
    }
    let total = red[0];
    workgroupBarrier();
    return total;
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = linear_id(wg, 1u);
    if (row >= p.rows) { return; }
    let base = row * p.cols;
    var s = 0.0;
    for (var c = lid; c < p.cols; c += 256u) { s += inp[base + c]; }
    let mean = reduce_sum(lid, s) / f32(p.cols);
    var q = 0.0;
    for (var c = lid; c < p.cols; c += 256u) { let d = inp[base + c] - mean; q += d * d; }
    let rstd = 1.0 / sqrt(reduce_sum(lid, q) / f32(p.cols) + p.eps);
    for (var c = lid; c < p.cols; c += 256u) {
        out[base + c] = (inp[base + c] - mean) * rstd * weight[c] + bias[c];
    }
}
