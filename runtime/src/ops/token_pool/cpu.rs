//! CPU form of `token_pool` (the reference and the fast backend both run it).

use rayon::prelude::*;

/// Image `b`'s rows of out (1 + N, C) <- [mean of inp's N rows, inp's rows].
pub fn token_pool_image(out: &mut [f32], inp: &[f32], channels: usize) {
    let n = inp.len() / channels;
    let (mean, cells) = out.split_at_mut(channels);
    mean.fill(0.0);
    for row in inp.chunks_exact(channels) {
        mean.iter_mut().zip(row).for_each(|(m, v)| *m += v);
    }
    let inv = 1.0 / n as f32;
    mean.iter_mut().for_each(|m| *m *= inv);
    cells.copy_from_slice(inp);
}

/// out (B, 1 + N, C) <- [mean, cells] per image, images in parallel.
pub fn token_pool_forward(
    out: &mut [f32],
    inp: &[f32],
    batch: usize,
    cells: usize,
    channels: usize,
) {
    out[..batch * (1 + cells) * channels]
        .par_chunks_mut((1 + cells) * channels)
        .zip(inp[..batch * cells * channels].par_chunks(cells * channels))
        .for_each(|(o, x)| token_pool_image(o, x, channels));
}

/// Backward for dout (B, 1 + N, C): dinp (B, N, C) (=) each cell's own gradient plus the
/// pooled token's, shared evenly by the N cells.
pub fn token_pool_backward(
    dinp: &mut [f32],
    dout: &[f32],
    batch: usize,
    cells: usize,
    channels: usize,
) {
    let inv = 1.0 / cells as f32;
    dinp[..batch * cells * channels]
        .par_chunks_mut(cells * channels)
        .zip(dout[..batch * (1 + cells) * channels].par_chunks((1 + cells) * channels))
        .for_each(|(di, g)| {
            let (pooled, rows) = g.split_at(channels);
            for (d, r) in di
                .chunks_exact_mut(channels)
                .zip(rows.chunks_exact(channels))
            {
                for ((d, &r), &p) in d.iter_mut().zip(r).zip(pooled) {
                    *d = r + p * inv;
                }
            }
        });
}

#[cfg(test)]
mod tests {
    #[test]
    fn pools_each_image_first() {
        let inp = [
            1.0f32, 10.0, 3.0, 20.0, /* image 2 */ 5.0, 0.0, 7.0, 2.0,
        ];
        let mut out = [f32::NAN; 12];
        super::token_pool_forward(&mut out, &inp, 2, 2, 2);
        assert_eq!(
            out,
            [
                2.0, 15.0, 1.0, 10.0, 3.0, 20.0, 6.0, 1.0, 5.0, 0.0, 7.0, 2.0
            ]
        );
    }
}
