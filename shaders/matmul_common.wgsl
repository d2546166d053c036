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
    // Column blocks (BLOCKED_*, see `stored`): their width, and the distance in elements between
    // consecutive blocks of A, B, C (and aux laid out as C), and of the per-column vector (bias
    // or column sums; blocked with C).
    block: u32,
    a_stride: u32,
    b_stride: u32,
    c_stride: u32,
    v_stride: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
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
// The stored matrix's columns come in blocks (see `stored`): two heads of one layer input, e.g.
// (mu, logvar) = h (W_mu | W_logvar) + (b_mu | b_logvar), run as one product although their
// weights, biases, outputs and gradients lie apart.
override BLOCKED_A: bool = false;
override BLOCKED_B: bool = false;
override BLOCKED_C: bool = false;
// The product is dz, the gradient with respect to z = mu + exp(logvar / 2) * eps (one sample per
// row, [M, N] each): C += dz is dmu and aux += dz * eps * exp(logvar / 2) / 2 is dlogvar (both
// already holding the KL term's gradient), so the sample's backward needs no pass of its own.
override REPARAM: bool = false;

@group(0) @binding(0) var<uniform> mm: MatmulParams;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> c: array<f32>;
@group(0) @binding(4) var<storage, read> bias: array<f32>;
// STORE_PRE: receives the pre-activation; HAS_GRAD: holds it (read only); COLUMN_SUMS: receives
// the column sums of op(B).
@group(0) @binding(5) var<storage, read_write> aux: array<f32>;
// REPARAM: the sample's noise and the posterior log-variance, laid out as C.
@group(0) @binding(6) var<storage, read> reparam_eps: array<f32>;
@group(0) @binding(7) var<storage, read> reparam_logvar: array<f32>;

// Element (r, c) of a stored row-major matrix `ld` columns wide; blocked, its columns come in
// blocks of mm.block, block j a row-major (rows x block) matrix at element j * stride.
fn stored(r: u32, c: u32, ld: u32, blocked: bool, stride: u32) -> u32 {
    if (blocked) {
        let j = c / mm.block;
        return j * stride + r * mm.block + (c - j * mm.block);
    }
    return r * ld + c;
}

// Element (r, c) of A as stored: MxK, or KxM with TRANS_A.
fn a_index(r: u32, c: u32) -> u32 {
    return stored(r, c, select(mm.k, mm.m, TRANS_A), BLOCKED_A, mm.a_stride);
}

// Element (r, c) of B as stored: KxN, or NxK with TRANS_B.
fn b_index(r: u32, c: u32) -> u32 {
    return stored(r, c, select(mm.n, mm.k, TRANS_B), BLOCKED_B, mm.b_stride);
}

// Column `col`'s element of the bias or the column sums.
fn column_index(col: u32) -> u32 {
    return stored(0u, col, 0u, BLOCKED_C, mm.v_stride);
}

// + bias, store the pre-activation, activation, times act'(aux), accumulate. Out-of-range
// elements are skipped; the COLUMN_SUMS row goes to `aux`.
fn mm_epilogue(row: u32, col: u32, sum: f32) {
    if (COLUMN_SUMS && row == mm.m && col < mm.n) {
        let v = column_index(col);
        if (ACCUMULATE) {
            aux[v] += sum;
        } else {
            aux[v] = sum;
        }
        return;
    }
    if (row >= mm.m || col >= mm.n) {
        return;
    }
    let i = stored(row, col, mm.n, BLOCKED_C, mm.c_stride);
    var v = sum;
    if (HAS_BIAS) {
        v += bias[column_index(col)];
    }
    if (STORE_PRE) {
        aux[i] = v;
    }
    v = act_forward(ACT, v);
    if (HAS_GRAD) {
        v *= act_derivative(GRAD_ACT, aux[i]);
    }
    if (REPARAM) {
        // As sample.wgsl's reparam_backward, in its order of operations.
        aux[i] += v * reparam_eps[i] * 0.5 * exp(0.5 * reparam_logvar[i]);
    }
    if (ACCUMULATE) {
        v += c[i];
    }
    c[i] = v;
}
