// swiglu: out (R, I) = act(gate_up[:, :I]) * gate_up[:, I:].

struct Params { rows: u32, hidden: u32, act: u32, _p: u32 }

@group(0) @binding(0) var<storage, read> gate_up: array<f32>;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<uniform> p: Params;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = linear_id(wg, 64u) + lid;
    if (i >= p.rows * p.hidden) { return; }
    let r = i / p.hidden;
    let c = i % p.hidden;
    let g = gate_up[r * 2u * p.hidden + c];
    let u = gate_up[r * 2u * p.hidden + p.hidden + c];
    out[i] = activate(g, p.act) * u;
}
