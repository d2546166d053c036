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
//
// The tiling itself is shaders/tiled_gemm.wgsl (shared with the implicit-GEMM convolution).

// COLUMN_SUMS: op(A) has a virtual row M of ones (see matmul_common.wgsl).
fn gemm_dims() -> vec3<u32> {
    return vec3<u32>(mm.m + u32(COLUMN_SUMS), mm.n, mm.k);
}

fn gemm_a_along_m() -> bool {
    return TRANS_A;
}

fn gemm_b_along_k() -> bool {
    return TRANS_B;
}

// A: MxK (contiguous along k) or, transposed, KxM (contiguous along m); COLUMN_SUMS adds a row
// of ones at m = M.
fn gemm_load_a(m: u32, k: u32) -> f32 {
    if (COLUMN_SUMS && m == mm.m) {
        return 1.0;
    }
    if (TRANS_A) {
        return a[a_index(k, m)];
    }
    return a[a_index(m, k)];
}

// B: KxN (contiguous along n) or, transposed, NxK (contiguous along k).
fn gemm_load_b(k: u32, n: u32) -> f32 {
    if (TRANS_B) {
        return b[b_index(n, k)];
    }
    return b[b_index(k, n)];
}

fn gemm_store(row: u32, col: u32, sum: f32) {
    mm_epilogue(row, col, sum);
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
    gemm_tile((t / mm.tiles_n) * TILE, (t % mm.tiles_n) * TILE, lid, li);
}
