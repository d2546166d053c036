// C = op(A) op(B) with a fused epilogue: the fast path for software adapters (Mesa
// lavapipe/llvmpipe). Needs Features::SUBGROUP with subgroups of at least 8 lanes
// (`Gpu::has_subgroups`); naga 30 rejects `enable subgroups;`, so the builtins are used without it.
//
// Why this shape. llvmpipe (Mesa 22.3) runs each invocation as one lane of an 8-wide CPU vector.
// Arithmetic is cheap; loads are not. A storage-buffer load inside a loop, even from a uniform
// address and even as a vec4, becomes a loop over the 8 lanes with a branch and a vector insert per
// lane and component: ~30 cycles per element, whatever the vector width (measured: loading
// `array<vec4<f32>>` costs the same per element as scalar loads). An image load is a branch-free
// gather, 6-8x cheaper per element (measured 7-8 ns vs ~1 ns per lane-load), so the wrapper copies
// A and B into `r32float` textures before the dispatch (`TexelCopy`: a copy, not a shader pass) and
// the kernel reads them with textureLoad. With loads cheap, the multiply-adds bound the time, and
// smaller tiles than the 64x64 used with buffer loads win: fewer accumulators for LLVM to spill.
// - one 8-lane subgroup per workgroup; no workgroup memory, no barriers;
// - a 32x64 tile of C per workgroup: lane l holds columns n0 + 32 j + 4 l .. + 3 (j < 2) of
//   all 32 rows, 64 vec4 accumulators in `c0` / `c1`;
// - per block of 4 k, lane l loads rows m0 + 8 g + l (g < 4) of op(A) over the 4 k, and the
//   4x4 block of op(B) under each of its column groups; `subgroupBroadcast` with a constant lane
//   index (it must be a constant expression, hence the unrolled code) hands row 8 g + s to every
//   lane; each accumulator is updated once per block (`b * x`: 4 multiply-adds);
// - every element of A and B is loaded once per workgroup, with min()-clamped indices instead of
//   branches; k beyond K reads as 0 in both operands, rows and columns beyond M and N compute
//   clamped garbage that is never stored;
// - the epilogue runs in loops over rows that shift the accumulators down one row per
//   iteration: inlined copies of the epilogue per accumulator made the driver's compile take
//   seconds. Shifting within blocks of 8 rows moves a quarter of what shifting all 32 would (that
//   cost ~20% of a K = 128 product).
//
// How the operands are read is the variant's (prepended by `kernels::compose`):
// - subgroup_texels.wgsl: `r32float` textures, one element per image load, any shape;
// - subgroup_texels_vec4.wgsl: `rgba32float`, four elements per load (a quarter of the loads),
//   for operands whose rows are multiples of 4 elements.
// Each provides `load_a_rows(m0, lane, k)` (lane l's four vec4s p_g to broadcast: accumulator
// 8g + s takes p_g from lane s), `tile_row(r)` (the tile row accumulator r holds), and
// `load_b(k, col)` (column j: op(B)[k + j, col .. col+3], zero for k + j beyond K).
//
// Where it stands (2-core AMD EPYC, Mesa 22.3.6): 30-45 GFLOP/s with vec4 texels against 160-180
// for the `gemm` crate on the same cores. Every lane's vec4 accumulator takes 4 of the 16 ymm
// registers, so any register-blocked tile spills; the compute core alone (no epilogue, loads
// kept) measured ~24 GFLOP per CPU-second. Tiles of 8-48 rows by 32-64 columns, explicit fma()
// and an epilogue without stores all timed within noise of this one.
//
// Layouts (row-major storage): NN A is MxK, B is KxN; TN (TRANS_A) A is KxM; NT (TRANS_B) B is
// NxK. Bindings and epilogue come from shaders/matmul_common.wgsl.

const SG_ROWS: u32 = 32u;
const SG_COLS: u32 = 64u;

fn store4(row: u32, col: u32, v: vec4<f32>) {
    mm_epilogue(row, col, v.x);
    mm_epilogue(row, col + 1u, v.y);
    mm_epilogue(row, col + 2u, v.z);
    mm_epilogue(row, col + 3u, v.w);
}

@compute @workgroup_size(8)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(subgroup_invocation_id) lane: u32) {
    let t = flat_workgroup(wid, nwg);
    if (t >= mm.tiles) {
        return;
    }
    let m0 = (t / mm.tiles_n) * SG_ROWS;
    let n0 = (t % mm.tiles_n) * SG_COLS;
    let col0 = n0 + 4u * lane;
    let col1 = col0 + 32u;
    // c0[r], c1[r]: tile row tile_row(r), columns col0, col1 .. +3.
    var c0: array<vec4<f32>, 32>;
    var c1: array<vec4<f32>, 32>;
    for (var k = 0u; k < mm.k; k += 4u) {
        let b0 = load_b(k, col0);
        let b1 = load_b(k, col1);
        let p = load_a_rows(m0, lane, k);
        let p0 = p[0];
        let p1 = p[1];
        let p2 = p[2];
        let p3 = p[3];
        let x0 = subgroupBroadcast(p0, 0u);
        c0[0] += b0 * x0;
        c1[0] += b1 * x0;
        let x1 = subgroupBroadcast(p0, 1u);
        c0[1] += b0 * x1;
        c1[1] += b1 * x1;
        let x2 = subgroupBroadcast(p0, 2u);
        c0[2] += b0 * x2;
        c1[2] += b1 * x2;
        let x3 = subgroupBroadcast(p0, 3u);
        c0[3] += b0 * x3;
        c1[3] += b1 * x3;
        let x4 = subgroupBroadcast(p0, 4u);
        c0[4] += b0 * x4;
        c1[4] += b1 * x4;
        let x5 = subgroupBroadcast(p0, 5u);
        c0[5] += b0 * x5;
        c1[5] += b1 * x5;
        let x6 = subgroupBroadcast(p0, 6u);
        c0[6] += b0 * x6;
        c1[6] += b1 * x6;
        let x7 = subgroupBroadcast(p0, 7u);
        c0[7] += b0 * x7;
        c1[7] += b1 * x7;
        let x8 = subgroupBroadcast(p1, 0u);
        c0[8] += b0 * x8;
        c1[8] += b1 * x8;
        let x9 = subgroupBroadcast(p1, 1u);
        c0[9] += b0 * x9;
        c1[9] += b1 * x9;
        let x10 = subgroupBroadcast(p1, 2u);
        c0[10] += b0 * x10;
        c1[10] += b1 * x10;
        let x11 = subgroupBroadcast(p1, 3u);
        c0[11] += b0 * x11;
        c1[11] += b1 * x11;
        let x12 = subgroupBroadcast(p1, 4u);
        c0[12] += b0 * x12;
        c1[12] += b1 * x12;
        let x13 = subgroupBroadcast(p1, 5u);
        c0[13] += b0 * x13;
        c1[13] += b1 * x13;
        let x14 = subgroupBroadcast(p1, 6u);
        c0[14] += b0 * x14;
        c1[14] += b1 * x14;
        let x15 = subgroupBroadcast(p1, 7u);
        c0[15] += b0 * x15;
        c1[15] += b1 * x15;
        let x16 = subgroupBroadcast(p2, 0u);
        c0[16] += b0 * x16;
        c1[16] += b1 * x16;
        let x17 = subgroupBroadcast(p2, 1u);
        c0[17] += b0 * x17;
        c1[17] += b1 * x17;
        let x18 = subgroupBroadcast(p2, 2u);
        c0[18] += b0 * x18;
        c1[18] += b1 * x18;
        let x19 = subgroupBroadcast(p2, 3u);
        c0[19] += b0 * x19;
        c1[19] += b1 * x19;
        let x20 = subgroupBroadcast(p2, 4u);
        c0[20] += b0 * x20;
        c1[20] += b1 * x20;
        let x21 = subgroupBroadcast(p2, 5u);
        c0[21] += b0 * x21;
        c1[21] += b1 * x21;
        let x22 = subgroupBroadcast(p2, 6u);
        c0[22] += b0 * x22;
        c1[22] += b1 * x22;
        let x23 = subgroupBroadcast(p2, 7u);
        c0[23] += b0 * x23;
        c1[23] += b1 * x23;
        let x24 = subgroupBroadcast(p3, 0u);
        c0[24] += b0 * x24;
        c1[24] += b1 * x24;
        let x25 = subgroupBroadcast(p3, 1u);
        c0[25] += b0 * x25;
        c1[25] += b1 * x25;
        let x26 = subgroupBroadcast(p3, 2u);
        c0[26] += b0 * x26;
        c1[26] += b1 * x26;
        let x27 = subgroupBroadcast(p3, 3u);
        c0[27] += b0 * x27;
        c1[27] += b1 * x27;
        let x28 = subgroupBroadcast(p3, 4u);
        c0[28] += b0 * x28;
        c1[28] += b1 * x28;
        let x29 = subgroupBroadcast(p3, 5u);
        c0[29] += b0 * x29;
        c1[29] += b1 * x29;
        let x30 = subgroupBroadcast(p3, 6u);
        c0[30] += b0 * x30;
        c1[30] += b1 * x30;
        let x31 = subgroupBroadcast(p3, 7u);
        c0[31] += b0 * x31;
        c1[31] += b1 * x31;
    }
    // Accumulator r is in c0[8g] / c1[8g] at iteration r of loop g = r / 8.
    for (var r = 0u; r < 8u; r++) {
        let row = m0 + tile_row(r);
        store4(row, col0, c0[0]);
        store4(row, col1, c1[0]);
        c0[0] = c0[1];
        c0[1] = c0[2];
        c0[2] = c0[3];
        c0[3] = c0[4];
        c0[4] = c0[5];
        c0[5] = c0[6];
        c0[6] = c0[7];
        c1[0] = c1[1];
        c1[1] = c1[2];
        c1[2] = c1[3];
        c1[3] = c1[4];
        c1[4] = c1[5];
        c1[5] = c1[6];
        c1[6] = c1[7];
    }
    for (var r = 8u; r < 16u; r++) {
        let row = m0 + tile_row(r);
        store4(row, col0, c0[8]);
        store4(row, col1, c1[8]);
        c0[8] = c0[9];
        c0[9] = c0[10];
        c0[10] = c0[11];
        c0[11] = c0[12];
        c0[12] = c0[13];
        c0[13] = c0[14];
        c0[14] = c0[15];
        c1[8] = c1[9];
        c1[9] = c1[10];
        c1[10] = c1[11];
        c1[11] = c1[12];
        c1[12] = c1[13];
        c1[13] = c1[14];
        c1[14] = c1[15];
    }
    for (var r = 16u; r < 24u; r++) {
        let row = m0 + tile_row(r);
        store4(row, col0, c0[16]);
        store4(row, col1, c1[16]);
        c0[16] = c0[17];
        c0[17] = c0[18];
        c0[18] = c0[19];
        c0[19] = c0[20];
        c0[20] = c0[21];
        c0[21] = c0[22];
        c0[22] = c0[23];
        c1[16] = c1[17];
        c1[17] = c1[18];
        c1[18] = c1[19];
        c1[19] = c1[20];
        c1[20] = c1[21];
        c1[21] = c1[22];
        c1[22] = c1[23];
    }
    for (var r = 24u; r < 32u; r++) {
        let row = m0 + tile_row(r);
        store4(row, col0, c0[24]);
        store4(row, col1, c1[24]);
        c0[24] = c0[25];
        c0[25] = c0[26];
        c0[26] = c0[27];
        c0[27] = c0[28];
        c0[28] = c0[29];
        c0[29] = c0[30];
        c0[30] = c0[31];
        c1[24] = c1[25];
        c1[25] = c1[26];
        c1[26] = c1[27];
        c1[27] = c1[28];
        c1[28] = c1[29];
        c1[29] = c1[30];
        c1[30] = c1[31];
    }
}
