//! Wrapper for `shaders/sample.wgsl`: the reparameterized sample z = μ + exp(½·logσ²)·ε with
//! ε ~ N(0, I) from Philox4x32-10, and its backward.
//!
//! ε depends only on (seed, step, stream, element) — see [`crate::cpu::philox`] — so the CPU can
//! reproduce any draw and the dispatch layout never changes the values.
//!
//! The generator state lives in one small storage buffer owned by the [`Sampler`],
//! `[seed_lo, seed_hi, step, 0]` (u32), shared by every dispatch the sampler hands out:
//! - per step from the host: [`Sampler::set_step`] (a `queue.write_buffer`; it takes effect at
//!   the next submit, so it cannot distinguish steps recorded into one submit);
//! - on the device: record [`Sampler::advance`] (step += 1) once per training step, which lets
//!   several steps share one submit (one extra ~50 µs dispatch on lavapipe).
//!
//! Independent uses of randomness under one seed and step take distinct `stream` values.

use bytemuck::{Pod, Zeroable};

use super::{check_len, compose};
use crate::gpu::{Binding, Dispatch, Gpu, GpuError, Kernel, ParamWrite, Result, Slot, View};

const WG: u32 = 64;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Shape {
    n: u32,
    per_sample: u32,
    samples: u32,
    stream: u32,
}

/// Shape of a reparameterized sample: μ and logσ² are [rows, cols]; z and ε are
/// [samples·rows, cols], sample row k·rows + b drawn around input row b.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SampleShape {
    pub rows: u32,
    pub cols: u32,
    /// K samples per input (1 for the plain VAE, K for IWAE).
    pub samples: u32,
}

impl SampleShape {
    pub fn per_sample(&self) -> u64 {
        self.rows as u64 * self.cols as u64
    }
    pub fn total(&self) -> u64 {
        self.per_sample() * self.samples as u64
    }
}

pub struct Sampler {
    raw_words: Kernel,
    uniforms: Kernel,
    forward: Kernel,
    backward: Kernel,
    advance: Kernel,
    rng: View,
}

impl Sampler {
    /// Compiles the kernels and creates the generator state at (seed, step 0).
    pub fn new(gpu: &Gpu, seed: u64) -> Result<Self> {
        let src = compose("sample.wgsl");
        use Slot::*;
        let test = [Uniform, Read, ReadWrite];
        let six = [Uniform, Read, Read, Read, ReadWrite, ReadWrite];
        Ok(Self {
            raw_words: gpu.kernel(
                "sample.raw_words",
                &src,
                "draws",
                &test,
                &[("AS_UNIFORM", 0.0)],
            )?,
            uniforms: gpu.kernel(
                "sample.uniforms",
                &src,
                "draws",
                &test,
                &[("AS_UNIFORM", 1.0)],
            )?,
            forward: gpu.kernel("sample.forward", &src, "reparam_forward", &six, &[])?,
            backward: gpu.kernel("sample.backward", &src, "reparam_backward", &six, &[])?,
            advance: gpu.kernel("sample.advance", &src, "advance", &[ReadWrite], &[])?,
            rng: gpu.upload("sample.rng", &state(seed, 0))?,
        })
    }

    /// The generator state buffer `[seed_lo, seed_hi, step, 0]`.
    pub fn rng(&self) -> &View {
        &self.rng
    }

    /// Sets (seed, step) from the host; takes effect at the next submit.
    pub fn set_state(&self, gpu: &Gpu, seed: u64, step: u32) {
        gpu.apply(&self.state_write(seed, step));
    }

    /// [`Sampler::set_state`]'s write, to apply or stage.
    pub fn state_write(&self, seed: u64, step: u32) -> ParamWrite {
        ParamWrite::new(&self.rng.buffer, self.rng.offset * 4, &state(seed, step))
    }

    /// Sets the step counter from the host; takes effect at the next submit.
    pub fn set_step(&self, gpu: &Gpu, step: u32) {
        gpu.queue.write_buffer(
            &self.rng.buffer,
            self.rng.offset * 4 + 8,
            bytemuck::bytes_of(&step),
        );
    }

    /// One invocation that adds 1 to the step counter on the device.
    pub fn advance(&self, gpu: &Gpu) -> Result<Dispatch> {
        gpu.dispatch(&self.advance, &[Binding::Storage(&self.rng)], [1, 1, 1])
    }

    fn grid(
        &self,
        gpu: &Gpu,
        kernel: &Kernel,
        elements: u64,
        invocations: u64,
    ) -> Result<[u32; 3]> {
        // Element indices are u32, and 4·block + 3 must not wrap either.
        if elements + 4 >= u32::MAX as u64 {
            return Err(GpuError::Shape {
                kernel: kernel.label.clone(),
                reason: format!("{elements} elements exceed the 32-bit element index"),
            });
        }
        Ok(gpu.grid_1d((invocations as u32).div_ceil(WG)))
    }

    fn test_entry(&self, gpu: &Gpu, kernel: &Kernel, stream: u32, out: &View) -> Result<Dispatch> {
        let n = out.len;
        let params = gpu.uniform(
            &kernel.label,
            &Shape {
                n: n as u32,
                per_sample: n.max(1) as u32,
                samples: 1,
                stream,
            },
        );
        let grid = self.grid(gpu, kernel, n, n.div_ceil(4))?;
        gpu.dispatch(
            kernel,
            &[
                Binding::Uniform(&params),
                Binding::Storage(&self.rng),
                Binding::Storage(out),
            ],
            grid,
        )
    }

    /// Writes the raw Philox word of elements 0..out.len (u32) of `stream`: for testing.
    pub fn raw_words(&self, gpu: &Gpu, stream: u32, out: &View) -> Result<Dispatch> {
        self.test_entry(gpu, &self.raw_words, stream, out)
    }

    /// Writes the uniforms in (0, 1) of elements 0..out.len (f32) of `stream`: for testing.
    pub fn uniforms(&self, gpu: &Gpu, stream: u32, out: &View) -> Result<Dispatch> {
        self.test_entry(gpu, &self.uniforms, stream, out)
    }

    fn check_shape(&self, kernel: &Kernel, shape: SampleShape) -> Result<()> {
        if shape.per_sample() == 0 || shape.samples == 0 {
            return Err(GpuError::Shape {
                kernel: kernel.label.clone(),
                reason: format!("empty sample shape {shape:?}"),
            });
        }
        Ok(())
    }

    /// z = μ + exp(½ logσ²)·ε, also writing ε (the backward needs it).
    /// μ, logσ²: [rows, cols]; z, ε: [samples·rows, cols].
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        gpu: &Gpu,
        shape: SampleShape,
        stream: u32,
        mu: &View,
        logvar: &View,
        z: &View,
        eps: &View,
    ) -> Result<Dispatch> {
        let k = &self.forward;
        self.check_shape(k, shape)?;
        for (name, v, need) in [
            ("mu", mu, shape.per_sample()),
            ("logvar", logvar, shape.per_sample()),
            ("z", z, shape.total()),
            ("eps", eps, shape.total()),
        ] {
            check_len(&k.label, name, v, need)?;
        }
        let params = gpu.uniform(
            &k.label,
            &Shape {
                n: shape.total() as u32,
                per_sample: shape.per_sample() as u32,
                samples: shape.samples,
                stream,
            },
        );
        let grid = self.grid(gpu, k, shape.total(), shape.total().div_ceil(4))?;
        gpu.dispatch(
            k,
            &[
                Binding::Uniform(&params),
                Binding::Storage(&self.rng),
                Binding::Storage(mu),
                Binding::Storage(logvar),
                Binding::Storage(z),
                Binding::Storage(eps),
            ],
            grid,
        )
    }

    /// dμ += Σₖ dz, dlogσ² += Σₖ dz·ε·½·exp(½ logσ²) (adds: they already hold the KL
    /// gradient). dz, ε: [samples·rows, cols]; logσ², dμ, dlogσ²: [rows, cols].
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &self,
        gpu: &Gpu,
        shape: SampleShape,
        dz: &View,
        eps: &View,
        logvar: &View,
        dmu: &View,
        dlogvar: &View,
    ) -> Result<Dispatch> {
        let k = &self.backward;
        self.check_shape(k, shape)?;
        for (name, v, need) in [
            ("dz", dz, shape.total()),
            ("eps", eps, shape.total()),
            ("logvar", logvar, shape.per_sample()),
            ("dmu", dmu, shape.per_sample()),
            ("dlogvar", dlogvar, shape.per_sample()),
        ] {
            check_len(&k.label, name, v, need)?;
        }
        let params = gpu.uniform(
            &k.label,
            &Shape {
                n: shape.per_sample() as u32,
                per_sample: shape.per_sample() as u32,
                samples: shape.samples,
                stream: 0,
            },
        );
        let grid = self.grid(gpu, k, shape.total(), shape.per_sample())?;
        gpu.dispatch(
            k,
            &[
                Binding::Uniform(&params),
                Binding::Storage(dz),
                Binding::Storage(eps),
                Binding::Storage(logvar),
                Binding::Storage(dmu),
                Binding::Storage(dlogvar),
            ],
            grid,
        )
    }
}

fn state(seed: u64, step: u32) -> [u32; 4] {
    [seed as u32, (seed >> 32) as u32, step, 0]
}
