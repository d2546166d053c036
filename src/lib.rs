//! vae-wgpu: a variational autoencoder engine whose numeric work runs as WGSL compute shaders.
//!
//! - [`gpu`]: adapter choice, buffers, pipelines, recorded dispatches.
//! - [`kernels`]: one Rust wrapper per `shaders/*.wgsl` family.
//! - [`cpu`]: the plain-Rust reference every kernel is tested against.

pub mod cli;
pub mod cpu;
pub mod data;
pub mod eval;
pub mod gpu;
pub mod kernels;
pub mod model;
pub mod train;
