// token_pool: out (B, 1 + N, C) = [mean of the N cells, the cells]; the mean sums the cells
// in order in f32, as every form.

struct Params { batch: u32, cells: u32, channels: u32, _p0: u32 }

@group(0) @binding(0) var<storage, read> inp: array<f32>;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<uniform> p: Params;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = linear_id(wg, 64u) + lid;
    if (i >= p.batch * (1u + p.cells) * p.channels) { return; }
    let c = i % p.channels;
    let r = i / p.channels;
    let t = r % (1u + p.cells);
    let base = (r / (1u + p.cells)) * p.cells * p.channels;
    if (t == 0u) {
        var s = 0.0;
        for (var n = 0u; n < p.cells; n++) { s += inp[base + n * p.channels + c]; }
        out[i] = s * (1.0 / f32(p.cells));
    } else {
        out[i] = inp[base + (t - 1u) * p.channels + c];
    }
}
