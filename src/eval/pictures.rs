//! What a model generates, as pictures: a codec on the device (encode dataset items to posterior
//! means, decode latents to pixel means) and PNG grids of images.

use std::path::Path;

use crate::gpu::{Dispatch, Gpu, Result, View};
use crate::kernels::batch::{BatchKernel, Gather};
use crate::kernels::elbo::Likelihood;
use crate::kernels::sample::Sampler;
use crate::model::{ParamLayout, VaeConfig};
use crate::train::DeviceData;
use crate::train::forward::{Matmuls, Net};

/// Encoder and decoder for up to `rows` items at a time, on a model's parameters.
pub struct Codec {
    rows: usize,
    cfg: VaeConfig,
    perm: View,
    gather: Gather,
    x: View,
    encode: Vec<Dispatch>,
    mu: View,
    z: View,
    decode: Vec<Dispatch>,
    out: View,
    /// A hierarchy's top-layer input and its ancestral sampling into `z`.
    z_top: View,
    generate: Vec<Dispatch>,
    sampler: Sampler,
}

impl Codec {
    pub fn new(
        gpu: &Gpu,
        cfg: &VaeConfig,
        params: &View,
        data: &DeviceData,
        rows: usize,
    ) -> Result<Self> {
        let layout = ParamLayout::new(cfg);
        let mut mm = Matmuls::new(gpu);
        let x = gpu.zeros("pictures.x", (rows * cfg.input) as u64)?;
        let perm = gpu.zeros("pictures.perm", rows as u64)?;
        let gather = BatchKernel::with_format(gpu, None, data.format)?.bind(
            gpu,
            rows as u32,
            cfg.input as u32,
            &data.pixels,
            &perm,
            &x,
        )?;
        let mut net = Net {
            gpu,
            mm: &mut mm,
            cfg,
            layout: &layout,
            params,
        };
        let mut e = net.encode(&x, rows)?;
        if cfg.ladder {
            let mut ops = std::mem::take(&mut e.dispatches);
            e.mu = net.ladder_mean(&e, rows, &mut ops)?;
            e.dispatches = ops;
        }
        let z = gpu.zeros("pictures.z", (rows * cfg.latent) as u64)?;
        let d = net.decode(&z, rows)?;
        let top = *cfg.latents().last().expect("a latent layer");
        let z_top = gpu.zeros("pictures.z_top", (rows * top) as u64)?;
        let sampler = Sampler::new(gpu, 0)?;
        let mut generate = Vec::new();
        net.generate_down(&z_top, &z, rows, &sampler, &mut generate)?;
        Ok(Self {
            rows,
            cfg: cfg.clone(),
            perm,
            gather,
            x,
            encode: e.dispatches,
            mu: e.mu,
            z,
            decode: d.dispatches,
            out: d.out,
            z_top,
            generate,
            sampler,
        })
    }

    /// Units of the layer samples start from: the top of a hierarchy, else z.
    pub fn top_latent(&self) -> usize {
        *self.cfg.latents().last().expect("a latent layer")
    }

    /// Samples of the generative model as pixel means [n, D]: `z_top` [n, L_top] (N(0, I) draws)
    /// walked down the hierarchy with noise from (`seed`, `step`), then decoded; for a one-layer
    /// model the same as [`Codec::decode`].
    pub fn generate(&self, gpu: &Gpu, z_top: &[f32], seed: u64, step: u32) -> Result<Vec<f32>> {
        if self.generate.is_empty() {
            return self.decode(gpu, z_top);
        }
        let n = z_top.len() / self.top_latent();
        assert!(n >= 1 && n <= self.rows && z_top.len() == n * self.top_latent());
        gpu.write(&self.z_top, z_top);
        self.sampler.set_state(gpu, seed, step);
        let ops: Vec<&Dispatch> = self.generate.iter().chain(&self.decode).collect();
        gpu.submit(&ops);
        self.pixels(gpu, n)
    }

    /// The posterior means [n, L] of dataset items (n ≤ rows).
    pub fn encode(&self, gpu: &Gpu, items: &[u32]) -> Result<Vec<f32>> {
        assert!(!items.is_empty() && items.len() <= self.rows);
        let mut perm = items.to_vec();
        perm.resize(self.rows, items[0]);
        gpu.write(&self.perm, &perm);
        self.gather.set(gpu, 0, 0);
        let mut ops = vec![&self.gather.dispatch];
        ops.extend(&self.encode);
        gpu.submit(&ops);
        let mut mu: Vec<f32> = gpu.read(&self.mu)?;
        mu.truncate(items.len() * self.cfg.latent);
        Ok(mu)
    }

    /// Pixel means [n, D] in [0, 1] for latents `z` [n, L] (n ≤ rows): sigmoid of the logits
    /// for a Bernoulli decoder, the means clamped to [0, 1] for a Gaussian one.
    pub fn decode(&self, gpu: &Gpu, z: &[f32]) -> Result<Vec<f32>> {
        let n = z.len() / self.cfg.latent;
        assert!(n >= 1 && n <= self.rows && z.len() == n * self.cfg.latent);
        gpu.write(&self.z, z);
        gpu.submit(&self.decode.iter().collect::<Vec<_>>());
        self.pixels(gpu, n)
    }

    /// The decoder's output of the first `n` rows as pixel means in [0, 1].
    fn pixels(&self, gpu: &Gpu, n: usize) -> Result<Vec<f32>> {
        let mut out: Vec<f32> = gpu.read(&self.out)?;
        out.truncate(n * self.cfg.input);
        let bernoulli = self.cfg.likelihood == Likelihood::Bernoulli;
        Ok(out
            .into_iter()
            .map(|v| {
                if bernoulli {
                    crate::cpu::activation::sigmoid(v as f64) as f32
                } else {
                    v.clamp(0.0, 1.0)
                }
            })
            .collect())
    }

    /// The original pixels [n, D] in [0, 1] of dataset items (as the encoder saw them).
    pub fn originals(&self, gpu: &Gpu, items: &[u32]) -> Result<Vec<f32>> {
        let mut perm = items.to_vec();
        perm.resize(self.rows, items[0]);
        gpu.write(&self.perm, &perm);
        self.gather.set(gpu, 0, 0);
        gpu.submit(&[&self.gather.dispatch]);
        let mut v: Vec<f32> = gpu.read(&self.x)?;
        v.truncate(items.len() * self.cfg.input);
        Ok(v)
    }
}

/// How an item's pixels form a picture: row-major, channels interleaved (1 grayscale, 3 RGB).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageShape {
    pub height: usize,
    pub width: usize,
    pub channels: usize,
}

impl ImageShape {
    /// The picture of items of `item_shape` (the loader's shape) and `pixels` values: [H, W],
    /// [H, W, 1] or [H, W, 3]; a flat or unknown shape is a square grayscale image when `pixels`
    /// is a square. `None` when the items are not pictures we can draw.
    pub fn of(item_shape: &[usize], pixels: usize) -> Option<Self> {
        let shape = match *item_shape {
            [height, width] | [height, width, 1] => Self {
                height,
                width,
                channels: 1,
            },
            [height, width, 3] => Self {
                height,
                width,
                channels: 3,
            },
            [] | [_] => {
                let side = (pixels as f64).sqrt().round() as usize;
                Self {
                    height: side,
                    width: side,
                    channels: 1,
                }
            }
            _ => return None,
        };
        (shape.len() == pixels && pixels > 0).then_some(shape)
    }

    /// Values per item.
    pub fn len(&self) -> usize {
        self.height * self.width * self.channels
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// What `vae` says when items are not pictures.
    pub fn refusal(item_shape: &[usize], pixels: usize) -> String {
        format!(
            "the items have shape {item_shape:?} ({pixels} values): pictures need [H, W] \
             grayscale or [H, W, 3] colour images, or a square number of grayscale pixels"
        )
    }
}

/// A grid of images [n, H·W·C] in [0, 1], `cols` per row, 2-pixel gaps, as an 8-bit grayscale or
/// RGB PNG. Returns (width, height).
pub fn write_grid(
    path: &Path,
    images: &[f32],
    shape: ImageShape,
    cols: usize,
) -> std::io::Result<(u32, u32)> {
    let ImageShape {
        height,
        width,
        channels,
    } = shape;
    let per = shape.len();
    let n = images.len() / per;
    let rows = n.div_ceil(cols);
    let gap = 2;
    let (w, h) = (cols * (width + gap) + gap, rows * (height + gap) + gap);
    let mut pixels = vec![40u8; w * h * channels];
    for i in 0..n {
        let (ox, oy) = (
            gap + (i % cols) * (width + gap),
            gap + (i / cols) * (height + gap),
        );
        for y in 0..height {
            let src = &images[i * per + y * width * channels..][..width * channels];
            let dst = ((oy + y) * w + ox) * channels;
            for (d, v) in pixels[dst..dst + width * channels].iter_mut().zip(src) {
                *d = (v.clamp(0.0, 1.0) * 255.0).round() as u8;
            }
        }
    }
    let file = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut enc = png::Encoder::new(file, w as u32, h as u32);
    enc.set_color(if channels == 3 {
        png::ColorType::Rgb
    } else {
        png::ColorType::Grayscale
    });
    enc.set_depth(png::BitDepth::Eight);
    let mut writer = enc.write_header().map_err(std::io::Error::other)?;
    writer
        .write_image_data(&pixels)
        .map_err(std::io::Error::other)?;
    writer.finish().map_err(std::io::Error::other)?;
    Ok((w as u32, h as u32))
}

/// Spherical interpolation between two latents (linear when they are nearly parallel).
pub fn slerp(a: &[f32], b: &[f32], t: f32) -> Vec<f32> {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let (na, nb) = (
        a.iter().map(|x| x * x).sum::<f32>().sqrt(),
        b.iter().map(|x| x * x).sum::<f32>().sqrt(),
    );
    let cos = (dot / (na * nb).max(1e-12)).clamp(-1.0, 1.0);
    let omega = cos.acos();
    if omega.abs() < 1e-4 {
        return a.iter().zip(b).map(|(x, y)| x + t * (y - x)).collect();
    }
    let (s0, s1) = (
        ((1.0 - t) * omega).sin() / omega.sin(),
        (t * omega).sin() / omega.sin(),
    );
    a.iter().zip(b).map(|(x, y)| s0 * x + s1 * y).collect()
}

/// The pictures `vae train` writes after every epoch: 64 samples from fixed z ~ N(0, I) (the same
/// z each epoch, so progress is visible; the top layer's, for a hierarchy) and 16 items above
/// their reconstructions.
pub struct EpochPictures {
    codec: Codec,
    shape: ImageShape,
    input: usize,
    z: Vec<f32>,
    items: Vec<u32>,
    seed: u64,
}

impl EpochPictures {
    /// `None` when the items (of `item_shape`) are not pictures.
    pub fn new(
        gpu: &Gpu,
        cfg: &VaeConfig,
        params: &View,
        data: &DeviceData,
        item_shape: &[usize],
        seed: u64,
    ) -> Result<Option<Self>> {
        let Some(shape) = ImageShape::of(item_shape, cfg.input) else {
            return Ok(None);
        };
        let pos = crate::cpu::philox::StreamPos {
            seed,
            step: 0,
            stream: 0x5a4d,
        };
        let top = *cfg.latents().last().expect("a latent layer");
        let z = crate::cpu::sample::normals(&pos, 64 * top)
            .iter()
            .map(|&v| v as f32)
            .collect();
        let n = data.items.min(16) as u32;
        // Spread over the data (the shipped test split is ordered by label).
        let items = (0..n)
            .map(|i| (i as usize * data.items / n as usize) as u32)
            .collect();
        Ok(Some(Self {
            codec: Codec::new(gpu, cfg, params, data, 64)?,
            shape,
            input: cfg.input,
            z,
            items,
            seed,
        }))
    }

    /// Writes `samples.png` and `reconstructions.png` into `dir`.
    pub fn write(&self, gpu: &Gpu, dir: &Path) -> std::result::Result<(), String> {
        let fail = |e: &dyn std::fmt::Display| e.to_string();
        let samples = self
            .codec
            .generate(gpu, &self.z, self.seed, 0)
            .map_err(|e| fail(&e))?;
        write_grid(&dir.join("samples.png"), &samples, self.shape, 8).map_err(|e| fail(&e))?;
        let mu = self.codec.encode(gpu, &self.items).map_err(|e| fail(&e))?;
        let mut grid = self
            .codec
            .originals(gpu, &self.items)
            .map_err(|e| fail(&e))?;
        grid.extend(self.codec.decode(gpu, &mu).map_err(|e| fail(&e))?);
        let cols = self.items.len();
        debug_assert_eq!(grid.len(), 2 * cols * self.input);
        write_grid(&dir.join("reconstructions.png"), &grid, self.shape, cols)
            .map_err(|e| fail(&e))?;
        Ok(())
    }
}
