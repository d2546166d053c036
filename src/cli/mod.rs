//! The `vae` command line.

mod bench;
mod devices;
mod eval;
mod pictures;
mod train;

use clap::{Args, Parser, Subcommand};

use anyhow::bail;

use crate::data::{Dataset, load_sources};
use crate::gpu::{AdapterRequest, BackendChoice};
use crate::train::TrainSettings;
use crate::train::checkpoint::describe;

#[derive(Parser)]
#[command(
    name = "vae",
    version,
    about = "Variational autoencoders on any GPU (wgpu + WGSL)"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// List every adapter (index, backend, name, type, driver) and its compute limits.
    Devices(DeviceArgs),
    /// Train a VAE (default: 784-400-20 on the shipped 5,000 MNIST images).
    Train(Box<train::TrainArgs>),
    /// Evaluate a run: test ELBO, importance-sampled log p(x), active units.
    Eval(eval::EvalArgs),
    /// Decode z ~ N(0, I) into a grid of samples (PNG).
    Sample(pictures::SampleArgs),
    /// Originals above their reconstructions (PNG).
    Reconstruct(pictures::ReconstructArgs),
    /// Decoded points along the line and the great circle between two encoded items (PNG).
    Interpolate(pictures::InterpolateArgs),
    /// One row per latent dimension, varied around an item's posterior mean (PNG).
    Traverse(pictures::TraverseArgs),
    /// Scatter of posterior means coloured by label (PNG).
    Latent(pictures::LatentArgs),
    /// Loss curves of a run from its metrics (PNG).
    Plot(pictures::PlotArgs),
    /// Time warm training steps of the reference model (samples/s, ms/step, start-up).
    Bench(bench::BenchArgs),
}

/// Adapter selection, shared by every command that opens a device.
#[derive(Args, Clone, Debug, Default)]
pub struct DeviceArgs {
    /// Graphics API to use.
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
    pub backend: BackendChoice,
    /// Adapter index (as listed by `vae devices`) or a substring of its name.
    #[arg(long)]
    pub adapter: Option<String>,
    /// Use a software adapter (lavapipe/llvmpipe, WARP).
    #[arg(long)]
    pub software: bool,
}

impl DeviceArgs {
    pub fn request(&self) -> AdapterRequest {
        AdapterRequest {
            backend: self.backend,
            adapter: self.adapter.clone(),
            software: self.software,
        }
    }
}

pub fn run(cli: Cli) -> anyhow::Result<std::process::ExitCode> {
    match cli.command {
        Command::Devices(args) => devices::run(&args).map(|()| std::process::ExitCode::SUCCESS),
        Command::Train(args) => train::run(&args),
        Command::Eval(args) => eval::run(&args).map(|()| std::process::ExitCode::SUCCESS),
        Command::Sample(args) => pictures::sample(&args).map(|()| std::process::ExitCode::SUCCESS),
        Command::Reconstruct(args) => {
            pictures::reconstruct(&args).map(|()| std::process::ExitCode::SUCCESS)
        }
        Command::Interpolate(args) => {
            pictures::interpolate(&args).map(|()| std::process::ExitCode::SUCCESS)
        }
        Command::Traverse(args) => {
            pictures::traverse(&args).map(|()| std::process::ExitCode::SUCCESS)
        }
        Command::Latent(args) => pictures::latent(&args).map(|()| std::process::ExitCode::SUCCESS),
        Command::Plot(args) => pictures::plot(&args).map(|()| std::process::ExitCode::SUCCESS),
        Command::Bench(args) => bench::run(&args).map(|()| std::process::ExitCode::SUCCESS),
    }
}

/// The data a trained run is evaluated or drawn on, with a name for messages: `spec` (its test
/// split, or all of it), else the run's own test data, else (unless `need_test`) its training
/// data. Refused if its items are not the size the model takes.
pub(crate) fn run_data(
    spec: Option<&str>,
    s: &TrainSettings,
    need_test: bool,
) -> anyhow::Result<(String, Dataset)> {
    let (name, set) = match spec {
        Some(spec) => {
            let src = load_sources(spec, None)?;
            (spec.to_string(), src.test.unwrap_or(src.train))
        }
        None => {
            let src = load_sources(&s.data, s.test_data.as_deref())?;
            let name = s
                .test_data
                .clone()
                .unwrap_or(format!("{} (test split)", s.data));
            match src.test {
                Some(test) => (name, test),
                None if need_test => bail!("`{}` has no test split: pass --data", s.data),
                None => (s.data.clone(), src.train),
            }
        }
    };
    if set.dim() != s.model.input {
        bail!(
            "{name}: items have {} pixels, the model ({}) expects {}",
            set.dim(),
            describe(s),
            s.model.input
        );
    }
    Ok((name, set))
}
