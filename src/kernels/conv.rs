//! Wrapper for `shaders/conv.wgsl`: 2-D convolution and transposed convolution (NCHW, f32,
//! dilation 1, the same stride and padding in both dimensions), forward and both gradients, as
//! implicit GEMMs on the matmul kernel's tiling; [`crate::cpu::conv`] is the f64 twin.
//!
//! Tensors (row-major): conv2d input `x` [N, C_in, H, W], weight `w` [C_out, C_in, KH, KW],
//! bias [C_out], output `y` [N, C_out, H_out, W_out] with H_out = ⌊(H + 2p − KH)/s⌋ + 1. The
//! transposed convolution (PyTorch's `ConvTranspose2d`) has weight [C_in, C_out, KH, KW] and
//! H_out = (H − 1)·s − 2p + KH + output_padding: it is the data gradient of the conv2d that maps
//! its output back to its input, so both are written onto one conv-direction geometry and share
//! the shader's three modes:
//!
//! | op | conv2d | transposed |
//! |---|---|---|
//! | forward | mode 0 (im2col gather) | mode 1 (data gradient) |
//! | backward data | mode 1 | mode 0 |
//! | backward weight | mode 2, A = dY, B = im2col(X) | mode 2, A = X, B = im2col(dY) |
//! | bias gradient | channel sums of dY | channel sums of dY |
//!
//! One [`Conv`] per [`ConvConfig`]: the mode, bias, activation and accumulation become override
//! constants of one compiled pipeline; [`Conv::bind`] checks a [`ConvShape`] and the buffers and
//! returns the dispatches (two for a weight gradient with a bias gradient).

use bytemuck::{Pod, Zeroable};

use super::{Activation, check_len, compose};
use crate::gpu::{Binding, Dispatch, Gpu, GpuError, Kernel, Result, Slot, View};

/// Rows × columns of the product per workgroup (as the tiled matmul).
const TILE: u32 = 64;

/// params, opa, opb, out, bias, aux.
const SLOTS: &[Slot] = &[
    Slot::Uniform,
    Slot::Read,
    Slot::Read,
    Slot::ReadWrite,
    Slot::Read,
    Slot::ReadWrite,
];

/// The sizes of one convolution layer. For a transposed convolution `c_in`, `h`, `w` describe
/// its input and `c_out` its output channels, as in PyTorch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConvShape {
    pub batch: u32,
    pub c_in: u32,
    pub h: u32,
    pub w: u32,
    pub c_out: u32,
    pub kh: u32,
    pub kw: u32,
    pub stride: u32,
    pub pad: u32,
    /// Transposed convolution only (PyTorch's `output_padding`, < stride): rows and columns
    /// added at the bottom and right of the output. Must be 0 for a plain convolution.
    pub output_pad: u32,
}

/// The convolution in the plain direction that both ops are written on: image [N, ci, h, w],
/// columns [N, co, oh, ow], weight [co, ci, kh, kw].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Geometry {
    batch: u32,
    ci: u32,
    h: u32,
    w: u32,
    co: u32,
    oh: u32,
    ow: u32,
    kh: u32,
    kw: u32,
    stride: u32,
    pad: u32,
}

impl ConvShape {
    /// A square-kernel conv2d (or, with [`ConvShape::transposed`], its transposed twin).
    #[allow(clippy::too_many_arguments)]
    pub fn square(
        batch: u32,
        c_in: u32,
        hw: u32,
        c_out: u32,
        k: u32,
        stride: u32,
        pad: u32,
        output_pad: u32,
    ) -> Self {
        Self {
            batch,
            c_in,
            h: hw,
            w: hw,
            c_out,
            kh: k,
            kw: k,
            stride,
            pad,
            output_pad,
        }
    }

    /// Output height and width of the conv2d (`transposed` false) or transposed convolution,
    /// or why there is none.
    pub fn out_hw(&self, transposed: bool) -> std::result::Result<(u32, u32), String> {
        let s = *self;
        for (name, v) in [
            ("batch", s.batch),
            ("c_in", s.c_in),
            ("h", s.h),
            ("w", s.w),
            ("c_out", s.c_out),
            ("kh", s.kh),
            ("kw", s.kw),
            ("stride", s.stride),
        ] {
            if v == 0 {
                return Err(format!("{name} = 0 in {s:?}"));
            }
        }
        let (p, st) = (s.pad as i64, s.stride as i64);
        let out = |len: u32, k: u32| -> std::result::Result<u32, String> {
            let (len, k) = (len as i64, k as i64);
            let o = if transposed {
                (len - 1) * st - 2 * p + k + s.output_pad as i64
            } else {
                if len + 2 * p < k {
                    return Err(format!(
                        "kernel {k} larger than the padded input {len} + 2·{p}"
                    ));
                }
                (len + 2 * p - k) / st + 1
            };
            if o < 1 {
                return Err(format!("output size {o} < 1"));
            }
            if o > i32::MAX as i64 || len + 2 * p + k > i32::MAX as i64 {
                return Err("sizes overflow 32-bit indices".into());
            }
            Ok(o as u32)
        };
        if transposed {
            if s.output_pad >= s.stride {
                return Err(format!(
                    "output_pad {} must be smaller than the stride {}",
                    s.output_pad, s.stride
                ));
            }
        } else if s.output_pad != 0 {
            return Err("output_pad is for transposed convolutions only".into());
        }
        Ok((out(s.h, s.kh)?, out(s.w, s.kw)?))
    }

    /// Elements of the input, weight, output and bias.
    pub fn input_len(&self) -> u64 {
        self.batch as u64 * self.c_in as u64 * self.h as u64 * self.w as u64
    }

    pub fn weight_len(&self) -> u64 {
        self.c_out as u64 * self.c_in as u64 * self.kh as u64 * self.kw as u64
    }

    /// Elements of the output (0 if the shape has none).
    pub fn output_len(&self, transposed: bool) -> u64 {
        self.out_hw(transposed).map_or(0, |(oh, ow)| {
            self.batch as u64 * self.c_out as u64 * oh as u64 * ow as u64
        })
    }

    fn geometry(&self, transposed: bool) -> std::result::Result<Geometry, String> {
        let (oh, ow) = self.out_hw(transposed)?;
        for (what, len) in [
            ("input", self.input_len()),
            ("weight", self.weight_len()),
            ("output", self.output_len(transposed)),
        ] {
            if len > u32::MAX as u64 {
                return Err(format!("{what} of {len} elements overflows 32-bit indices"));
            }
        }
        let s = self;
        Ok(if transposed {
            Geometry {
                batch: s.batch,
                ci: s.c_out,
                h: oh,
                w: ow,
                co: s.c_in,
                oh: s.h,
                ow: s.w,
                kh: s.kh,
                kw: s.kw,
                stride: s.stride,
                pad: s.pad,
            }
        } else {
            Geometry {
                batch: s.batch,
                ci: s.c_in,
                h: s.h,
                w: s.w,
                co: s.c_out,
                oh,
                ow,
                kh: s.kh,
                kw: s.kw,
                stride: s.stride,
                pad: s.pad,
            }
        })
    }
}

/// Which pass of a layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConvOp {
    /// `y = act(conv(x, w) + bias)`.
    Forward,
    /// `dx` from `dy` and `w`.
    BackwardData,
    /// `dw` (and, with `bias`, `db`) from `x` and `dy`.
    BackwardWeight,
}

/// One pipeline's configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConvConfig {
    /// PyTorch `ConvTranspose2d` instead of `Conv2d`.
    pub transposed: bool,
    pub op: ConvOp,
    /// Forward: add `bias[c_out]`. Backward weight: also write the bias gradient `db`.
    pub bias: bool,
    /// Forward only: applied after the bias (`act_forward` of common.wgsl).
    pub act: Activation,
    /// Add to the output(s) instead of overwriting them.
    pub accumulate: bool,
    /// Forward only: also store the pre-activation (after the bias) in `aux`, for the backward.
    pub store_pre: bool,
    /// Backward data only: multiply by the derivative of this activation at the pre-activation
    /// `aux` (of the data gradient's shape): the gradient flows on into the layer below.
    pub grad_act: Option<Activation>,
    /// The image tensor (conv2d's input, the transposed convolution's output) is [N, H, W, C],
    /// as pixels are stored, instead of NCHW: for a model's first and last layers.
    pub channels_last: bool,
    /// Which kernel computes the pass ([`ConvConfig::variants`] lists the pass's).
    pub variant: ConvVariant,
}

/// How a pass is computed (see `shaders/conv.wgsl`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConvVariant {
    /// The implicit GEMM on the matmul's 64×64 tiling: every pass.
    Gemm,
    /// The data-gradient gather over the taps that land on each pixel, or the weight gradient
    /// with a workgroup per weight.
    Direct,
    /// The data gradient as a dense GEMM into a column buffer (no zero taps), then the gather
    /// of each pixel's taps from it (col2im).
    Columns,
}

impl ConvVariant {
    pub fn name(self) -> &'static str {
        match self {
            ConvVariant::Gemm => "gemm",
            ConvVariant::Direct => "direct",
            ConvVariant::Columns => "columns",
        }
    }
}

impl ConvConfig {
    pub fn new(transposed: bool, op: ConvOp) -> Self {
        Self {
            transposed,
            op,
            bias: false,
            act: Activation::Identity,
            accumulate: false,
            store_pre: false,
            grad_act: None,
            channels_last: false,
            variant: ConvVariant::Gemm,
        }
    }

    /// The variants that compute this pass: the forward im2col GEMM has one; the data-gradient
    /// gather (conv2d's data gradient, the transposed forward) three; the weight gradient two.
    pub fn variants(&self) -> &'static [ConvVariant] {
        use ConvVariant::*;
        match self.mode() {
            0 => &[Gemm],
            1 => &[Gemm, Direct, Columns],
            _ => &[Gemm, Direct],
        }
    }

    pub fn describe(&self) -> String {
        let mut s = format!(
            "{}.{}",
            if self.transposed {
                "conv_t2d"
            } else {
                "conv2d"
            },
            match self.op {
                ConvOp::Forward => "fwd",
                ConvOp::BackwardData => "dx",
                ConvOp::BackwardWeight => "dw",
            }
        );
        if self.bias {
            s += if self.op == ConvOp::Forward {
                "+bias"
            } else {
                "+db"
            };
        }
        if self.act != Activation::Identity {
            s += &format!("+{:?}", self.act).to_lowercase();
        }
        if self.store_pre {
            s += "+pre";
        }
        if let Some(a) = self.grad_act {
            s += &format!("*d{a:?}").to_lowercase();
        }
        if self.channels_last {
            s += ".nhwc";
        }
        if self.variant != ConvVariant::Gemm {
            s += &format!(".{}", self.variant.name());
        }
        if self.accumulate {
            s += "+=";
        }
        s
    }

    /// Whether `aux` is bound (read or written).
    fn has_aux(&self) -> bool {
        self.store_pre || self.grad_act.is_some()
    }

    /// The shader's mode (see `shaders/conv.wgsl`).
    fn mode(&self) -> u32 {
        match (self.op, self.transposed) {
            (ConvOp::Forward, false) | (ConvOp::BackwardData, true) => 0,
            (ConvOp::BackwardData, false) | (ConvOp::Forward, true) => 1,
            (ConvOp::BackwardWeight, _) => 2,
        }
    }

    /// Names of the two inputs and the output of [`Conv::bind`], and of the bias slot.
    pub fn names(&self) -> [&'static str; 4] {
        match self.op {
            ConvOp::Forward => ["x", "w", "y", "bias"],
            ConvOp::BackwardData => ["dy", "w", "dx", "bias"],
            ConvOp::BackwardWeight => ["x", "dy", "dw", "db"],
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    batch: u32,
    ci: u32,
    h: u32,
    w: u32,
    co: u32,
    oh: u32,
    ow: u32,
    kh: u32,
    kw: u32,
    stride: u32,
    pad: u32,
    m: u32,
    n: u32,
    k: u32,
    tiles_n: u32,
    tiles: u32,
}

impl Params {
    fn of(g: &Geometry) -> Self {
        Self {
            batch: g.batch,
            ci: g.ci,
            h: g.h,
            w: g.w,
            co: g.co,
            oh: g.oh,
            ow: g.ow,
            kh: g.kh,
            kw: g.kw,
            stride: g.stride,
            pad: g.pad,
            m: 0,
            n: 0,
            k: 0,
            tiles_n: 0,
            tiles: 0,
        }
    }
}

/// The dispatches of one bound pass, to be run in order.
pub struct ConvDispatch {
    pub dispatches: Vec<Dispatch>,
}

impl ConvDispatch {
    pub fn dispatches(&self) -> Vec<&Dispatch> {
        self.dispatches.iter().collect()
    }
}

/// One compiled convolution pass.
pub struct Conv {
    cfg: ConvConfig,
    label: String,
    gemm: Kernel,
    /// The columns variant's GEMM into the column buffer (`gemm` is then the gather from it).
    columns: Option<Kernel>,
    /// The bias gradient (`BackwardWeight` with `bias`).
    sums: Option<Kernel>,
}

impl std::fmt::Debug for Conv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Conv({})", self.label)
    }
}

impl Conv {
    pub fn new(gpu: &Gpu, cfg: ConvConfig) -> Result<Self> {
        let label = cfg.describe();
        let err = |reason: &str| GpuError::Shape {
            kernel: label.clone(),
            reason: reason.into(),
        };
        if cfg.op != ConvOp::Forward && cfg.act != Activation::Identity {
            return Err(err("an activation is fused into the forward pass only"));
        }
        if cfg.store_pre && cfg.op != ConvOp::Forward {
            return Err(err("the pre-activation is stored by the forward pass only"));
        }
        if cfg.grad_act.is_some() && cfg.op != ConvOp::BackwardData {
            return Err(err(
                "an activation derivative is fused into the data gradient only",
            ));
        }
        if !cfg.variants().contains(&cfg.variant) {
            return Err(err(&format!(
                "this pass has no {} kernel (it has {:?})",
                cfg.variant.name(),
                cfg.variants()
            )));
        }
        if cfg.op == ConvOp::BackwardData && cfg.bias {
            return Err(err(
                "the data gradient has no bias (the bias gradient comes with BackwardWeight)",
            ));
        }
        let src = compose("conv.wgsl");
        let forward_bias = cfg.bias && cfg.op == ConvOp::Forward;
        let constants = [
            ("MODE", cfg.mode() as f64),
            ("HAS_BIAS", forward_bias as u8 as f64),
            ("ACT", cfg.act.id() as f64),
            ("ACCUMULATE", cfg.accumulate as u8 as f64),
            ("STORE_PRE", cfg.store_pre as u8 as f64),
            ("HAS_GRAD", cfg.grad_act.is_some() as u8 as f64),
            ("GRAD_ACT", cfg.grad_act.map_or(0, Activation::id) as f64),
            ("CHANNELS_LAST", cfg.channels_last as u8 as f64),
            (
                "FROM_COLUMNS",
                (cfg.variant == ConvVariant::Columns) as u8 as f64,
            ),
        ];
        let entry = match (cfg.variant, cfg.mode()) {
            (ConvVariant::Gemm, _) => "main",
            (ConvVariant::Direct, 1) | (ConvVariant::Columns, _) => "gather",
            (ConvVariant::Direct, _) => "direct_reduce",
        };
        let gemm = gpu.kernel(&label, &src, entry, SLOTS, &constants)?;
        // The columns variant's dense GEMM into the column buffer: no epilogue options.
        let columns = if cfg.variant == ConvVariant::Columns {
            let c = [("MODE", 3.0)];
            Some(gpu.kernel(&format!("{label}.gemm"), &src, "main", SLOTS, &c)?)
        } else {
            None
        };
        let sums = if cfg.bias && cfg.op == ConvOp::BackwardWeight {
            // The bias gradient sums dY, the image side of a transposed convolution.
            let dy_channels_last = cfg.channels_last && cfg.transposed;
            let c = [
                ("ACCUMULATE", cfg.accumulate as u8 as f64),
                ("SUMS_CHANNELS_LAST", dy_channels_last as u8 as f64),
            ];
            Some(gpu.kernel(&format!("{label}.bias"), &src, "channel_sums", SLOTS, &c)?)
        } else {
            None
        };
        Ok(Self {
            cfg,
            label,
            gemm,
            columns,
            sums,
        })
    }

    pub fn config(&self) -> &ConvConfig {
        &self.cfg
    }

    /// Binds one pass of `shape`. `inputs` and `output` by op (names as [`ConvConfig::names`]):
    /// - `Forward`: inputs `[x, w]`, output `y`, `bias` the bias (read; iff the config has one);
    /// - `BackwardData`: inputs `[dy, w]`, output `dx`, no `bias`;
    /// - `BackwardWeight`: inputs `[x, dy]`, output `dw`, `bias` receives `db` (iff the config
    ///   has a bias).
    ///
    /// Views may be longer than needed; outputs may not share a buffer with an input.
    pub fn bind(
        &self,
        gpu: &Gpu,
        shape: &ConvShape,
        inputs: [&View; 2],
        output: &View,
        bias: Option<&View>,
    ) -> Result<ConvDispatch> {
        self.bind_aux(gpu, shape, inputs, output, bias, None)
    }

    /// [`Conv::bind`] with the pre-activation `aux` (the output's shape) that a config with
    /// `store_pre` writes and one with `grad_act` reads.
    pub fn bind_aux(
        &self,
        gpu: &Gpu,
        shape: &ConvShape,
        inputs: [&View; 2],
        output: &View,
        bias: Option<&View>,
        aux: Option<&View>,
    ) -> Result<ConvDispatch> {
        let label = &self.label;
        let shape_err = |reason: String| GpuError::Shape {
            kernel: label.clone(),
            reason,
        };
        let cfg = &self.cfg;
        let t = cfg.transposed;
        let g = shape.geometry(t).map_err(shape_err)?;
        let (x_len, w_len, y_len) = (shape.input_len(), shape.weight_len(), shape.output_len(t));
        let [n_in0, n_in1, n_out, n_bias] = cfg.names();
        let (need0, need1, need_out) = match cfg.op {
            ConvOp::Forward => (x_len, w_len, y_len),
            ConvOp::BackwardData => (y_len, w_len, x_len),
            ConvOp::BackwardWeight => (x_len, y_len, w_len),
        };
        check_len(label, n_in0, inputs[0], need0)?;
        check_len(label, n_in1, inputs[1], need1)?;
        check_len(label, n_out, output, need_out)?;
        let bias = match (cfg.bias, bias) {
            (true, Some(v)) => {
                check_len(label, n_bias, v, shape.c_out as u64)?;
                Some(v.slice(0, shape.c_out as u64))
            }
            (true, None) => {
                return Err(shape_err(format!("the config has a bias: pass `{n_bias}`")));
            }
            (false, Some(_)) => {
                return Err(shape_err(format!(
                    "`{n_bias}` given, but the config has no bias"
                )));
            }
            (false, None) => None,
        };
        let writes: Vec<(&str, &View)> = match (&bias, cfg.op) {
            (Some(b), ConvOp::BackwardWeight) => vec![(n_out, output), (n_bias, b)],
            _ => vec![(n_out, output)],
        };
        for (name, v) in &writes {
            for (input, i) in [(n_in0, inputs[0]), (n_in1, inputs[1])] {
                if i.buffer == v.buffer {
                    return Err(shape_err(format!(
                        "output `{name}` shares a buffer with input `{input}`"
                    )));
                }
            }
        }
        if let (Some(b), ConvOp::Forward | ConvOp::BackwardData) = (&bias, cfg.op)
            && b.buffer == output.buffer
        {
            return Err(shape_err(format!(
                "output `{n_out}` shares a buffer with `bias`"
            )));
        }
        if let (Some(b), ConvOp::BackwardWeight) = (&bias, cfg.op) {
            let (o, ol, bo) = (output.offset, need_out, b.offset);
            if b.buffer == output.buffer && bo < o + ol && o < bo + shape.c_out as u64 {
                return Err(shape_err(format!(
                    "outputs `{n_out}` and `{n_bias}` overlap"
                )));
            }
        }

        let aux = match (cfg.has_aux(), aux) {
            (true, Some(v)) => {
                check_len(label, "aux", v, need_out)?;
                let v = v.slice(0, need_out);
                for (name, other) in [(n_in0, inputs[0]), (n_in1, inputs[1]), (n_out, output)] {
                    if other.buffer == v.buffer {
                        return Err(shape_err(format!("`aux` shares a buffer with `{name}`")));
                    }
                }
                Some(v)
            }
            (true, None) => {
                return Err(shape_err(
                    "the config stores or reads a pre-activation: pass `aux`".into(),
                ));
            }
            (false, Some(_)) => {
                return Err(shape_err(
                    "`aux` given, but the config has no use for it".into(),
                ));
            }
            (false, None) => None,
        };
        let in0 = inputs[0].slice(0, need0);
        let in1 = inputs[1].slice(0, need1);
        let out = output.slice(0, need_out);
        let taps = g.kh * g.kw;
        let (m, n, k) = match cfg.mode() {
            0 => (g.co, g.batch * g.oh * g.ow, g.ci * taps),
            1 => (g.ci, g.batch * g.h * g.w, g.co * taps),
            _ => (g.co, g.ci * taps, g.batch * g.oh * g.ow),
        };
        // opa, opb of the shader.
        let (opa, opb) = match (cfg.op, t) {
            (ConvOp::Forward | ConvOp::BackwardData, _) => (&in1, &in0),
            (ConvOp::BackwardWeight, false) => (&in1, &in0),
            (ConvOp::BackwardWeight, true) => (&in0, &in1),
        };
        let tiles_n = n.div_ceil(TILE);
        let tiles = m.div_ceil(TILE) as u64 * tiles_n as u64;
        let image_elements = g.batch as u64 * g.ci as u64 * g.h as u64 * g.w as u64;
        let groups = match (cfg.variant, cfg.mode()) {
            (ConvVariant::Gemm, _) => tiles,
            // One invocation per image element, 64 per workgroup.
            (ConvVariant::Direct, 1) | (ConvVariant::Columns, _) => image_elements.div_ceil(64),
            // One workgroup per weight element.
            (ConvVariant::Direct, _) => m as u64 * n as u64,
        };
        if groups > u32::MAX as u64 {
            return Err(shape_err(format!("{groups} workgroups overflow the grid")));
        }
        let params = gpu.uniform(
            label,
            &Params {
                m,
                n,
                k,
                tiles_n,
                tiles: tiles as u32,
                ..Params::of(&g)
            },
        );
        let bias_read = match cfg.op {
            ConvOp::Forward => bias.as_ref().map_or(Binding::Unused, Binding::Storage),
            _ => Binding::Unused,
        };
        let mut dispatches = Vec::new();
        // The columns variant: the dense GEMM into T [N, CI·KH·KW, OH, OW], which the gather
        // (in `gemm`'s place) then reads as its first operand.
        let column_buffer = match &self.columns {
            Some(kernel) => {
                let (cm, cn, ck) = (g.ci * taps, g.batch * g.oh * g.ow, g.co);
                let ctiles_n = cn.div_ceil(TILE);
                let ctiles = cm.div_ceil(TILE) as u64 * ctiles_n as u64;
                if ctiles > u32::MAX as u64 {
                    return Err(shape_err(format!("{ctiles} workgroups overflow the grid")));
                }
                let t_buf = gpu.zeros(&format!("{label}.columns"), cm as u64 * cn as u64)?;
                let p = gpu.uniform(
                    label,
                    &Params {
                        m: cm,
                        n: cn,
                        k: ck,
                        tiles_n: ctiles_n,
                        tiles: ctiles as u32,
                        ..Params::of(&g)
                    },
                );
                dispatches.push(gpu.dispatch(
                    kernel,
                    &[
                        Binding::Uniform(&p),
                        Binding::Storage(opa),
                        Binding::Storage(opb),
                        Binding::Storage(&t_buf),
                        Binding::Unused,
                        Binding::Unused,
                    ],
                    gpu.grid_1d(ctiles as u32),
                )?);
                Some(t_buf)
            }
            None => None,
        };
        let (first, second) = match &column_buffer {
            Some(t_buf) => (Binding::Storage(t_buf), Binding::Unused),
            None => (Binding::Storage(opa), Binding::Storage(opb)),
        };
        dispatches.push(gpu.dispatch(
            &self.gemm,
            &[
                Binding::Uniform(&params),
                first,
                second,
                Binding::Storage(&out),
                bias_read,
                aux.as_ref().map_or(Binding::Unused, Binding::Storage),
            ],
            gpu.grid_1d(groups as u32),
        )?);
        if let (Some(sums), Some(db)) = (&self.sums, &bias) {
            // Channel sums of dy [N, c_out, H_out, W_out] (in the op's own terms).
            let (oh, ow) = shape.out_hw(t).map_err(shape_err)?;
            // `inputs` is [x, dy] for the weight gradient of either op.
            let dy = &in1;
            let p = gpu.uniform(
                label,
                &Params {
                    batch: shape.batch,
                    co: shape.c_out,
                    oh,
                    ow,
                    ..Params::of(&g)
                },
            );
            dispatches.push(gpu.dispatch(
                sums,
                &[
                    Binding::Uniform(&p),
                    Binding::Unused,
                    Binding::Storage(dy),
                    Binding::Storage(db),
                    Binding::Unused,
                    Binding::Unused,
                ],
                gpu.grid_1d(shape.c_out),
            )?);
        }
        Ok(ConvDispatch { dispatches })
    }
}

impl Conv {
    /// Seconds one pass of `shape` takes on zero-filled buffers (see [`Gpu::time_dispatches`]).
    pub fn time(&self, gpu: &Gpu, shape: &ConvShape, give_up: Option<f64>) -> Result<f64> {
        let t = self.cfg.transposed;
        let (x, w, y) = (shape.input_len(), shape.weight_len(), shape.output_len(t));
        let (n0, n1, n_out) = match self.cfg.op {
            ConvOp::Forward => (x, w, y),
            ConvOp::BackwardData => (y, w, x),
            ConvOp::BackwardWeight => (x, y, w),
        };
        let zeros = |len: u64| gpu.zeros("conv.timing", len);
        let (a, b, out) = (zeros(n0)?, zeros(n1)?, zeros(n_out)?);
        let bias = if self.cfg.bias {
            Some(zeros(shape.c_out as u64)?)
        } else {
            None
        };
        let aux = if self.cfg.has_aux() {
            Some(zeros(n_out)?)
        } else {
            None
        };
        let d = self.bind_aux(gpu, shape, [&a, &b], &out, bias.as_ref(), aux.as_ref())?;
        gpu.time_dispatches(&d.dispatches(), give_up)
    }
}

/// Floating-point operations of one pass (a multiply-add counts 2, padding taps included).
pub fn flops(shape: &ConvShape, transposed: bool) -> f64 {
    let (oh, ow) = shape.out_hw(false).unwrap_or((0, 0));
    let spatial = if transposed {
        shape.h as f64 * shape.w as f64
    } else {
        oh as f64 * ow as f64
    };
    2.0 * shape.batch as f64
        * spatial
        * shape.c_out as f64
        * shape.c_in as f64
        * shape.kh as f64
        * shape.kw as f64
}
