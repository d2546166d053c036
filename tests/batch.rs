//! Batch gather from the packed byte dataset through a permutation, against the reference, plain
//! and binarized.

mod common;

use common::{Lcg, all_gpus, assert_close};
use vae_wgpu::cpu::batch as cpu;
use vae_wgpu::gpu::Gpu;
use vae_wgpu::kernels::batch::{BatchKernel, upload_pixels};

/// (items, dim, rows): dim 13 and 785 put items at every byte alignment within a packed word;
/// dims that are multiples of 4 take the word-per-invocation kernel, with rows of 1, 65 (one
/// word into a second workgroup) and 196 words (784 pixels).
const SHAPES: [(usize, usize, u32); 6] = [
    (7, 13, 3),
    (101, 785, 17),
    (5, 1, 5),
    (9, 784, 5),
    (6, 260, 4),
    (3, 4, 3),
];

fn random_pixels(rng: &mut Lcg, n: usize) -> Vec<u8> {
    (0..n).map(|_| (rng.next_f64() * 256.0) as u8).collect()
}

fn permutation(items: usize) -> Vec<u32> {
    let mut perm: Vec<u32> = (0..items as u32).rev().collect();
    perm.rotate_left(items / 3);
    perm
}

/// Gathers `rows` rows starting at each of `firsts` and returns (first, result) pairs.
#[allow(clippy::too_many_arguments)]
fn run_gather(
    gpu: &Gpu,
    k: &BatchKernel,
    pixels: &[u8],
    dim: usize,
    perm: &[u32],
    rows: u32,
    firsts: &[usize],
    draw: u32,
) -> Vec<(usize, Vec<f32>)> {
    let pv = upload_pixels(gpu, "pixels", pixels).unwrap();
    let permv = gpu.upload("perm", perm).unwrap();
    let out = gpu.zeros("x", rows as u64 * dim as u64).unwrap();
    let g = k.bind(gpu, rows, dim as u32, &pv, &permv, &out).unwrap();
    firsts
        .iter()
        .map(|&first| {
            g.set(gpu, first as u32, draw);
            gpu.run(&[&g.dispatch]).unwrap();
            (first, gpu.read(&out).unwrap())
        })
        .collect()
}

#[test]
fn gather_matches_reference_on_odd_shapes() {
    let mut rng = Lcg(9);
    for gpu in all_gpus() {
        let k = BatchKernel::new(&gpu, None).unwrap();
        for (items, dim, rows) in SHAPES {
            let pixels = random_pixels(&mut rng, items * dim);
            let perm = permutation(items);
            let firsts = [0, items - rows as usize];
            for (first, got) in run_gather(&gpu, &k, &pixels, dim, &perm, rows, &firsts, 0) {
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

/// The binarized gather is exact integer arithmetic on Philox words, so it must equal the CPU
/// draw bit for bit; pixels 0 and 255 are always 0 and 1.
#[test]
fn binarized_gather_equals_reference_draw_for_draw() {
    let mut rng = Lcg(11);
    let seed = 0x1234_5678_9abc_def0;
    for gpu in all_gpus() {
        let k = BatchKernel::new(&gpu, Some(seed)).unwrap();
        for (items, dim, rows) in SHAPES {
            let mut pixels = random_pixels(&mut rng, items * dim);
            pixels[0] = 0;
            pixels[items * dim - 1] = 255;
            let perm = permutation(items);
            for draw in [0u32, 1, 7] {
                let firsts = [0, items - rows as usize];
                for (first, got) in run_gather(&gpu, &k, &pixels, dim, &perm, rows, &firsts, draw) {
                    let want = cpu::gather_binarized(
                        &pixels,
                        dim,
                        &perm,
                        first,
                        rows as usize,
                        seed,
                        draw,
                    );
                    let want: Vec<f32> = want.iter().map(|&v| v as f32).collect();
                    assert_eq!(
                        got,
                        want,
                        "binarized {items}x{dim} draw {draw} first {first} on {}",
                        gpu.describe()
                    );
                }
            }
        }
    }
}

/// Over many items, the fraction of ones for a byte b is b/255 (binomial bounds), and two draws
/// of the same pixels differ.
#[test]
fn binarized_pixels_have_the_pixel_as_mean() {
    let (items, dim) = (4000usize, 8usize);
    let levels = [0u8, 1, 30, 128, 200, 254, 255, 77];
    let pixels: Vec<u8> = (0..items).flat_map(|_| levels).collect();
    let perm: Vec<u32> = (0..items as u32).collect();
    let gpu = &all_gpus()[0];
    let k = BatchKernel::new(gpu, Some(5)).unwrap();
    let draws: Vec<Vec<f32>> = [3u32, 4]
        .iter()
        .map(|&d| {
            run_gather(gpu, &k, &pixels, dim, &perm, items as u32, &[0], d)
                .remove(0)
                .1
        })
        .collect();
    for (c, &b) in levels.iter().enumerate() {
        let p = b as f64 / 255.0;
        let ones = (0..items).filter(|i| draws[0][i * dim + c] == 1.0).count() as f64;
        // Five standard deviations of a binomial(items, p) count.
        let bound = 5.0 * (items as f64 * p * (1.0 - p)).sqrt();
        assert!(
            (ones - items as f64 * p).abs() <= bound,
            "byte {b}: {ones} ones of {items}, expected {} ± {bound}",
            items as f64 * p
        );
    }
    let differ = draws[0]
        .iter()
        .zip(&draws[1])
        .filter(|(a, b)| a != b)
        .count();
    assert!(
        differ > items,
        "draws 3 and 4 differ in only {differ} pixels"
    );
    assert!(draws[0].iter().all(|&v| v == 0.0 || v == 1.0));
}

/// Float datasets stay f32 on the device: the gather returns every value bit for bit (through
/// `DeviceData::upload`, as training does), and binarizes draw for draw like the reference.
#[test]
fn float_pixels_are_gathered_exactly_and_binarized_like_the_reference() {
    use vae_wgpu::data::{Dataset, Pixels};
    use vae_wgpu::kernels::batch::PixelFormat;
    use vae_wgpu::train::DeviceData;
    let (items, dim, rows) = (9usize, 11usize, 4u32);
    let mut rng = Lcg(77);
    let mut values: Vec<f32> = (0..items * dim).map(|_| rng.next_f64() as f32).collect();
    // Edge values: 0, 1, the smallest steps away from them, and one that bytes cannot hold.
    values[..6].copy_from_slice(&[0.0, 1.0, 1e-7, 1.0 - 6e-8, 0.123_456_79, 0.5]);
    let set = Dataset {
        pixels: Pixels::F32(values.clone()),
        labels: None,
        len: items,
        item_shape: vec![dim],
    };
    let perm = permutation(items);
    for gpu in all_gpus() {
        let data = DeviceData::upload(&gpu, "float pixels", &set).unwrap();
        assert_eq!(data.format, PixelFormat::Floats);
        let permv = gpu.upload("perm", &perm).unwrap();
        let out = gpu.zeros("x", rows as u64 * dim as u64).unwrap();
        for seed in [None, Some(11u64)] {
            let k = BatchKernel::with_format(&gpu, seed, PixelFormat::Floats).unwrap();
            let g = k
                .bind(&gpu, rows, dim as u32, &data.pixels, &permv, &out)
                .unwrap();
            for first in [0usize, 5] {
                g.set(&gpu, first as u32, 3);
                gpu.run(&[&g.dispatch]).unwrap();
                let got: Vec<f32> = gpu.read(&out).unwrap();
                for (i, &v) in got.iter().enumerate() {
                    let (r, c) = (i / dim, i % dim);
                    let item = perm[first + r];
                    let p = values[item as usize * dim + c];
                    let want = match seed {
                        None => p as f64,
                        Some(s) => cpu::binarize_float_pixel(p, item, c as u32, s, 3),
                    };
                    assert_eq!(
                        v as f64,
                        want,
                        "{seed:?} row {r} col {c} on {}",
                        gpu.describe()
                    );
                }
            }
        }
    }
}
