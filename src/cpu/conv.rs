//! 2-D convolution and transposed convolution with their gradients, in f64 with direct loops:
//! the reference for `shaders/conv.wgsl` (semantics and layouts in [`crate::kernels::conv`]).
//!
//! Each function walks every (output position, tap) pair that touches the image once, so the
//! forward and backward passes are visibly the same sum read in different directions. The
//! transposed convolution is written independently, as a scatter from each input pixel (not as
//! the conv2d gradient), so that the adjoint identity ⟨conv(X), Y⟩ = ⟨X, convT(Y)⟩ tested in
//! `tests/conv.rs` checks one against the other.

use crate::kernels::conv::ConvShape;

/// Gradients of a scalar loss with respect to the input, weight and bias of one layer.
#[derive(Debug, Clone, Default)]
pub struct Grads {
    pub dx: Vec<f64>,
    pub dw: Vec<f64>,
    pub db: Vec<f64>,
}

struct Dims {
    n: usize,
    ci: usize,
    h: usize,
    w: usize,
    co: usize,
    oh: usize,
    ow: usize,
    kh: usize,
    kw: usize,
    s: usize,
    p: usize,
}

fn dims(shape: &ConvShape, transposed: bool) -> Dims {
    let (oh, ow) = shape
        .out_hw(transposed)
        .unwrap_or_else(|e| panic!("impossible shape: {e}"));
    let u = |v: u32| v as usize;
    Dims {
        n: u(shape.batch),
        ci: u(shape.c_in),
        h: u(shape.h),
        w: u(shape.w),
        co: u(shape.c_out),
        oh: u(oh),
        ow: u(ow),
        kh: u(shape.kh),
        kw: u(shape.kw),
        s: u(shape.stride),
        p: u(shape.pad),
    }
}

/// `o·s + k − p` if it lies in `0..len`.
fn tap(o: usize, k: usize, d: &Dims, len: usize) -> Option<usize> {
    (o * d.s + k).checked_sub(d.p).filter(|&i| i < len)
}

fn check(shape: &ConvShape, transposed: bool, x: &[f64], w: &[f64], y: Option<&[f64]>) {
    assert_eq!(x.len() as u64, shape.input_len(), "x");
    assert_eq!(w.len() as u64, shape.weight_len(), "w");
    if let Some(y) = y {
        assert_eq!(y.len() as u64, shape.output_len(transposed), "dy");
    }
}

/// `y[n, co, oh, ow] = bias[co] + Σ_{ci, kh, kw} x[n, ci, oh·s − p + kh, ow·s − p + kw]·w[co, ci, kh, kw]`,
/// the image read as zero outside its bounds.
pub fn conv2d(shape: &ConvShape, x: &[f64], w: &[f64], bias: Option<&[f64]>) -> Vec<f64> {
    check(shape, false, x, w, None);
    let d = dims(shape, false);
    let mut y = vec![0.0; d.n * d.co * d.oh * d.ow];
    for n in 0..d.n {
        for co in 0..d.co {
            for oh in 0..d.oh {
                for ow in 0..d.ow {
                    let mut s = bias.map_or(0.0, |b| b[co]);
                    for ci in 0..d.ci {
                        for kh in 0..d.kh {
                            let Some(ih) = tap(oh, kh, &d, d.h) else {
                                continue;
                            };
                            for kw in 0..d.kw {
                                let Some(iw) = tap(ow, kw, &d, d.w) else {
                                    continue;
                                };
                                s += x[((n * d.ci + ci) * d.h + ih) * d.w + iw]
                                    * w[((co * d.ci + ci) * d.kh + kh) * d.kw + kw];
                            }
                        }
                    }
                    y[((n * d.co + co) * d.oh + oh) * d.ow + ow] = s;
                }
            }
        }
    }
    y
}

/// The gradients of `Σ dy ⊙ conv2d(x, w, bias)`.
pub fn conv2d_backward(shape: &ConvShape, x: &[f64], w: &[f64], dy: &[f64]) -> Grads {
    check(shape, false, x, w, Some(dy));
    let d = dims(shape, false);
    let mut g = Grads {
        dx: vec![0.0; x.len()],
        dw: vec![0.0; w.len()],
        db: vec![0.0; d.co],
    };
    for n in 0..d.n {
        for co in 0..d.co {
            for oh in 0..d.oh {
                for ow in 0..d.ow {
                    let gy = dy[((n * d.co + co) * d.oh + oh) * d.ow + ow];
                    g.db[co] += gy;
                    for ci in 0..d.ci {
                        for kh in 0..d.kh {
                            let Some(ih) = tap(oh, kh, &d, d.h) else {
                                continue;
                            };
                            for kw in 0..d.kw {
                                let Some(iw) = tap(ow, kw, &d, d.w) else {
                                    continue;
                                };
                                let xi = ((n * d.ci + ci) * d.h + ih) * d.w + iw;
                                let wi = ((co * d.ci + ci) * d.kh + kh) * d.kw + kw;
                                g.dx[xi] += gy * w[wi];
                                g.dw[wi] += gy * x[xi];
                            }
                        }
                    }
                }
            }
        }
    }
    g
}

/// PyTorch's `ConvTranspose2d`: every input pixel x[n, ci, ih, iw] adds x·w[ci, co, kh, kw] to
/// y[n, co, ih·s − p + kh, iw·s − p + kw] (dropped outside the output), y starting at bias[co];
/// H_out = (H − 1)·s − 2p + KH + output_pad.
pub fn conv_transpose2d(shape: &ConvShape, x: &[f64], w: &[f64], bias: Option<&[f64]>) -> Vec<f64> {
    check(shape, true, x, w, None);
    let d = dims(shape, true);
    let mut y = vec![0.0; d.n * d.co * d.oh * d.ow];
    for n in 0..d.n {
        for co in 0..d.co {
            let b = bias.map_or(0.0, |b| b[co]);
            let plane = (n * d.co + co) * d.oh * d.ow;
            y[plane..plane + d.oh * d.ow].fill(b);
        }
        for ci in 0..d.ci {
            for ih in 0..d.h {
                for iw in 0..d.w {
                    let xv = x[((n * d.ci + ci) * d.h + ih) * d.w + iw];
                    for co in 0..d.co {
                        for kh in 0..d.kh {
                            let Some(oh) = tap(ih, kh, &d, d.oh) else {
                                continue;
                            };
                            for kw in 0..d.kw {
                                let Some(ow) = tap(iw, kw, &d, d.ow) else {
                                    continue;
                                };
                                y[((n * d.co + co) * d.oh + oh) * d.ow + ow] +=
                                    xv * w[((ci * d.co + co) * d.kh + kh) * d.kw + kw];
                            }
                        }
                    }
                }
            }
        }
    }
    y
}

/// The gradients of `Σ dy ⊙ conv_transpose2d(x, w, bias)`.
pub fn conv_transpose2d_backward(shape: &ConvShape, x: &[f64], w: &[f64], dy: &[f64]) -> Grads {
    check(shape, true, x, w, Some(dy));
    let d = dims(shape, true);
    let mut g = Grads {
        dx: vec![0.0; x.len()],
        dw: vec![0.0; w.len()],
        db: vec![0.0; d.co],
    };
    for n in 0..d.n {
        for co in 0..d.co {
            let plane = (n * d.co + co) * d.oh * d.ow;
            g.db[co] += dy[plane..plane + d.oh * d.ow].iter().sum::<f64>();
        }
        for ci in 0..d.ci {
            for ih in 0..d.h {
                for iw in 0..d.w {
                    let xi = ((n * d.ci + ci) * d.h + ih) * d.w + iw;
                    for co in 0..d.co {
                        for kh in 0..d.kh {
                            let Some(oh) = tap(ih, kh, &d, d.oh) else {
                                continue;
                            };
                            for kw in 0..d.kw {
                                let Some(ow) = tap(iw, kw, &d, d.ow) else {
                                    continue;
                                };
                                let gy = dy[((n * d.co + co) * d.oh + oh) * d.ow + ow];
                                let wi = ((ci * d.co + co) * d.kh + kh) * d.kw + kw;
                                g.dx[xi] += gy * w[wi];
                                g.dw[wi] += gy * x[xi];
                            }
                        }
                    }
                }
            }
        }
    }
    g
}

/// `n` items of `c` channels × `hw` positions between NCHW (`to_last` false: from NHWC) and NHWC
/// (`to_last` true: from NCHW).
pub fn permute_channels<T: Copy>(v: &[T], n: usize, c: usize, hw: usize, to_last: bool) -> Vec<T> {
    let mut out = v.to_vec();
    for i in 0..n {
        for ch in 0..c {
            for p in 0..hw {
                let (first, last) = ((i * c + ch) * hw + p, (i * hw + p) * c + ch);
                if to_last {
                    out[last] = v[first];
                } else {
                    out[first] = v[last];
                }
            }
        }
    }
    out
}
