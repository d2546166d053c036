//! Batch assembly: rows of a byte dataset picked through a permutation, scaled to [0, 1].

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
