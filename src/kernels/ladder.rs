//! Wrapper for `shaders/ladder.wgsl`: the ladder VAE's precision-weighted posterior and its
//! gradients, elementwise. The f64 twins are [`crate::cpu::ladder::combine`] and
//! [`crate::cpu::ladder::combine_grads`].

use bytemuck::{Pod, Zeroable};

use super::{check_lens, compose};
use crate::gpu::{Binding, Dispatch, Gpu, GpuError, Kernel, Result, Slot, View};

const WG: u32 = 256;
/// params, mu_hat, lv_hat, mu_p, lv_p, a, b, da, db.
const SLOTS: &[Slot] = &[
    Slot::Uniform,
    Slot::Read,
    Slot::Read,
    Slot::Read,
    Slot::Read,
    Slot::ReadWrite,
    Slot::ReadWrite,
    Slot::ReadWrite,
    Slot::ReadWrite,
];

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    len: u32,
    _pad: [u32; 3],
}

/// The two Gaussians a top-down layer combines, [R, L] each.
pub struct LadderInputs<'a> {
    /// Bottom-up, from the data.
    pub mu_hat: &'a View,
    pub lv_hat: &'a View,
    /// Top-down, from the layer above.
    pub mu_p: &'a View,
    pub lv_p: &'a View,
}

/// The gradient buffers of [`LadderKernels::grads`], [R, L] each.
pub struct LadderGrads<'a> {
    /// ∂loss/∂μ_q and ∂loss/∂logσ²_q (in).
    pub d_mu_q: &'a View,
    pub d_lv_q: &'a View,
    /// Written.
    pub d_mu_hat: &'a View,
    pub d_lv_hat: &'a View,
    /// Added to.
    pub d_mu_p: &'a View,
    pub d_lv_p: &'a View,
}

pub struct LadderKernels {
    combine: Kernel,
    grads_hat: Kernel,
    grads_prior: Kernel,
}

impl LadderKernels {
    pub fn new(gpu: &Gpu) -> Result<Self> {
        let src = compose("ladder.wgsl");
        let kernel = |entry: &str| gpu.kernel(&format!("ladder.{entry}"), &src, entry, SLOTS, &[]);
        Ok(Self {
            combine: kernel("combine")?,
            grads_hat: kernel("combine_grads_hat")?,
            grads_prior: kernel("combine_grads_prior")?,
        })
    }

    /// Checks `len` elements in every buffer, that no output shares a buffer with an input (one
    /// buffer cannot be bound read-only and read-write in a dispatch) and that outputs do not
    /// overlap (they may be disjoint ranges of one buffer).
    fn check(
        &self,
        label: &str,
        len: u64,
        inputs: &LadderInputs,
        extra_inputs: &[(&str, &View)],
        outputs: &[(&str, &View)],
    ) -> Result<()> {
        let mut ins = vec![
            ("mu_hat", inputs.mu_hat),
            ("lv_hat", inputs.lv_hat),
            ("mu_p", inputs.mu_p),
            ("lv_p", inputs.lv_p),
        ];
        ins.extend_from_slice(extra_inputs);
        let all: Vec<(&str, &View, u64)> = ins
            .iter()
            .chain(outputs)
            .map(|&(n, v)| (n, v, len))
            .collect();
        check_lens(label, &all)?;
        let error = |reason: String| GpuError::Shape {
            kernel: label.into(),
            reason,
        };
        for (i, &(name, out)) in outputs.iter().enumerate() {
            if let Some((input, _)) = ins.iter().find(|(_, v)| v.buffer == out.buffer) {
                return Err(error(format!(
                    "output `{name}` shares a buffer with input `{input}`"
                )));
            }
            let disjoint = |w: &View| out.offset + len <= w.offset || w.offset + len <= out.offset;
            let overlapping = outputs[..i]
                .iter()
                .find(|(_, w)| w.buffer == out.buffer && !disjoint(w));
            if let Some((other, _)) = overlapping {
                return Err(error(format!("outputs `{name}` and `{other}` overlap")));
            }
        }
        Ok(())
    }

    fn dispatch(
        &self,
        gpu: &Gpu,
        kernel: &Kernel,
        len: u64,
        inputs: &LadderInputs,
        io: [&View; 4],
    ) -> Result<Dispatch> {
        let params = gpu.uniform(
            &kernel.label,
            &Params {
                len: len as u32,
                _pad: [0; 3],
            },
        );
        let [a, b, da, db] = io;
        gpu.dispatch(
            kernel,
            &[
                Binding::Uniform(&params),
                Binding::Storage(inputs.mu_hat),
                Binding::Storage(inputs.lv_hat),
                Binding::Storage(inputs.mu_p),
                Binding::Storage(inputs.lv_p),
                Binding::Storage(a),
                Binding::Storage(b),
                Binding::Storage(da),
                Binding::Storage(db),
            ],
            gpu.grid_1d((len as u32).div_ceil(WG)),
        )
    }

    /// (μ_q, logσ²_q) of `len` elements into `mu_q` and `lv_q`.
    pub fn combine(
        &self,
        gpu: &Gpu,
        len: u64,
        inputs: &LadderInputs,
        mu_q: &View,
        lv_q: &View,
    ) -> Result<Dispatch> {
        let label = &self.combine.label;
        self.check(label, len, inputs, &[], &[("mu_q", mu_q), ("lv_q", lv_q)])?;
        // `combine` does not touch `da` and `db`: the outputs stand in.
        self.dispatch(gpu, &self.combine, len, inputs, [mu_q, lv_q, mu_q, lv_q])
    }

    /// The backward: the bottom-up pair's gradients written, the prior's added to.
    pub fn grads(
        &self,
        gpu: &Gpu,
        len: u64,
        inputs: &LadderInputs,
        g: &LadderGrads,
    ) -> Result<[Dispatch; 2]> {
        let label = &self.grads_hat.label;
        self.check(
            label,
            len,
            inputs,
            &[("d_mu_q", g.d_mu_q), ("d_lv_q", g.d_lv_q)],
            &[
                ("d_mu_hat", g.d_mu_hat),
                ("d_lv_hat", g.d_lv_hat),
                ("d_mu_p", g.d_mu_p),
                ("d_lv_p", g.d_lv_p),
            ],
        )?;
        Ok([
            self.dispatch(
                gpu,
                &self.grads_hat,
                len,
                inputs,
                [g.d_mu_q, g.d_lv_q, g.d_mu_hat, g.d_lv_hat],
            )?,
            self.dispatch(
                gpu,
                &self.grads_prior,
                len,
                inputs,
                [g.d_mu_q, g.d_lv_q, g.d_mu_p, g.d_lv_p],
            )?,
        ])
    }
}
