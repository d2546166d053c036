//! `vae train`: train a VAE on the shipped data, a named dataset or files.

use std::path::PathBuf;

use anyhow::bail;
use clap::{Args, ValueEnum};

use super::DeviceArgs;
use crate::data::load_sources;
use crate::gpu::Gpu;
use crate::kernels::Activation;
use crate::kernels::adam::AdamConfig;
use crate::kernels::elbo::Likelihood;
use crate::model::VaeConfig;
use crate::train::run::{TrainOptions, train};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LikelihoodArg {
    Bernoulli,
    /// Gaussian with a fixed σ (--sigma).
    Gaussian,
    /// Gaussian with a learned per-pixel log-variance.
    GaussianLearned,
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
    #[arg(long, default_value_t = 10)]
    pub epochs: usize,
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
    /// Read the loss back every this many steps.
    #[arg(long, default_value_t = 50)]
    pub log_every: u64,
    /// Run directory (config.json, metrics.jsonl).
    #[arg(long, default_value = "runs/default")]
    pub out: PathBuf,
    /// No progress bar (per-epoch lines only).
    #[arg(long)]
    pub quiet: bool,
    #[command(flatten)]
    pub device: DeviceArgs,
}

impl TrainArgs {
    /// Rejects impossible settings up front, naming the allowed range.
    fn validate(&self) -> anyhow::Result<()> {
        let checks: [(bool, &str); 8] = [
            (self.batch >= 1, "--batch must be at least 1"),
            (self.latent >= 1, "--latent must be at least 1"),
            (self.epochs >= 1, "--epochs must be at least 1"),
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
        ];
        for (ok, msg) in checks {
            if !ok {
                bail!("{msg}");
            }
        }
        Ok(())
    }
}

pub fn run(args: &TrainArgs) -> anyhow::Result<()> {
    args.validate()?;
    // Every data error is raised here, before a device is opened.
    let source = load_sources(&args.data, args.test_data.as_deref())?;
    let gpu = Gpu::new(&args.device.request())?;
    let likelihood = match args.likelihood {
        LikelihoodArg::Bernoulli => Likelihood::Bernoulli,
        LikelihoodArg::Gaussian => Likelihood::Gaussian { sigma: args.sigma },
        LikelihoodArg::GaussianLearned => Likelihood::GaussianLearned { shared: true },
    };
    let opts = TrainOptions {
        model: VaeConfig {
            input: source.train.dim(),
            hidden: args.hidden.clone(),
            latent: args.latent,
            act: args.activation,
            likelihood,
        },
        epochs: args.epochs,
        batch: args.batch,
        adam: AdamConfig {
            lr: args.lr,
            ..AdamConfig::default()
        },
        seed: args.seed,
        beta: args.beta,
        kl_warmup: args.kl_warmup,
        log_every: args.log_every,
        out: args.out.clone(),
        progress: !args.quiet,
    };
    println!(
        "training {}-{}-{} VAE on {} ({} train, {} test) with {}",
        opts.model.input,
        args.hidden
            .iter()
            .map(|h| h.to_string())
            .collect::<Vec<_>>()
            .join("-"),
        args.latent,
        source.name,
        source.train.len,
        source.test.as_ref().map_or(0, |t| t.len),
        gpu.describe()
    );
    train(&gpu, &opts, &source)?;
    println!("run written to {}", args.out.display());
    Ok(())
}
