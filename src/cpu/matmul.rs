//! Matrix products and the fused matmul epilogue, in f64 with plain loops: the reference for
//! `shaders/matmul*.wgsl` (semantics in [`crate::kernels::matmul`]).

use crate::cpu::activation::{derivative, forward};
use crate::kernels::matmul::{Layout, MatmulConfig};

/// `op(A)[i, p]` for A stored as `layout` says (M×K, or K×M for TN).
fn op_a<T: Copy + Into<f64>>(
    layout: Layout,
    m: usize,
    k: usize,
    a: &[T],
    i: usize,
    p: usize,
) -> f64 {
    match layout {
        Layout::TN => a[p * m + i].into(),
        Layout::NN | Layout::NT => a[i * k + p].into(),
    }
}

/// `op(B)[p, j]` for B stored as `layout` says (K×N, or N×K for NT).
fn op_b<T: Copy + Into<f64>>(
    layout: Layout,
    n: usize,
    k: usize,
    b: &[T],
    p: usize,
    j: usize,
) -> f64 {
    match layout {
        Layout::NT => b[j * k + p].into(),
        Layout::NN | Layout::TN => b[p * n + j].into(),
    }
}

/// `C = op(A)·op(B)`, M×N row-major, each element summed over k in order.
pub fn matmul<T: Copy + Into<f64>>(
    layout: Layout,
    m: usize,
    n: usize,
    k: usize,
    a: &[T],
    b: &[T],
) -> Vec<f64> {
    assert_eq!(a.len(), m * k, "a");
    assert_eq!(b.len(), k * n, "b");
    // op(A) as M×K and op(B) transposed as N×K, so each element is a contiguous dot product.
    let oa: Vec<f64> = (0..m * k)
        .map(|x| op_a(layout, m, k, a, x / k, x % k))
        .collect();
    let ob: Vec<f64> = (0..n * k)
        .map(|x| op_b(layout, n, k, b, x % k, x / k))
        .collect();
    let mut c = vec![0.0; m * n];
    for i in 0..m {
        let row = &oa[i * k..(i + 1) * k];
        for j in 0..n {
            let col = &ob[j * k..(j + 1) * k];
            let mut s = 0.0;
            for p in 0..k {
                s += row[p] * col[p];
            }
            c[i * n + j] = s;
        }
    }
    c
}

/// `|op(A)|·|op(B)|`: the scale of each element's rounding error (see the tests' tolerance).
pub fn matmul_abs<T: Copy + Into<f64>>(
    layout: Layout,
    m: usize,
    n: usize,
    k: usize,
    a: &[T],
    b: &[T],
) -> Vec<f64> {
    let a: Vec<f64> = a.iter().map(|&x| x.into().abs()).collect();
    let b: Vec<f64> = b.iter().map(|&x| x.into().abs()).collect();
    matmul(layout, m, n, k, &a, &b)
}

/// Row-major transpose of an r×c matrix.
pub fn transpose<T: Copy>(r: usize, c: usize, x: &[T]) -> Vec<T> {
    assert_eq!(x.len(), r * c);
    let mut t = Vec::with_capacity(r * c);
    for j in 0..c {
        for i in 0..r {
            t.push(x[i * c + j]);
        }
    }
    t
}

/// What a fused matmul writes.
#[derive(Debug, Clone)]
pub struct Fused {
    /// The new C.
    pub c: Vec<f64>,
    /// The pre-activation (product + bias): what `store_pre` writes to `aux`.
    pub pre: Vec<f64>,
}

/// The epilogue applied to the product `prod` (M×N), as the kernels do it: + bias[n], activation,
/// times `grad_act'(aux)`, + the old C.
///
/// `bias` is needed iff `cfg.bias`, `aux` (the stored pre-activation) iff `cfg.grad_act`, `c_old`
/// iff `cfg.accumulate`.
pub fn epilogue<T: Copy + Into<f64>>(
    cfg: &MatmulConfig,
    m: usize,
    n: usize,
    prod: &[f64],
    bias: Option<&[T]>,
    aux: Option<&[T]>,
    c_old: Option<&[T]>,
) -> Fused {
    assert_eq!(prod.len(), m * n);
    let mut c = Vec::with_capacity(m * n);
    let mut pre = Vec::with_capacity(m * n);
    for i in 0..m {
        for j in 0..n {
            let idx = i * n + j;
            let mut v = prod[idx];
            if cfg.bias {
                v += bias.expect("bias")[j].into();
            }
            pre.push(v);
            v = forward(cfg.act, v);
            if let Some(g) = cfg.grad_act {
                v *= derivative(g, aux.expect("aux")[idx].into());
            }
            if cfg.accumulate {
                v += c_old.expect("old C")[idx].into();
            }
            c.push(v);
        }
    }
    Fused { c, pre }
}

/// Product and epilogue together: what one `Matmul` dispatch computes.
#[allow(clippy::too_many_arguments)]
pub fn fused<T: Copy + Into<f64>>(
    cfg: &MatmulConfig,
    m: usize,
    n: usize,
    k: usize,
    a: &[T],
    b: &[T],
    bias: Option<&[T]>,
    aux: Option<&[T]>,
    c_old: Option<&[T]>,
) -> Fused {
    let prod = matmul(cfg.layout, m, n, k, a, b);
    epilogue(cfg, m, n, &prod, bias, aux, c_old)
}
