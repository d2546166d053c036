//! The device layer: adapter choice, buffers, pipelines and recorded dispatches.
//!
//! Everything here is created once and reused. A training step is a list of [`Dispatch`]es
//! recorded into one compute pass; nothing on that path reads back to the host.

mod buffers;
mod context;
mod kernel;
mod profile;
mod readback;
mod tune;

pub use buffers::{ParamWrite, View};
pub use context::{
    AdapterRequest, BackendChoice, ENGINE_NEEDS, EngineNeeds, Gpu, choose_adapter, enumerate,
    is_software, new_instance,
};
pub use kernel::{Binding, Dispatch, Kernel, Slot, StepBatch, TexelCopy};
pub use readback::{AsyncReader, Wait};
pub use tune::{TuneCache, TuneEntry};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum GpuError {
    #[error(
        "no GPU adapter found on backend(s) {backends}.\n\
         On Linux without a GPU, install Mesa's software Vulkan driver: \
         `apt-get install mesa-vulkan-drivers` (Debian/Ubuntu) or `dnf install mesa-vulkan-drivers` (Fedora).\n\
         With a GPU, install its Vulkan driver (or use --backend gl)."
    )]
    NoAdapter { backends: String },
    #[error(
        "no software adapter (lavapipe/llvmpipe, WARP) found; adapters present:\n{listing}\n\
         On Linux install `mesa-vulkan-drivers`."
    )]
    NoSoftwareAdapter { listing: String },
    #[error("no adapter matches `{query}`; adapters present:\n{listing}")]
    AdapterNotFound { query: String, listing: String },
    #[error("could not open a device on {adapter}: {reason}")]
    Device { adapter: String, reason: String },
    #[error(
        "{what} needs {limit} >= {need}, but adapter {adapter} offers {have}; \
         choose another adapter (`vae devices`) or a smaller model/batch"
    )]
    AdapterTooSmall {
        adapter: String,
        what: String,
        limit: &'static str,
        need: u64,
        have: u64,
    },
    #[error(
        "{what} needs {need} bytes in one binding, but {adapter} allows {have} ({limit}): {advice}"
    )]
    DoesNotFit {
        adapter: String,
        what: String,
        need: u64,
        limit: &'static str,
        have: u64,
        advice: String,
    },
    #[error("shader `{label}` failed to compile on this adapter: {reason}")]
    Shader { label: String, reason: String },
    #[error("kernel `{kernel}`: {reason}")]
    Shape { kernel: String, reason: String },
    #[error("GPU error during {during}: {reason}")]
    Runtime { during: String, reason: String },
}

pub type Result<T, E = GpuError> = std::result::Result<T, E>;
