// Shared by both matmul kernels (prepended by `kernels::compose` after common.wgsl): the
// parameters, override constants, bindings and the fused epilogue, so the two kernels compute
// exactly the same thing and differ only in how they form the dot products.

struct MatmulParams {
    m: u32,
    n: u32,
    k: u32,
    // Column tiles and total tiles; the grid may be folded into x/y (`Gpu::grid_1d`).
    tiles_n: u32,
    tiles: u32,
    // log2 of the row widths of the A and B textures (subgroup kernel only).
    a_shift: u32,
    b_shift: u32,
    _pad: u32,
}

override TRANS_A: bool = false;
override TRANS_B: bool = false;
override HAS_BIAS: bool = false;
override ACT: u32 = 0u;
override STORE_PRE: bool = false;
override HAS_GRAD: bool = false;
override GRAD_ACT: u32 = 0u;
override ACCUMULATE: bool = false;
// op(A) has a virtual row M of ones, so row M of the product is Σ_k op(B)[k, n]: with TN
// (A = layer input, B = the pre-activation gradient) that is the bias gradient, written to
// `aux[n]` beside the weight gradient in C.
override COLUMN_SUMS: bool = false;

@group(0) @binding(0) var<uniform> mm: MatmulParams;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> c: array<f32>;
@group(0) @binding(4) var<storage, read> bias: array<f32>;
// STORE_PRE: receives the pre-activation; HAS_GRAD: holds it (read only); COLUMN_SUMS: receives
// the column sums of op(B).
@group(0) @binding(5) var<storage, read_write> aux: array<f32>;

// + bias, store the pre-activation, activation, times act'(aux), accumulate. Out-of-range
// elements are skipped; the COLUMN_SUMS row goes to `aux`.
fn mm_epilogue(row: u32, col: u32, sum: f32) {
    if (COLUMN_SUMS && row == mm.m && col < mm.n) {
        if (ACCUMULATE) {
            aux[col] += sum;
        } else {
            aux[col] = sum;
        }
        return;
    }
    if (row >= mm.m || col >= mm.n) {
        return;
    }
    let i = row * mm.n + col;
    var v = sum;
    if (HAS_BIAS) {
        v += bias[col];
    }
    if (STORE_PRE) {
        aux[i] = v;
    }
    v = act_forward(ACT, v);
    if (HAS_GRAD) {
        v *= act_derivative(GRAD_ACT, aux[i]);
    }
    if (ACCUMULATE) {
        v += c[i];
    }
    c[i] = v;
}
