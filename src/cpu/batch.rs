//! Batch assembly: rows of a byte dataset picked through a permutation, scaled to [0, 1] or
//! binarized by Bernoulli draws (`shaders/batch.wgsl`).

use super::philox::philox4x32_10;

pub fn gather(pixels: &[u8], dim: usize, perm: &[u32], first: usize, rows: usize) -> Vec<f64> {
    (0..rows)
        .flat_map(|r| {
            let item = perm[first + r] as usize;
            pixels[item * dim..(item + 1) * dim]
                .iter()
                .map(|&b| b as f64 / 255.0)
        })
        .collect()
}

/// A Bernoulli(byte / 255) draw for pixel `col` of `item`: the Philox word of counter
/// (col / 4, item, draw, 1) under `seed`, compared exactly as the shader does.
pub fn binarize_pixel(byte: u8, item: u32, col: u32, seed: u64, draw: u32) -> f64 {
    let words = philox4x32_10([col / 4, item, draw, 1], [seed as u32, (seed >> 32) as u32]);
    let k = (words[(col & 3) as usize] >> 9) as u64;
    // u = (2k + 1)·2⁻²⁴ < byte/255  ⇔  (2k + 1)·255 < byte·2²⁴.
    if (2 * k + 1) * 255 < (byte as u64) << 24 {
        1.0
    } else {
        0.0
    }
}

/// [`gather`] with every pixel binarized by [`binarize_pixel`].
pub fn gather_binarized(
    pixels: &[u8],
    dim: usize,
    perm: &[u32],
    first: usize,
    rows: usize,
    seed: u64,
    draw: u32,
) -> Vec<f64> {
    (0..rows)
        .flat_map(|r| {
            let item = perm[first + r];
            let row = &pixels[item as usize * dim..(item as usize + 1) * dim];
            row.iter()
                .enumerate()
                .map(move |(c, &b)| binarize_pixel(b, item, c as u32, seed, draw))
        })
        .collect()
}

/// A Bernoulli(p) draw for a float pixel, from the same Philox word as [`binarize_pixel`]:
/// u = (2k + 1)·2⁻²⁴ < p, compared exactly as the shader does (both sides exact in f32).
pub fn binarize_float_pixel(p: f32, item: u32, col: u32, seed: u64, draw: u32) -> f64 {
    let words = philox4x32_10([col / 4, item, draw, 1], [seed as u32, (seed >> 32) as u32]);
    let k = (words[(col & 3) as usize] >> 9) as f64;
    if 2.0 * k + 1.0 < p as f64 * 16_777_216.0 {
        1.0
    } else {
        0.0
    }
}
