//! Wrapper for `shaders/activation.wgsl`: elementwise activation forward and backward.

use bytemuck::{Pod, Zeroable};

use super::{Activation, check_len, compose};
use crate::gpu::{Binding, Dispatch, Gpu, Kernel, Result, Slot, View};

const WG: u32 = 256;
const SLOTS: &[Slot] = &[Slot::Uniform, Slot::Read, Slot::Read, Slot::ReadWrite];

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    len: u32,
    kind: u32,
    _pad: [u32; 2],
}

pub struct ActivationKernels {
    forward: Kernel,
    backward: Kernel,
}

impl ActivationKernels {
    pub fn new(gpu: &Gpu) -> Result<Self> {
        let src = compose("activation.wgsl");
        Ok(Self {
            forward: gpu.kernel("activation.forward", &src, "forward", SLOTS, &[])?,
            backward: gpu.kernel("activation.backward", &src, "backward", SLOTS, &[])?,
        })
    }

    fn bind(
        &self,
        gpu: &Gpu,
        kernel: &Kernel,
        act: Activation,
        inputs: [&View; 2],
        out: &View,
    ) -> Result<Dispatch> {
        let len = out.len;
        for (name, v) in [("x", inputs[0]), ("dy", inputs[1])] {
            check_len(&kernel.label, name, v, len)?;
        }
        let params = gpu.uniform(
            &kernel.label,
            &Params {
                len: len as u32,
                kind: act.id(),
                _pad: [0; 2],
            },
        );
        gpu.dispatch(
            kernel,
            &[
                Binding::Uniform(&params),
                Binding::Storage(inputs[0]),
                Binding::Storage(inputs[1]),
                Binding::Storage(out),
            ],
            gpu.grid_1d((len as u32).div_ceil(WG)),
        )
    }

    /// `y = act(x)` over `y.len` elements.
    pub fn forward(&self, gpu: &Gpu, act: Activation, x: &View, y: &View) -> Result<Dispatch> {
        self.bind(gpu, &self.forward, act, [x, x], y)
    }

    /// `dx = dy * act'(x)` over `dx.len` elements, `x` the pre-activation.
    pub fn backward(
        &self,
        gpu: &Gpu,
        act: Activation,
        x: &View,
        dy: &View,
        dx: &View,
    ) -> Result<Dispatch> {
        self.bind(gpu, &self.backward, act, [x, dy], dx)
    }
}
