//! Wrapper for `shaders/batch.wgsl`: the dataset resident on the device as packed bytes, and the
//! per-step gather of a batch through a permutation.

use bytemuck::{Pod, Zeroable};

use super::{check_len, compose};
use crate::gpu::{Binding, Dispatch, Gpu, GpuError, Kernel, Result, Slot, View};

const WG: u32 = 256;
const SLOTS: &[Slot] = &[Slot::Uniform, Slot::Read, Slot::Read, Slot::ReadWrite];

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    rows: u32,
    dim: u32,
    first: u32,
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

pub struct BatchKernel {
    kernel: Kernel,
}

/// A bound gather: the dispatch and the uniform holding the batch's first index.
pub struct Gather {
    pub dispatch: Dispatch,
    params: wgpu::Buffer,
    rows: u32,
    dim: u32,
    perm_len: u64,
}

impl BatchKernel {
    pub fn new(gpu: &Gpu) -> Result<Self> {
        Ok(Self {
            kernel: gpu.kernel("batch.gather", &compose("batch.wgsl"), "gather", SLOTS, &[])?,
        })
    }

    /// `out[r, :] = pixels[perm[first + r], :] / 255` for `rows` rows of `dim` pixels.
    pub fn bind(
        &self,
        gpu: &Gpu,
        rows: u32,
        dim: u32,
        pixels: &View,
        perm: &View,
        out: &View,
    ) -> Result<Gather> {
        let label = &self.kernel.label;
        check_len(label, "out", out, rows as u64 * dim as u64)?;
        check_len(label, "perm", perm, rows as u64)?;
        let items = pixels.len * 4 / dim.max(1) as u64;
        if items == 0 {
            return Err(GpuError::Shape {
                kernel: label.clone(),
                reason: "the dataset is empty".into(),
            });
        }
        let params = gpu.uniform(
            label,
            &Params {
                rows,
                dim,
                first: 0,
                _pad: 0,
            },
        );
        let dispatch = gpu.dispatch(
            &self.kernel,
            &[
                Binding::Uniform(&params),
                Binding::Storage(pixels),
                Binding::Storage(perm),
                Binding::Storage(out),
            ],
            gpu.grid_1d((rows * dim).div_ceil(WG)),
        )?;
        Ok(Gather {
            dispatch,
            params,
            rows,
            dim,
            perm_len: perm.len,
        })
    }
}

impl Gather {
    /// Points the next submitted gather at `perm[first..first + rows]`.
    pub fn set_first(&self, gpu: &Gpu, first: u32) {
        assert!(
            first as u64 + self.rows as u64 <= self.perm_len,
            "batch runs past the permutation"
        );
        let p = Params {
            rows: self.rows,
            dim: self.dim,
            first,
            _pad: 0,
        };
        gpu.queue
            .write_buffer(&self.params, 0, bytemuck::bytes_of(&p));
    }
}
