//! Training: the dataset on the device, the step graph, checkpoints and the loop around them.

pub mod checkpoint;
pub mod forward;
pub mod graph;
pub mod run;

pub use checkpoint::{Checkpoint, CheckpointError, Progress};
pub use graph::{GraphOptions, StepInputs, TrainGraph};

use crate::data::{Dataset, Pixels};
use crate::gpu::{Gpu, Result, View};
use crate::kernels::adam::AdamConfig;
use crate::kernels::batch::{PixelFormat, upload_float_pixels, upload_pixels};
use crate::kernels::iwae::Objective;
use crate::model::VaeConfig;

/// How pixels p ∈ [0, 1] become the model's targets.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Binarize {
    /// Use p as it is.
    #[default]
    None,
    /// One Bernoulli(p) draw per pixel, fixed for the whole run.
    Static,
    /// A new Bernoulli(p) draw each epoch (as in the IWAE paper), made on the device.
    Dynamic,
}

impl Binarize {
    /// The gather's draw number in `epoch` (1-based), or `None` without binarization.
    pub fn draw(self, epoch: usize) -> Option<u32> {
        match self {
            Binarize::None => None,
            Binarize::Static => Some(0),
            Binarize::Dynamic => Some(epoch as u32),
        }
    }
}

/// Every setting that determines a training run's numbers: recorded in `config.json` and in
/// each checkpoint, so `--resume` continues with exactly these.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrainSettings {
    /// The `--data` spec (`mnist5k`, `fashion-mnist`, a path).
    pub data: String,
    pub test_data: Option<String>,
    pub model: VaeConfig,
    pub epochs: usize,
    pub batch: u32,
    pub adam: AdamConfig,
    pub seed: u64,
    /// Weight of the KL term (β-VAE).
    pub beta: f64,
    /// Steps over which β rises linearly from 0 (0: no warm-up).
    pub kl_warmup: u64,
    /// Read the loss back every this many steps.
    pub log_every: u64,
    pub binarize: Binarize,
    /// Absent in checkpoints written before the K-sample objectives: the plain ELBO.
    #[serde(default)]
    pub objective: Objective,
    /// Posterior samples per example (K).
    #[serde(default = "one_sample")]
    pub samples: u32,
    #[serde(default)]
    pub lr_schedule: LrSchedule,
}

/// How the learning rate changes over epochs.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum LrSchedule {
    #[default]
    Constant,
    /// The IWAE paper's (Burda et al., 2016, §5): stage i = 0..7 lasts 3^i epochs at
    /// lr·10^(−i/7), 3,280 epochs in all; `scale` shortens every stage proportionally (at least
    /// one epoch each) for a quicker run of the same shape.
    Iwae { scale: f64 },
}

impl LrSchedule {
    const IWAE_STAGES: u32 = 8;

    /// Epochs of each stage (empty for a constant rate).
    pub fn stages(&self) -> Vec<usize> {
        match *self {
            Self::Constant => Vec::new(),
            Self::Iwae { scale } => (0..Self::IWAE_STAGES)
                .map(|i| ((3f64.powi(i as i32) * scale).round() as usize).max(1))
                .collect(),
        }
    }

    /// Epochs in all, where the schedule defines it.
    pub fn total_epochs(&self) -> Option<usize> {
        let stages = self.stages();
        (!stages.is_empty()).then(|| stages.iter().sum())
    }

    /// The factor on the base learning rate in `epoch` (1-based); past the last stage, the last.
    pub fn factor(&self, epoch: usize) -> f64 {
        let mut end = 0;
        for (i, len) in self.stages().into_iter().enumerate() {
            end += len;
            if epoch <= end {
                return 10f64.powf(-(i as f64) / 7.0);
            }
        }
        match self {
            Self::Constant => 1.0,
            Self::Iwae { .. } => 10f64.powf(-((Self::IWAE_STAGES - 1) as f64) / 7.0),
        }
    }
}

fn one_sample() -> u32 {
    1
}

impl TrainSettings {
    /// β in force at `step` (0-based), after the warm-up's linear ramp.
    pub fn beta_at(&self, step: u64) -> f64 {
        if self.kl_warmup > 0 {
            self.beta * (step as f64 / self.kl_warmup as f64).min(1.0)
        } else {
            self.beta
        }
    }

    /// The seed of the gather's binarization draws (independent of the ε stream).
    pub fn binarize_seed(&self) -> Option<u64> {
        (self.binarize != Binarize::None).then_some(self.seed ^ 0xb1_4a41_2e00)
    }

    /// The learning rate in `epoch` (1-based).
    pub fn lr_at(&self, epoch: usize) -> f64 {
        self.adam.lr * self.lr_schedule.factor(epoch)
    }

    /// What the logged loss is: the negative ELBO, or the negative IWAE bound with its K.
    pub fn loss_name(&self) -> String {
        match self.objective {
            Objective::Elbo => "-ELBO".into(),
            Objective::Iwae => format!("-IWAE(k={})", self.samples),
        }
    }

    /// The graph options of this run for batches of `batch` rows.
    pub fn graph_options(&self, batch: u32, seed: u64) -> graph::GraphOptions {
        graph::GraphOptions {
            batch,
            adam: self.adam,
            seed,
            binarize_seed: self.binarize_seed(),
            objective: self.objective,
            samples: self.samples,
        }
    }
}

/// A dataset resident on the device: bytes packed four to a word, or f32 values.
pub struct DeviceData {
    pub pixels: View,
    pub items: usize,
    pub dim: usize,
    pub format: PixelFormat,
}

impl DeviceData {
    /// Byte pixels already uploaded with [`upload_pixels`].
    pub fn bytes(pixels: View, items: usize, dim: usize) -> Self {
        Self {
            pixels,
            items,
            dim,
            format: PixelFormat::Bytes,
        }
    }

    /// Uploads `set` once, bytes as bytes and float pixels (CSV/NPY float input) as f32, so
    /// nothing is quantized.
    pub fn upload(gpu: &Gpu, label: &str, set: &Dataset) -> Result<Self> {
        let (format, size) = match &set.pixels {
            Pixels::U8(v) => (PixelFormat::Bytes, v.len() as u64),
            Pixels::F32(v) => (PixelFormat::Floats, 4 * v.len() as u64),
        };
        let have = gpu.max_binding_bytes();
        let need = size.next_multiple_of(16);
        if need > have {
            return Err(crate::gpu::GpuError::DoesNotFit {
                adapter: gpu.info.name.clone(),
                what: format!(
                    "the {label} ({} items of {} bytes)",
                    set.len,
                    need / set.len.max(1) as u64
                ),
                need,
                limit: "max_storage_buffer_binding_size",
                have,
                advice: format!(
                    "use at most {} items, or another adapter",
                    have / (need / set.len.max(1) as u64).max(1)
                ),
            });
        }
        let pixels = match &set.pixels {
            Pixels::U8(v) => upload_pixels(gpu, label, v)?,
            Pixels::F32(v) => upload_float_pixels(gpu, label, v)?,
        };
        Ok(Self {
            pixels,
            items: set.len,
            dim: set.dim(),
            format,
        })
    }
}
