//! Wrapper for `shaders/batch.wgsl`: the dataset resident on the device as packed bytes, and the
//! per-step gather of a batch through a permutation.

use bytemuck::{Pod, Zeroable};

use super::{check_len, compose};
use crate::gpu::{Binding, Dispatch, Gpu, GpuError, Kernel, ParamWrite, Result, Slot, View};

const WG: u32 = 256;
/// Words (four pixels each) per workgroup of `gather_words`.
const WORDS_WG: u32 = 64;
const SLOTS: &[Slot] = &[Slot::Uniform, Slot::Read, Slot::Read, Slot::ReadWrite];

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    rows: u32,
    total: u32,
    dim: u32,
    first: u32,
    draw: u32,
    seed_lo: u32,
    seed_hi: u32,
    _pad: u32,
}

/// Bytes packed four to a little-endian u32, zero-padded.
pub fn pack_bytes(bytes: &[u8]) -> Vec<u32> {
    bytes
        .chunks(4)
        .map(|c| {
            c.iter()
                .enumerate()
                .fold(0u32, |w, (i, &b)| w | (b as u32) << (8 * i))
        })
        .collect()
}

/// Uploads `items` × `dim` pixel bytes to the device.
pub fn upload_pixels(gpu: &Gpu, label: &str, bytes: &[u8]) -> Result<View> {
    gpu.upload(label, &pack_bytes(bytes))
}

/// How a dataset's pixels are stored on the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PixelFormat {
    /// Bytes (scaled by 1/255 when gathered), packed four to a word: [`upload_pixels`].
    Bytes,
    /// f32 values in [0, 1], kept exact: [`upload_float_pixels`].
    Floats,
}

/// Uploads float pixels (already in [0, 1]) as they are.
pub fn upload_float_pixels(gpu: &Gpu, label: &str, values: &[f32]) -> Result<View> {
    gpu.upload(label, values)
}

pub struct BatchKernel {
    kernel: Kernel,
    /// `kernel` for byte pixels and rows of a multiple of 4: a packed word per invocation.
    words: Option<Kernel>,
    format: PixelFormat,
    /// Binarize with Bernoulli draws keyed by this seed (and the draw number set per step).
    binarize_seed: Option<u64>,
}

/// A bound gather: the dispatch and the uniform holding the batch's first index and draw.
pub struct Gather {
    pub dispatch: Dispatch,
    params: wgpu::Buffer,
    rows: u32,
    /// Rows written: `rows` times the number of copies.
    total: u32,
    dim: u32,
    seed: u64,
    perm_len: u64,
}

impl BatchKernel {
    /// A gather that scales bytes to [0, 1], or with `binarize_seed` replaces each pixel p by
    /// a Bernoulli(p) draw.
    pub fn new(gpu: &Gpu, binarize_seed: Option<u64>) -> Result<Self> {
        Self::with_format(gpu, binarize_seed, PixelFormat::Bytes)
    }

    /// As [`new`](Self::new) for pixels stored in `format`.
    pub fn with_format(gpu: &Gpu, binarize_seed: Option<u64>, format: PixelFormat) -> Result<Self> {
        let on = binarize_seed.is_some();
        let flag = |b: bool| if b { 1.0 } else { 0.0 };
        let constants = [
            ("BINARIZE", flag(on)),
            ("FLOAT_PIXELS", flag(format == PixelFormat::Floats)),
        ];
        let source = compose("batch.wgsl");
        let words = match format {
            PixelFormat::Bytes => Some(gpu.kernel(
                "batch.gather_words",
                &source,
                "gather_words",
                SLOTS,
                &constants,
            )?),
            PixelFormat::Floats => None,
        };
        Ok(Self {
            format,
            kernel: gpu.kernel("batch.gather", &source, "gather", SLOTS, &constants)?,
            words,
            binarize_seed,
        })
    }

    /// `out[r, :] = pixels[perm[first + r], :] / 255` for `rows` rows of `dim` pixels (or
    /// Bernoulli draws with those means when binarizing).
    pub fn bind(
        &self,
        gpu: &Gpu,
        rows: u32,
        dim: u32,
        pixels: &View,
        perm: &View,
        out: &View,
    ) -> Result<Gather> {
        self.bind_repeated(gpu, rows, 1, dim, pixels, perm, out)
    }

    /// As [`bind`](Self::bind), the `rows` rows written `copies` times one after the other
    /// (row r of `out` is item `perm[first + r mod rows]`; binarized draws repeat too).
    #[allow(clippy::too_many_arguments)]
    pub fn bind_repeated(
        &self,
        gpu: &Gpu,
        rows: u32,
        copies: u32,
        dim: u32,
        pixels: &View,
        perm: &View,
        out: &View,
    ) -> Result<Gather> {
        let label = &self.kernel.label;
        let total = rows as u64 * copies.max(1) as u64;
        check_len(label, "out", out, total * dim as u64)?;
        check_len(label, "perm", perm, rows as u64)?;
        if total > u32::MAX as u64 || total * dim as u64 > u32::MAX as u64 {
            return Err(GpuError::Shape {
                kernel: label.clone(),
                reason: format!("{total} rows of {dim} overflow 32-bit indices"),
            });
        }
        let total = total as u32;
        let per_word = match self.format {
            PixelFormat::Bytes => 4,
            PixelFormat::Floats => 1,
        };
        let items = pixels.len * per_word / dim.max(1) as u64;
        if items == 0 {
            return Err(GpuError::Shape {
                kernel: label.clone(),
                reason: "the dataset is empty".into(),
            });
        }
        let seed = self.binarize_seed.unwrap_or(0);
        let params = gpu.uniform(label, &params(rows, total, dim, 0, 0, seed));
        let (kernel, groups) = match &self.words {
            Some(words) if dim.is_multiple_of(4) => {
                let tiles = (dim / 4).div_ceil(WORDS_WG) as u64;
                let groups = total as u64 * tiles;
                if groups > u32::MAX as u64 {
                    return Err(GpuError::Shape {
                        kernel: label.clone(),
                        reason: format!("{groups} workgroups overflow the grid"),
                    });
                }
                (words, groups as u32)
            }
            _ => (&self.kernel, (total * dim).div_ceil(WG)),
        };
        let dispatch = gpu.dispatch(
            kernel,
            &[
                Binding::Uniform(&params),
                Binding::Storage(pixels),
                Binding::Storage(perm),
                Binding::Storage(out),
            ],
            gpu.grid_1d(groups),
        )?;
        Ok(Gather {
            dispatch,
            params,
            rows,
            total,
            dim,
            seed,
            perm_len: perm.len,
        })
    }
}

fn params(rows: u32, total: u32, dim: u32, first: u32, draw: u32, seed: u64) -> Params {
    Params {
        rows,
        total,
        dim,
        first,
        draw,
        seed_lo: seed as u32,
        seed_hi: (seed >> 32) as u32,
        _pad: 0,
    }
}

impl Gather {
    /// Points the next submitted gather at `perm[first..first + rows]`, binarized with draw
    /// number `draw` (ignored without binarization).
    pub fn set(&self, gpu: &Gpu, first: u32, draw: u32) {
        gpu.apply(&self.write(first, draw));
    }

    /// [`Gather::set`]'s write, to apply or stage.
    pub fn write(&self, first: u32, draw: u32) -> ParamWrite {
        assert!(
            first as u64 + self.rows as u64 <= self.perm_len,
            "batch runs past the permutation"
        );
        let p = params(self.rows, self.total, self.dim, first, draw, self.seed);
        ParamWrite::new(&self.params, 0, &p)
    }
}
