//! The plain-Rust reference: every GPU kernel has its twin here, written for clarity, in f64.

pub mod activation;
pub mod adam;
pub mod batch;
pub mod conv;
pub mod elbo;
pub mod gauss_kl;
pub mod hvae;
pub mod iwae;
pub mod ladder;
pub mod matmul;
pub mod philox;
pub mod reduce;
pub mod sample;
pub mod vae;
