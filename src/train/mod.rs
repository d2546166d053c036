//! Training: the dataset on the device, the step graph and the loop around it.

pub mod graph;
pub mod run;

pub use graph::TrainGraph;

use crate::data::{Dataset, Pixels};
use crate::gpu::{Gpu, Result, View};
use crate::kernels::batch::upload_pixels;

/// A dataset resident on the device as packed bytes.
pub struct DeviceData {
    pub pixels: View,
    pub items: usize,
    pub dim: usize,
}

impl DeviceData {
    /// Uploads `set` once. Float pixels are quantized to bytes (the loaders keep byte data as
    /// bytes, so this only affects float CSV/NPY input).
    pub fn upload(gpu: &Gpu, label: &str, set: &Dataset) -> Result<Self> {
        let bytes: Vec<u8> = match &set.pixels {
            Pixels::U8(v) => v.clone(),
            Pixels::F32(v) => v.iter().map(|&x| (x * 255.0).round() as u8).collect(),
        };
        Ok(Self {
            pixels: upload_pixels(gpu, label, &bytes)?,
            items: set.len,
            dim: set.dim(),
        })
    }
}
