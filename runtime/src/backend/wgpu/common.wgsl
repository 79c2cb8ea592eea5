// Shared by the dinoedge WGSL kernels (prepended to each source). No op lives here.

// Flattens a 2-D dispatch (x up to 32768 wide) back to a linear index.
fn linear_id(wg: vec3<u32>, size: u32) -> u32 {
    return (wg.y * 32768u + wg.x) * size;
}
