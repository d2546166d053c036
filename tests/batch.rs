//! Batch gather from the packed byte dataset through a permutation, against the reference.

mod common;

use common::{Lcg, all_gpus, assert_close};
use vae_wgpu::cpu::batch as cpu;
use vae_wgpu::kernels::batch::{BatchKernel, upload_pixels};

#[test]
fn gather_matches_reference_on_odd_shapes() {
    let mut rng = Lcg(9);
    for gpu in all_gpus() {
        let k = BatchKernel::new(&gpu).unwrap();
        // dim 13 and 785 put items at every byte alignment within a packed word.
        for (items, dim, rows) in [(7usize, 13usize, 3u32), (101, 785, 17), (5, 1, 5)] {
            let pixels: Vec<u8> = (0..items * dim)
                .map(|_| (rng.next_f64() * 256.0) as u8)
                .collect();
            let mut perm: Vec<u32> = (0..items as u32).rev().collect();
            perm.rotate_left(items / 3);
            let pv = upload_pixels(&gpu, "pixels", &pixels).unwrap();
            let permv = gpu.upload("perm", &perm).unwrap();
            let out = gpu.zeros("x", rows as u64 * dim as u64).unwrap();
            let g = k.bind(&gpu, rows, dim as u32, &pv, &permv, &out).unwrap();
            for first in [0, items - rows as usize] {
                g.set_first(&gpu, first as u32);
                gpu.run(&[&g.dispatch]).unwrap();
                let got: Vec<f32> = gpu.read(&out).unwrap();
                let want = cpu::gather(&pixels, dim, &perm, first, rows as usize);
                // WGSL allows f32 division an error of 2.5 ulp (2 u each): 5 u of the result.
                let what = format!(
                    "gather {items}x{dim} rows {rows} first {first} on {}",
                    gpu.describe()
                );
                assert_close(&what, &got, &want, |i| 5.0 * want[i] * common::U32);
            }
        }
    }
}
