// patch_embed, step 1 (im2col): cols (B*HW, C*P*P) <- pixels (B, C, H, W), each patch
// vector in (c, ky, kx) order as the conv weight (D, C, P, P); or, with `channels_last`, a
// map (B, H, W, C) in (ky, kx, c) order (a ConvNeXt's downsampling). Step 2 is the matmul
// kernel, step 3 `assemble.wgsl`.

struct Params {
    batch: u32, channels: u32, height: u32, width: u32,
    psize: u32, grid_h: u32, grid_w: u32, prefix: u32,
    dim: u32, has_pos: u32, channels_last: u32, _p1: u32,
}

@group(0) @binding(0) var<storage, read> src: array<f32>;
@group(0) @binding(1) var<storage, read_write> dst: array<f32>;
@group(0) @binding(2) var<uniform> p: Params;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = linear_id(wg, 64u) + lid;
    let plen = p.channels * p.psize * p.psize;
    let hw = p.grid_h * p.grid_w;
    if (i >= p.batch * hw * plen) { return; }
    let row = i / plen;
    let e = i % plen;
    let b = row / hw;
    let pi = row % hw;
    let gy = pi / p.grid_w;
    let gx = pi % p.grid_w;
    if (p.channels_last != 0u) {
        let ky = e / (p.psize * p.channels);
        let kx = (e / p.channels) % p.psize;
        let c = e % p.channels;
        dst[i] = src[((b * p.height + gy * p.psize + ky) * p.width + gx * p.psize + kx) * p.channels + c];
        return;
    }
    let ch = e / (p.psize * p.psize);
    let ky = (e / p.psize) % p.psize;
    let kx = e % p.psize;
    dst[i] = src[((b * p.channels + ch) * p.height + gy * p.psize + ky) * p.width + gx * p.psize + kx];
}
