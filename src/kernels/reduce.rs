//! Wrapper for `shaders/reduce.wgsl`: column sums and two-pass (squared) sums.

use bytemuck::{Pod, Zeroable};

use super::{check_len, compose};
use crate::gpu::{Binding, Dispatch, Gpu, Kernel, Result, Slot, View};

const WG: u32 = 256;
const ITEMS: u32 = 16;
const SLOTS: &[Slot] = &[Slot::Uniform, Slot::Read, Slot::ReadWrite, Slot::ReadWrite];

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    rows: u32,
    cols: u32,
    len: u32,
    _pad: u32,
}

/// What a two-pass sum adds up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SumOf {
    Values,
    Squares,
}

pub struct ReduceKernels {
    column_sums: [Kernel; 2],
    partial: [Kernel; 2],
    finish: [Kernel; 2],
}

/// The two dispatches of a sum plus the scratch buffer of partials they share.
pub struct SumDispatches {
    pub partial: Dispatch,
    pub finish: Dispatch,
    pub partials: View,
}

impl SumDispatches {
    pub fn dispatches(&self) -> [&Dispatch; 2] {
        [&self.partial, &self.finish]
    }
}

impl ReduceKernels {
    pub fn new(gpu: &Gpu) -> Result<Self> {
        let src = compose("reduce.wgsl");
        let build = |entry: &str, square: bool, acc: bool| {
            let label = format!(
                "reduce.{entry}{}{}",
                if square { ".sq" } else { "" },
                if acc { ".acc" } else { "" }
            );
            gpu.kernel(
                &label,
                &src,
                entry,
                SLOTS,
                &[
                    ("SQUARE", square as u8 as f64),
                    ("ACCUMULATE", acc as u8 as f64),
                ],
            )
        };
        Ok(Self {
            column_sums: [
                build("column_sums", false, false)?,
                build("column_sums", false, true)?,
            ],
            partial: [
                build("partial_sums", false, false)?,
                build("partial_sums", true, false)?,
            ],
            finish: [
                build("finish_sum", false, false)?,
                build("finish_sum", false, true)?,
            ],
        })
    }

    /// `out[c] = Σ_r x[r·cols + c]` (or `+=` with `accumulate`): the bias gradient of a dense
    /// layer from its output gradient.
    pub fn column_sums(
        &self,
        gpu: &Gpu,
        rows: u32,
        cols: u32,
        x: &View,
        out: &View,
        accumulate: bool,
    ) -> Result<Dispatch> {
        let kernel = &self.column_sums[accumulate as usize];
        check_len(&kernel.label, "x", x, rows as u64 * cols as u64)?;
        check_len(&kernel.label, "out", out, cols as u64)?;
        let params = gpu.uniform(
            &kernel.label,
            &Params {
                rows,
                cols,
                len: 0,
                _pad: 0,
            },
        );
        gpu.dispatch(
            kernel,
            &[
                Binding::Uniform(&params),
                Binding::Storage(x),
                Binding::Storage(out),
                Binding::Unused,
            ],
            gpu.grid_1d(cols.div_ceil(WG)),
        )
    }

    /// `out[0] = Σ x[i]` or `Σ x[i]²` over `len` elements in two dispatches; with `running`,
    /// also `running[0] += out[0]` (an on-device accumulator read back only when logging).
    pub fn sum(
        &self,
        gpu: &Gpu,
        of: SumOf,
        len: u32,
        x: &View,
        out: &View,
        running: Option<&View>,
    ) -> Result<SumDispatches> {
        let groups = len.div_ceil(WG * ITEMS).max(1);
        let partial_kernel = &self.partial[(of == SumOf::Squares) as usize];
        let finish_kernel = &self.finish[running.is_some() as usize];
        check_len(&partial_kernel.label, "x", x, len as u64)?;
        check_len(&finish_kernel.label, "out", out, 1)?;
        let partials = gpu.zeros("reduce.partials", groups as u64)?;
        let p1 = gpu.uniform(
            "reduce.partial",
            &Params {
                rows: 0,
                cols: 0,
                len,
                _pad: 0,
            },
        );
        let p2 = gpu.uniform(
            "reduce.finish",
            &Params {
                rows: 0,
                cols: 0,
                len: groups,
                _pad: 0,
            },
        );
        let partial = gpu.dispatch(
            partial_kernel,
            &[
                Binding::Uniform(&p1),
                Binding::Storage(x),
                Binding::Storage(&partials),
                Binding::Unused,
            ],
            gpu.grid_1d(groups),
        )?;
        let running = running.map_or(Binding::Unused, Binding::Storage);
        let finish = gpu.dispatch(
            finish_kernel,
            &[
                Binding::Uniform(&p2),
                Binding::Storage(&partials),
                Binding::Storage(out),
                running,
            ],
            [1, 1, 1],
        )?;
        Ok(SumDispatches {
            partial,
            finish,
            partials,
        })
    }
}
