// The portable tiled GEMM core shared by shaders/matmul.wgsl and shaders/conv.wgsl: classic
// shared-memory tiling with register blocking. An 8x8 workgroup computes a 64x64 block of the
// product, each invocation an 8x8 sub-block (rows ty + 8 i, columns tx + 8 j, so neighbouring
// invocations touch neighbouring columns and workgroup-memory banks), stepping through K in
// slices of 16 staged in workgroup memory. 8x8 per invocation rather than the usual 4x4 halves
// the workgroup-memory reads per multiply-add, which is what costs on software adapters (llvmpipe
// turns each per-invocation load into a loop over its 8 SIMD lanes).
//
// The including family defines how operands are read and results stored:
//   gemm_dims() -> vec3<u32>          (M, N, K) of the product;
//   gemm_load_a(row, kk) -> f32       op(A)[row, kk], called only for row < M, kk < K;
//   gemm_load_b(kk, col) -> f32       op(B)[kk, col], called only for kk < K, col < N;
//   gemm_a_along_m() -> bool          whether consecutive invocations should stage A along m
//                                     (A stored K-major) rather than along k;
//   gemm_b_along_k() -> bool          likewise B along k (B stored N-major) rather than along n;
//   gemm_store(row, col, sum)         the epilogue (it skips row >= M or col >= N itself).
// and calls gemm_tile(m0, n0, lid, li) from an @workgroup_size(8, 8) entry point.

const TILE: u32 = 64u;
const BK: u32 = 16u;
const THREADS: u32 = 64u;
// Rows (and columns) of C per invocation.
const MICRO: u32 = 8u;
// Row stride of the staged tiles: 65, not 64, so that storing a K-contiguous slice
// (one invocation per k) hits different banks.
const STRIDE: u32 = TILE + 1u;

// Staged slices, k-major: as_[k * STRIDE + m] = op(A)[m0 + m, k0 + k], bs[k * STRIDE + n].
var<workgroup> as_: array<f32, BK * STRIDE>;
var<workgroup> bs: array<f32, BK * STRIDE>;

// Stages op(A)[m0 .. m0+63, k0 .. k0+15] and op(B)[k0 .. k0+15, n0 .. n0+63], zero outside the
// matrices, with consecutive invocations reading consecutive addresses.
fn stage(m0: u32, n0: u32, k0: u32, li: u32) {
    let dims = gemm_dims();
    for (var e = 0u; e < TILE * BK / THREADS; e++) {
        let idx = li + e * THREADS;
        var mi = idx / BK;
        var ki = idx % BK;
        if (gemm_a_along_m()) {
            mi = idx % TILE;
            ki = idx / TILE;
        }
        let m = m0 + mi;
        let k = k0 + ki;
        var v = 0.0;
        if (m < dims.x && k < dims.z) {
            v = gemm_load_a(m, k);
        }
        as_[ki * STRIDE + mi] = v;

        var nj = idx % TILE;
        var kj = idx / TILE;
        if (gemm_b_along_k()) {
            nj = idx / BK;
            kj = idx % BK;
        }
        let n = n0 + nj;
        let kb = k0 + kj;
        var w = 0.0;
        if (n < dims.y && kb < dims.z) {
            w = gemm_load_b(kb, n);
        }
        bs[kj * STRIDE + nj] = w;
    }
}

// The 64x64 block of the product at (m0, n0); every invocation of the workgroup must call it.
fn gemm_tile(m0: u32, n0: u32, lid: vec3<u32>, li: u32) {
    let k = gemm_dims().z;
    let tx = lid.x;
    let ty = lid.y;
    // acc[2 i + h][q]: row ty + 8 i, column tx + 8 (4 h + q).
    var acc: array<vec4<f32>, 16>;
    for (var k0 = 0u; k0 < k; k0 += BK) {
        stage(m0, n0, k0, li);
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk++) {
            let base = kk * STRIDE;
            let b_lo = vec4<f32>(bs[base + tx], bs[base + tx + 8u], bs[base + tx + 16u],
                                 bs[base + tx + 24u]);
            let b_hi = vec4<f32>(bs[base + tx + 32u], bs[base + tx + 40u], bs[base + tx + 48u],
                                 bs[base + tx + 56u]);
            // Unrolled: constant indices keep `acc` in registers.
            let a_lo = vec4<f32>(as_[base + ty], as_[base + ty + 8u], as_[base + ty + 16u],
                                 as_[base + ty + 24u]);
            let a_hi = vec4<f32>(as_[base + ty + 32u], as_[base + ty + 40u],
                                 as_[base + ty + 48u], as_[base + ty + 56u]);
            acc[0] += a_lo.x * b_lo;
            acc[1] += a_lo.x * b_hi;
            acc[2] += a_lo.y * b_lo;
            acc[3] += a_lo.y * b_hi;
            acc[4] += a_lo.z * b_lo;
            acc[5] += a_lo.z * b_hi;
            acc[6] += a_lo.w * b_lo;
            acc[7] += a_lo.w * b_hi;
            acc[8] += a_hi.x * b_lo;
            acc[9] += a_hi.x * b_hi;
            acc[10] += a_hi.y * b_lo;
            acc[11] += a_hi.y * b_hi;
            acc[12] += a_hi.z * b_lo;
            acc[13] += a_hi.z * b_hi;
            acc[14] += a_hi.w * b_lo;
            acc[15] += a_hi.w * b_hi;
        }
        workgroupBarrier();
    }
    // Row ty + 8 i is in acc[0], acc[1] at iteration i: shifting keeps every index constant, so
    // `acc` stays in registers (a dynamic index would put it in memory for the whole kernel).
    for (var i = 0u; i < MICRO; i++) {
        let row = m0 + ty + 8u * i;
        for (var h = 0u; h < 2u; h++) {
            let v = select(acc[0], acc[1], h == 1u);
            let col = n0 + tx + 32u * h;
            gemm_store(row, col, v.x);
            gemm_store(row, col + 8u, v.y);
            gemm_store(row, col + 16u, v.z);
            gemm_store(row, col + 24u, v.w);
        }
        acc[0] = acc[2];
        acc[1] = acc[3];
        acc[2] = acc[4];
        acc[3] = acc[5];
        acc[4] = acc[6];
        acc[5] = acc[7];
        acc[6] = acc[8];
        acc[7] = acc[9];
        acc[8] = acc[10];
        acc[9] = acc[11];
        acc[10] = acc[12];
        acc[11] = acc[13];
        acc[12] = acc[14];
        acc[13] = acc[15];
    }
}
