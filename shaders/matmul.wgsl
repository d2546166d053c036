// C = op(A) op(B) with a fused epilogue: the portable kernel (real GPUs, GL, any adapter).
//
// Classic shared-memory tiling with register blocking: an 8x8 workgroup computes a 64x64 block
// of C, each invocation an 8x8 sub-block (rows ty + 8 i, columns tx + 8 j, so that neighbouring
// invocations touch neighbouring columns and workgroup-memory banks), stepping through K in
// slices of 16 staged in workgroup memory. 8x8 per invocation rather than the usual 4x4 halves
// the workgroup-memory reads per multiply-add, which is what costs on software adapters (llvmpipe
// turns each per-invocation load into a loop over its 8 SIMD lanes). Loads are guarded, so any
// M, N, K >= 1 works.
//
// Layouts (row-major storage): NN A is MxK, B is KxN; TN (TRANS_A) A is KxM; NT (TRANS_B) B is
// NxK. The bindings and epilogue (shaders/matmul_common.wgsl) are shared with
// shaders/matmul_subgroup.wgsl: + bias[col], store the
// pre-activation (STORE_PRE), act_forward(ACT), times act_derivative(GRAD_ACT, aux) (HAS_GRAD),
// + the old C (ACCUMULATE).

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
// matrices. Consecutive invocations read consecutive addresses in every layout.
fn stage(m0: u32, n0: u32, k0: u32, li: u32) {
    for (var e = 0u; e < TILE * BK / THREADS; e++) {
        let idx = li + e * THREADS;
        // A: MxK (contiguous along k) or, transposed, KxM (contiguous along m).
        var mi = idx / BK;
        var ki = idx % BK;
        if (TRANS_A) {
            mi = idx % TILE;
            ki = idx / TILE;
        }
        let m = m0 + mi;
        let k = k0 + ki;
        var v = 0.0;
        if (m < mm.m && k < mm.k) {
            if (TRANS_A) {
                v = a[k * mm.m + m];
            } else {
                v = a[m * mm.k + k];
            }
        } else if (COLUMN_SUMS && m == mm.m && k < mm.k) {
            v = 1.0;
        }
        as_[ki * STRIDE + mi] = v;

        // B: KxN (contiguous along n) or, transposed, NxK (contiguous along k).
        var nj = idx % TILE;
        var kj = idx / TILE;
        if (TRANS_B) {
            nj = idx / BK;
            kj = idx % BK;
        }
        let n = n0 + nj;
        let kb = k0 + kj;
        var w = 0.0;
        if (n < mm.n && kb < mm.k) {
            if (TRANS_B) {
                w = b[n * mm.k + kb];
            } else {
                w = b[kb * mm.n + n];
            }
        }
        bs[kj * STRIDE + nj] = w;
    }
}

@compute @workgroup_size(8, 8)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_id) lid: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let t = flat_workgroup(wid, nwg);
    // Uniform per workgroup: the whole workgroup leaves before any barrier.
    if (t >= mm.tiles) {
        return;
    }
    let m0 = (t / mm.tiles_n) * TILE;
    let n0 = (t % mm.tiles_n) * TILE;
    let tx = lid.x;
    let ty = lid.y;
    // acc[2 i + h][q]: row ty + 8 i, column tx + 8 (4 h + q).
    var acc: array<vec4<f32>, 16>;
    for (var k0 = 0u; k0 < mm.k; k0 += BK) {
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
            mm_epilogue(row, col, v.x);
            mm_epilogue(row, col + 8u, v.y);
            mm_epilogue(row, col + 16u, v.z);
            mm_epilogue(row, col + 24u, v.w);
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
