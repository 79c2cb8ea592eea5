// dwconv: depthwise 7x7 convolution, zero padding 3, on a channels-last map; weight (49, C)
// tap-major. One invocation per output value; taps summed ky-major then kx, as every form.

struct Params { batch: u32, height: u32, width: u32, channels: u32 }

@group(0) @binding(0) var<storage, read> inp: array<f32>;
@group(0) @binding(1) var<storage, read> weight: array<f32>;
@group(0) @binding(2) var<storage, read> bias: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<uniform> p: Params;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = linear_id(wg, 64u) + lid;
    if (i >= p.batch * p.height * p.width * p.channels) { return; }
    let c = i % p.channels;
    let px = i / p.channels;
    let x = i32(px % p.width);
    let y = i32((px / p.width) % p.height);
    let b = px / (p.width * p.height);
    var acc = bias[c];
    for (var ky = 0; ky < 7; ky++) {
        let iy = y + ky - 3;
        if (iy < 0 || iy >= i32(p.height)) { continue; }
        for (var kx = 0; kx < 7; kx++) {
            let ix = x + kx - 3;
            if (ix < 0 || ix >= i32(p.width)) { continue; }
            let src = ((b * p.height + u32(iy)) * p.width + u32(ix)) * p.channels + c;
            acc += weight[u32(ky * 7 + kx) * p.channels + c] * inp[src];
        }
    }
    out[i] = acc;
}
