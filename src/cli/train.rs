//! `vae train`: train a VAE on the shipped data, a named dataset or files.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};

use super::DeviceArgs;
use crate::data::load_sources;
use crate::gpu::Gpu;
use crate::kernels::Activation;
use crate::kernels::adam::AdamConfig;
use crate::kernels::elbo::Likelihood;
use crate::kernels::iwae::Objective;
use crate::model::{ConvStack, Stage, VaeConfig};
use crate::train::checkpoint::{self, Checkpoint};
use crate::train::run::{Finish, TrainOptions, train};
use crate::train::{Binarize, LrSchedule, TrainSettings};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LikelihoodArg {
    Bernoulli,
    /// Gaussian with a fixed σ (--sigma).
    Gaussian,
    /// Gaussian with a learned per-pixel log-variance.
    GaussianLearned,
}

/// Flags that define a run; `--resume` takes them from the checkpoint instead.
const RUN_DEFINING: [&str; 25] = [
    "data",
    "ladder",
    "conv",
    "conv_kernel",
    "conv_stride",
    "stage",
    "test_data",
    "batch",
    "lr",
    "seed",
    "hidden",
    "latent",
    "activation",
    "likelihood",
    "sigma",
    "beta",
    "kl_warmup",
    "log_every",
    "binarize",
    "max_norm",
    "weight_decay",
    "objective",
    "k",
    "preset",
    "schedule_scale",
];

/// What a preset fixes: these flags cannot be combined with `--preset`.
const PRESET_DEFINED: [&str; 12] = [
    "batch",
    "conv",
    "conv_kernel",
    "conv_stride",
    "stage",
    "lr",
    "hidden",
    "latent",
    "activation",
    "likelihood",
    "sigma",
    "binarize",
];

/// A paper's set-up by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Preset {
    /// PyTorch's examples/vae: 784-400-20, ReLU, Bernoulli, Adam 1e-3, batch 128, 10 epochs.
    #[value(name = "pytorch-example")]
    PytorchExample,
    /// The IWAE paper's one-stochastic-layer model (Burda et al., 2016): two tanh layers of 200,
    /// 50 latent units, Bernoulli on dynamically binarized data, batch 20, Adam (ε = 1e-4) with
    /// the 3^i-epoch schedule at 1e-3·10^(−i/7) (3,280 epochs; see --schedule-scale).
    #[value(name = "iwae-1layer")]
    Iwae1Layer,
    /// The IWAE paper's two-stochastic-layer model: 784-200-200-100 to z_1 (100 units), then
    /// 100-100-50 to z_2 (50 units), tanh, generation mirrored; otherwise as iwae-1layer.
    #[value(name = "iwae-2layer")]
    Iwae2Layer,
    /// keras.io's convolutional VAE: Conv2D 32 and 64 channels (3×3, stride 2, "same", ReLU) to
    /// a dense layer of 16 and 2 latent units, mirrored by transposed convolutions; Bernoulli,
    /// Adam 1e-3, batch 128, 30 epochs.
    #[value(name = "keras-conv")]
    KerasConv,
}

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// `mnist5k` (shipped, the default), `fashion-mnist`, a directory of MNIST-style IDX files,
    /// or a .npy / .csv[.gz] / IDX file.
    #[arg(long, default_value = "mnist5k")]
    pub data: String,
    /// A separate test set (same formats) for the per-epoch test ELBO.
    #[arg(long)]
    pub test_data: Option<String>,
    /// Epochs in all (with --resume: the new total) [default: 10].
    #[arg(long)]
    pub epochs: Option<usize>,
    #[arg(long, default_value_t = 128)]
    pub batch: u32,
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Hidden layer widths, encoder order (the decoder mirrors them): `400` or `512,256`.
    #[arg(long, value_delimiter = ',', default_value = "400")]
    pub hidden: Vec<usize>,
    #[arg(long, default_value_t = 20)]
    pub latent: usize,
    /// A further stochastic layer above the last (a Markov hierarchy, Burda et al. §3): its
    /// deterministic widths and latent units, `100,100:50`; repeat for more layers.
    #[arg(long, value_name = "HIDDEN:LATENT")]
    pub stage: Vec<Stage>,
    /// Top-down (ladder) inference for a hierarchy (needs --stage): each layer's posterior
    /// combines the data's bottom-up Gaussian with the prior from the layer above by precision
    /// weighting (Sønderby et al., 2016).
    #[arg(long)]
    pub ladder: bool,
    /// Convolutions before the encoder's dense layers (mirrored by transposed convolutions
    /// after the decoder's): each layer's output channels, `32,64`. The pictures' height, width
    /// and channels come from the data.
    #[arg(long, value_delimiter = ',')]
    pub conv: Vec<usize>,
    /// Kernel size of every convolution (odd; padding keeps "same" sides).
    #[arg(long, default_value_t = 3)]
    pub conv_kernel: usize,
    /// Stride of every convolution.
    #[arg(long, default_value_t = 2)]
    pub conv_stride: usize,
    #[arg(long, value_enum, default_value_t = Activation::Relu)]
    pub activation: Activation,
    #[arg(long, value_enum, default_value_t = LikelihoodArg::Bernoulli)]
    pub likelihood: LikelihoodArg,
    /// σ of the fixed-variance Gaussian likelihood.
    #[arg(long, default_value_t = 0.1)]
    pub sigma: f32,
    /// Weight of the KL term (β-VAE).
    #[arg(long, default_value_t = 1.0)]
    pub beta: f64,
    /// Raise β linearly from 0 over this many steps.
    #[arg(long, default_value_t = 0)]
    pub kl_warmup: u64,
    /// Turn pixels into Bernoulli draws: once for the run (static) or each epoch (dynamic).
    #[arg(long, value_enum, default_value_t = Binarize::None)]
    pub binarize: Binarize,
    /// A paper's architecture and optimizer (combine with --objective, --k, --data, --epochs).
    #[arg(long, value_enum, conflicts_with_all = PRESET_DEFINED)]
    pub preset: Option<Preset>,
    /// Shorten the iwae-1layer learning-rate schedule proportionally (each stage at least one
    /// epoch): 0.01 gives 41 epochs instead of 3,280.
    #[arg(long, requires = "preset", default_value_t = 1.0)]
    pub schedule_scale: f64,
    /// What to maximize: the ELBO, or the importance-weighted bound over --k samples (IWAE).
    #[arg(long, value_enum, default_value_t = Objective::Elbo)]
    pub objective: Objective,
    /// Posterior samples per example: the IWAE bound's K, or with the ELBO the number of
    /// single-sample ELBOs averaged.
    #[arg(long, default_value_t = 1)]
    pub k: u32,
    /// Clip the global gradient norm to this value (0: off).
    #[arg(long, default_value_t = 0.0)]
    pub max_norm: f64,
    /// Adam's L2 weight decay.
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f64,
    /// Read the loss back every this many steps.
    #[arg(long, default_value_t = 50)]
    pub log_every: u64,
    /// Run directory (config.json, metrics.jsonl, checkpoint.safetensors) [default: the first
    /// free runs/<data>-<n>].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Start a new run in --out even though it holds one (its checkpoint is replaced at the end
    /// of the first epoch).
    #[arg(long, requires = "out")]
    pub overwrite: bool,
    /// Continue the run in this directory from its checkpoint, with its settings.
    #[arg(long, value_name = "RUN_DIR", conflicts_with_all = RUN_DEFINING, conflicts_with = "out")]
    pub resume: Option<PathBuf>,
    /// Stop after this many optimizer steps in all, writing a checkpoint (resumable).
    #[arg(long)]
    pub max_steps: Option<u64>,
    /// Optimizer steps recorded into one submit (default: 1 on software adapters, 8 on
    /// others). The parameters come out the same whatever the value.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub steps_per_submit: Option<u32>,
    /// No progress bar (per-epoch lines only).
    #[arg(long)]
    pub quiet: bool,
    #[command(flatten)]
    pub device: DeviceArgs,
}

impl TrainArgs {
    /// Rejects impossible settings up front, naming the allowed range.
    fn validate(&self) -> anyhow::Result<()> {
        let checks: [(bool, &str); 17] = [
            (self.batch >= 1, "--batch must be at least 1"),
            (
                self.schedule_scale > 0.0 && self.schedule_scale.is_finite(),
                "--schedule-scale must be > 0",
            ),
            (self.k >= 1, "--k must be at least 1"),
            (self.latent >= 1, "--latent must be at least 1"),
            (self.epochs != Some(0), "--epochs must be at least 1"),
            (
                self.lr > 0.0 && self.lr.is_finite(),
                "--lr must be a positive number",
            ),
            (
                self.beta >= 0.0 && self.beta.is_finite(),
                "--beta must be >= 0",
            ),
            (
                self.hidden.iter().all(|&h| h >= 1),
                "--hidden widths must be at least 1",
            ),
            (
                self.sigma > 0.0 && self.sigma.is_finite(),
                "--sigma must be > 0",
            ),
            (self.log_every >= 1, "--log-every must be at least 1"),
            (
                self.max_norm >= 0.0 && self.max_norm.is_finite(),
                "--max-norm must be >= 0 (0: no clipping)",
            ),
            (
                self.weight_decay >= 0.0 && self.weight_decay.is_finite(),
                "--weight-decay must be >= 0",
            ),
            (self.max_steps != Some(0), "--max-steps must be at least 1"),
            (
                self.conv.iter().all(|&c| c >= 1),
                "--conv channels must be at least 1",
            ),
            (
                self.conv_kernel % 2 == 1,
                "--conv-kernel must be odd (1, 3, 5, ...)",
            ),
            (self.conv_stride >= 1, "--conv-stride must be at least 1"),
            (
                !self.ladder || !self.stage.is_empty() || self.preset == Some(Preset::Iwae2Layer),
                "--ladder needs a hierarchy: add --stage HIDDEN:LATENT (or --preset iwae-2layer)",
            ),
        ];
        for (ok, msg) in checks {
            if !ok {
                bail!("{msg}");
            }
        }
        Ok(())
    }

    /// The settings of a new run, once the data's dimension is known.
    fn settings(&self, input: usize) -> TrainSettings {
        let likelihood = match self.likelihood {
            LikelihoodArg::Bernoulli => Likelihood::Bernoulli,
            LikelihoodArg::Gaussian => Likelihood::Gaussian { sigma: self.sigma },
            LikelihoodArg::GaussianLearned => Likelihood::GaussianLearned { shared: true },
        };
        let s = TrainSettings {
            data: self.data.clone(),
            test_data: self.test_data.clone(),
            model: VaeConfig {
                input,
                hidden: self.hidden.clone(),
                latent: self.latent,
                act: self.activation,
                likelihood,
                upper: self.stage.clone(),
                // The pictures' sides are known once the data is loaded (`with_pictures`).
                conv: (!self.conv.is_empty()).then(|| ConvStack {
                    image: [0; 3],
                    channels: self.conv.clone(),
                    kernel: self.conv_kernel,
                    stride: self.conv_stride,
                }),
                ladder: self.ladder,
            },
            epochs: self.epochs.unwrap_or(10),
            batch: self.batch,
            adam: AdamConfig {
                lr: self.lr,
                max_norm: self.max_norm,
                weight_decay: self.weight_decay,
                ..AdamConfig::default()
            },
            seed: self.seed,
            beta: self.beta,
            kl_warmup: self.kl_warmup,
            log_every: self.log_every,
            binarize: self.binarize,
            objective: self.objective,
            samples: self.k,
            lr_schedule: LrSchedule::Constant,
        };
        match self.preset {
            Some(p) => p.apply(s, self.schedule_scale, self.epochs),
            None => s,
        }
    }
}

impl Preset {
    /// `s` with the preset's architecture, data treatment and optimizer; `epochs` (if given)
    /// overrides the length its schedule implies.
    pub fn apply(
        self,
        s: TrainSettings,
        schedule_scale: f64,
        epochs: Option<usize>,
    ) -> TrainSettings {
        match self {
            Preset::PytorchExample => s,
            Preset::KerasConv => TrainSettings {
                model: VaeConfig {
                    hidden: vec![16],
                    latent: 2,
                    act: Activation::Relu,
                    likelihood: Likelihood::Bernoulli,
                    upper: Vec::new(),
                    conv: Some(ConvStack {
                        image: [0; 3],
                        channels: vec![32, 64],
                        kernel: 3,
                        stride: 2,
                    }),
                    ladder: false,
                    ..s.model
                },
                epochs: epochs.unwrap_or(30),
                batch: 128,
                adam: AdamConfig { lr: 1e-3, ..s.adam },
                ..s
            },
            Preset::Iwae1Layer | Preset::Iwae2Layer => {
                let lr_schedule = LrSchedule::Iwae {
                    scale: schedule_scale,
                };
                let (latent, upper) = if self == Preset::Iwae2Layer {
                    let top = Stage {
                        hidden: vec![100, 100],
                        latent: 50,
                    };
                    (100, vec![top])
                } else {
                    (50, Vec::new())
                };
                TrainSettings {
                    model: VaeConfig {
                        hidden: vec![200, 200],
                        latent,
                        act: Activation::Tanh,
                        likelihood: Likelihood::Bernoulli,
                        upper,
                        ..s.model
                    },
                    epochs: epochs.or(lr_schedule.total_epochs()).unwrap_or(s.epochs),
                    batch: 20,
                    adam: AdamConfig {
                        lr: 1e-3,
                        eps: 1e-4,
                        ..s.adam
                    },
                    binarize: Binarize::Dynamic,
                    lr_schedule,
                    ..s
                }
            }
        }
    }
}

/// Gives a convolutional model the sides of the data's pictures ([H, W] or [H, W, C] items).
pub(crate) fn with_pictures(
    model: &mut VaeConfig,
    data: &str,
    item_shape: &[usize],
) -> anyhow::Result<()> {
    let Some(stack) = &mut model.conv else {
        return Ok(());
    };
    stack.image = match *item_shape {
        [h, w] => [h, w, 1],
        [h, w, c] => [h, w, c],
        _ => bail!(
            "{data}: items of shape {item_shape:?} are not pictures: --conv needs [height, \
             width] or [height, width, channels] items (IDX images, square CSV rows, PNGs)"
        ),
    };
    Ok(())
}

/// `--out`, refused if it holds a run (unless `--overwrite`), or the first free
/// `runs/<data>-<n>`.
fn new_run_dir(args: &TrainArgs) -> anyhow::Result<PathBuf> {
    if let Some(out) = &args.out {
        if out.join(checkpoint::FILE).exists() && !args.overwrite {
            bail!(
                "{} already holds a run ({}): continue it with --resume {0}, or pass --overwrite \
                 to start over",
                out.display(),
                checkpoint::FILE
            );
        }
        return Ok(out.clone());
    }
    let stem = Path::new(&args.data)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "run".into());
    let stem: String = stem
        .split('.')
        .next()
        .unwrap_or("run")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    (1..)
        .map(|n| PathBuf::from("runs").join(format!("{stem}-{n}")))
        .find(|dir| !dir.exists())
        .context("no free run directory name")
}

/// Holds an exclusive lock on `dir/.lock` for the life of the returned file, so a second `vae
/// train` on the same run directory refuses instead of interleaving checkpoints. The lock is the
/// OS's (flock), so it disappears with the process, even after kill -9.
fn lock_run_dir(dir: &Path) -> anyhow::Result<std::fs::File> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(".lock");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => {
            use std::io::{Seek, Write};
            file.set_len(0)?;
            file.seek(std::io::SeekFrom::Start(0))?;
            write!(file, "{}", std::process::id())?;
            Ok(file)
        }
        Err(std::fs::TryLockError::WouldBlock) => {
            let holder = std::fs::read_to_string(&path).unwrap_or_default();
            bail!(
                "{} is in use by another `vae train` (process {}); wait for it or use another --out",
                dir.display(),
                holder.trim()
            )
        }
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("locking {}", path.display()))
        }
    }
}

/// Ctrl-C and SIGTERM set the returned flag: the loop then finishes its step, writes a
/// checkpoint and returns. A second signal exits at once (the checkpoint on disk stays intact:
/// writes are atomic).
fn stop_on_signal() -> anyhow::Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
    })
    .context("installing the Ctrl-C handler")?;
    Ok(stop)
}

pub fn run(args: &TrainArgs) -> anyhow::Result<ExitCode> {
    args.validate()?;
    let (settings, out, resume) = match &args.resume {
        Some(dir) => {
            let path = dir.join(checkpoint::FILE);
            if !path.exists() {
                bail!("no checkpoint to resume: {} does not exist", path.display());
            }
            let ckpt = Checkpoint::load(&path)?;
            let mut settings = ckpt.settings.clone();
            if let Some(epochs) = args.epochs {
                if epochs < ckpt.progress.epochs_done {
                    bail!(
                        "--epochs {epochs} is fewer than the {} epochs {} has done already",
                        ckpt.progress.epochs_done,
                        dir.display()
                    );
                }
                settings.epochs = epochs;
            }
            (settings, dir.clone(), Some(ckpt))
        }
        None => (args.settings(0), new_run_dir(args)?, None),
    };
    // Every data error is raised here, before a device is opened.
    let source = load_sources(&settings.data, settings.test_data.as_deref())?;
    let mut model = VaeConfig {
        input: resume
            .as_ref()
            .map_or(source.train.dim(), |c| c.settings.model.input),
        ..settings.model
    };
    if resume.is_none() {
        with_pictures(&mut model, &settings.data, &source.train.item_shape)?;
    }
    model
        .check()
        .map_err(|e| anyhow::anyhow!("{}: {e}", settings.data))?;
    let settings = TrainSettings { model, ..settings };
    if source.train.dim() != settings.model.input {
        bail!(
            "{}: items have {} pixels, the checkpoint's model ({}) expects {}",
            settings.data,
            source.train.dim(),
            checkpoint::describe(&settings),
            settings.model.input
        );
    }
    if (source.train.len as u64) < settings.batch as u64 {
        bail!(
            "--batch {} is larger than the training set ({} items in {})",
            settings.batch,
            source.train.len,
            settings.data
        );
    }
    let _lock = lock_run_dir(&out)?;
    let gpu = Gpu::new(&args.device.request())?;
    match &resume {
        Some(c) => println!(
            "resuming {} ({}) at epoch {}, step {}, on {}",
            out.display(),
            checkpoint::describe(&settings),
            c.progress.epochs_done + 1,
            c.progress.step,
            gpu.describe()
        ),
        None => println!(
            "training {} VAE on {} ({} train, {} test) with {}",
            checkpoint::describe(&settings),
            source.name,
            source.train.len,
            source.test.as_ref().map_or(0, |t| t.len),
            gpu.describe()
        ),
    }
    if resume
        .as_ref()
        .is_some_and(|c| c.progress.epochs_done >= settings.epochs)
    {
        println!(
            "{} has finished its {} epochs; pass --epochs N to train further",
            out.display(),
            settings.epochs
        );
        return Ok(ExitCode::SUCCESS);
    }
    let opts = TrainOptions {
        out: out.clone(),
        progress: !args.quiet,
        max_steps: args.max_steps,
        stop: Some(stop_on_signal()?),
        steps_per_submit: args
            .steps_per_submit
            .unwrap_or_else(|| gpu.default_steps_per_submit()),
    };
    let report = train(&gpu, &settings, &opts, &source, resume)?;
    match report.finish {
        Finish::Completed => {
            println!("run written to {}", out.display());
            Ok(ExitCode::SUCCESS)
        }
        Finish::Stopped { step } => {
            println!(
                "stopped after step {step}; checkpoint written. Continue with: vae train --resume {}",
                out.display()
            );
            let interrupted = opts.stop.is_some_and(|s| s.load(Ordering::SeqCst));
            Ok(if interrupted {
                ExitCode::from(130)
            } else {
                ExitCode::SUCCESS
            })
        }
    }
}
