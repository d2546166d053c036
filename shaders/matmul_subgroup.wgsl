// C = op(A) op(B) with a fused epilogue: the fast path for software adapters (Mesa
// lavapipe/llvmpipe). Needs Features::SUBGROUP with subgroups of at least 8 lanes
// (`Gpu::has_subgroups`); naga 30 rejects `enable subgroups;`, so the builtins are used without it.
//
// Why this shape. llvmpipe (Mesa 22.3) runs each invocation as one lane of an 8-wide CPU vector.
// Arithmetic is cheap, but every storage-buffer load inside a loop, even from a uniform address,
// becomes a loop over the 8 lanes costing ~20 cycles per lane and component (measured: vec4
// loads cost 4x scalar ones, so they buy nothing), and workgroup memory cannot save any: each
// element is already loaded once per workgroup. What counts is multiply-adds per loaded element,
// i.e. the tile size, bounded by the driver's compile time for the unrolled code (~1 s here):
// - one 8-lane subgroup per workgroup; no workgroup memory, no barriers;
// - a 64x64 tile of C per workgroup: lane l holds columns n0 + 32 j + 4 l .. + 3 (j = 0, 1) of
//   all 64 rows, 128 vec4 accumulators in `c0` / `c1`;
// - per block of 4 k, lane l loads rows m0 + 8 g + l (g = 0..7) of op(A) over the 4 k, and the
//   4x4 block of op(B) under each of its column groups; `subgroupBroadcast` with a constant lane
//   index (it must be a constant expression, hence the unrolled code) hands row 8 g + s to every
//   lane; each accumulator is updated once per block (`b * x`: 4 multiply-adds);
// - every element of A and B is loaded once per workgroup, with min()-clamped indices instead of
//   branches; k beyond K reads as 0 in both operands, rows and columns beyond M and N compute
//   clamped garbage that is never stored;
// - the epilogue runs in a loop over rows that shifts the accumulators down one row per
//   iteration: 128 inlined copies of the epilogue made the driver's shader compile take seconds.
//
// Layouts (row-major storage): NN A is MxK, B is KxN; TN (TRANS_A) A is KxM; NT (TRANS_B) B is
// NxK. Any M, N, K >= 1. Bindings and epilogue come from shaders/matmul_common.wgsl.

const SG_ROWS: u32 = 64u;
const SG_COLS: u32 = 64u;

fn store4(row: u32, col: u32, v: vec4<f32>) {
    mm_epilogue(row, col, v.x);
    mm_epilogue(row, col + 1u, v.y);
    mm_epilogue(row, col + 2u, v.z);
    mm_epilogue(row, col + 3u, v.w);
}

fn k_valid(k: u32) -> vec4<bool> {
    return vec4<u32>(k, k + 1u, k + 2u, k + 3u) < vec4<u32>(mm.k);
}

// op(A)[row, k .. k+3], row and k clamped, k beyond K zeroed.
fn load_a(row: u32, k: u32) -> vec4<f32> {
    let r = min(row, mm.m - 1u);
    let kl = mm.k - 1u;
    let k0 = min(k, kl);
    let k1 = min(k + 1u, kl);
    let k2 = min(k + 2u, kl);
    let k3 = min(k + 3u, kl);
    var v: vec4<f32>;
    if (TRANS_A) {
        v = vec4<f32>(a[k0 * mm.m + r], a[k1 * mm.m + r], a[k2 * mm.m + r], a[k3 * mm.m + r]);
    } else {
        let base = r * mm.k;
        v = vec4<f32>(a[base + k0], a[base + k1], a[base + k2], a[base + k3]);
    }
    return select(vec4<f32>(0.0), v, k_valid(k));
}

// op(B)[k, col .. col+3], columns clamped (k < K).
fn load_b_row(k: u32, col: u32) -> vec4<f32> {
    let nl = mm.n - 1u;
    let c0 = min(col, nl);
    let c1 = min(col + 1u, nl);
    let c2 = min(col + 2u, nl);
    let c3 = min(col + 3u, nl);
    if (TRANS_B) {
        return vec4<f32>(b[c0 * mm.k + k], b[c1 * mm.k + k], b[c2 * mm.k + k], b[c3 * mm.k + k]);
    }
    let base = k * mm.n;
    return vec4<f32>(b[base + c0], b[base + c1], b[base + c2], b[base + c3]);
}

// Column i of the result is op(B)[k + i, col .. col+3] (zero for k + i beyond K), so that
// `load_b(k, col) * x` with x = op(A)[row, k .. k+3] adds the 4 products to a row's 4 columns.
fn load_b(k: u32, col: u32) -> mat4x4<f32> {
    let kl = mm.k - 1u;
    let ok = k_valid(k);
    let z = vec4<f32>(0.0);
    return mat4x4<f32>(select(z, load_b_row(min(k, kl), col), ok.x),
                       select(z, load_b_row(min(k + 1u, kl), col), ok.y),
                       select(z, load_b_row(min(k + 2u, kl), col), ok.z),
                       select(z, load_b_row(min(k + 3u, kl), col), ok.w));
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
    // c0[r], c1[r]: row m0 + r, columns col0 .. col0+3 and col1 .. col1+3.
    var c0: array<vec4<f32>, 64>;
    var c1: array<vec4<f32>, 64>;
    for (var k = 0u; k < mm.k; k += 4u) {
        let b0 = load_b(k, col0);
        let b1 = load_b(k, col1);
        let a0 = load_a(m0 + lane, k);
        let a1 = load_a(m0 + 8u + lane, k);
        let a2 = load_a(m0 + 16u + lane, k);
        let a3 = load_a(m0 + 24u + lane, k);
        let a4 = load_a(m0 + 32u + lane, k);
        let a5 = load_a(m0 + 40u + lane, k);
        let a6 = load_a(m0 + 48u + lane, k);
        let a7 = load_a(m0 + 56u + lane, k);
        let x0 = subgroupBroadcast(a0, 0u);
        c0[0] += b0 * x0;
        c1[0] += b1 * x0;
        let x1 = subgroupBroadcast(a0, 1u);
        c0[1] += b0 * x1;
        c1[1] += b1 * x1;
        let x2 = subgroupBroadcast(a0, 2u);
        c0[2] += b0 * x2;
        c1[2] += b1 * x2;
        let x3 = subgroupBroadcast(a0, 3u);
        c0[3] += b0 * x3;
        c1[3] += b1 * x3;
        let x4 = subgroupBroadcast(a0, 4u);
        c0[4] += b0 * x4;
        c1[4] += b1 * x4;
        let x5 = subgroupBroadcast(a0, 5u);
        c0[5] += b0 * x5;
        c1[5] += b1 * x5;
        let x6 = subgroupBroadcast(a0, 6u);
        c0[6] += b0 * x6;
        c1[6] += b1 * x6;
        let x7 = subgroupBroadcast(a0, 7u);
        c0[7] += b0 * x7;
        c1[7] += b1 * x7;
        let x8 = subgroupBroadcast(a1, 0u);
        c0[8] += b0 * x8;
        c1[8] += b1 * x8;
        let x9 = subgroupBroadcast(a1, 1u);
        c0[9] += b0 * x9;
        c1[9] += b1 * x9;
        let x10 = subgroupBroadcast(a1, 2u);
        c0[10] += b0 * x10;
        c1[10] += b1 * x10;
        let x11 = subgroupBroadcast(a1, 3u);
        c0[11] += b0 * x11;
        c1[11] += b1 * x11;
        let x12 = subgroupBroadcast(a1, 4u);
        c0[12] += b0 * x12;
        c1[12] += b1 * x12;
        let x13 = subgroupBroadcast(a1, 5u);
        c0[13] += b0 * x13;
        c1[13] += b1 * x13;
        let x14 = subgroupBroadcast(a1, 6u);
        c0[14] += b0 * x14;
        c1[14] += b1 * x14;
        let x15 = subgroupBroadcast(a1, 7u);
        c0[15] += b0 * x15;
        c1[15] += b1 * x15;
        let x16 = subgroupBroadcast(a2, 0u);
        c0[16] += b0 * x16;
        c1[16] += b1 * x16;
        let x17 = subgroupBroadcast(a2, 1u);
        c0[17] += b0 * x17;
        c1[17] += b1 * x17;
        let x18 = subgroupBroadcast(a2, 2u);
        c0[18] += b0 * x18;
        c1[18] += b1 * x18;
        let x19 = subgroupBroadcast(a2, 3u);
        c0[19] += b0 * x19;
        c1[19] += b1 * x19;
        let x20 = subgroupBroadcast(a2, 4u);
        c0[20] += b0 * x20;
        c1[20] += b1 * x20;
        let x21 = subgroupBroadcast(a2, 5u);
        c0[21] += b0 * x21;
        c1[21] += b1 * x21;
        let x22 = subgroupBroadcast(a2, 6u);
        c0[22] += b0 * x22;
        c1[22] += b1 * x22;
        let x23 = subgroupBroadcast(a2, 7u);
        c0[23] += b0 * x23;
        c1[23] += b1 * x23;
        let x24 = subgroupBroadcast(a3, 0u);
        c0[24] += b0 * x24;
        c1[24] += b1 * x24;
        let x25 = subgroupBroadcast(a3, 1u);
        c0[25] += b0 * x25;
        c1[25] += b1 * x25;
        let x26 = subgroupBroadcast(a3, 2u);
        c0[26] += b0 * x26;
        c1[26] += b1 * x26;
        let x27 = subgroupBroadcast(a3, 3u);
        c0[27] += b0 * x27;
        c1[27] += b1 * x27;
        let x28 = subgroupBroadcast(a3, 4u);
        c0[28] += b0 * x28;
        c1[28] += b1 * x28;
        let x29 = subgroupBroadcast(a3, 5u);
        c0[29] += b0 * x29;
        c1[29] += b1 * x29;
        let x30 = subgroupBroadcast(a3, 6u);
        c0[30] += b0 * x30;
        c1[30] += b1 * x30;
        let x31 = subgroupBroadcast(a3, 7u);
        c0[31] += b0 * x31;
        c1[31] += b1 * x31;
        let x32 = subgroupBroadcast(a4, 0u);
        c0[32] += b0 * x32;
        c1[32] += b1 * x32;
        let x33 = subgroupBroadcast(a4, 1u);
        c0[33] += b0 * x33;
        c1[33] += b1 * x33;
        let x34 = subgroupBroadcast(a4, 2u);
        c0[34] += b0 * x34;
        c1[34] += b1 * x34;
        let x35 = subgroupBroadcast(a4, 3u);
        c0[35] += b0 * x35;
        c1[35] += b1 * x35;
        let x36 = subgroupBroadcast(a4, 4u);
        c0[36] += b0 * x36;
        c1[36] += b1 * x36;
        let x37 = subgroupBroadcast(a4, 5u);
        c0[37] += b0 * x37;
        c1[37] += b1 * x37;
        let x38 = subgroupBroadcast(a4, 6u);
        c0[38] += b0 * x38;
        c1[38] += b1 * x38;
        let x39 = subgroupBroadcast(a4, 7u);
        c0[39] += b0 * x39;
        c1[39] += b1 * x39;
        let x40 = subgroupBroadcast(a5, 0u);
        c0[40] += b0 * x40;
        c1[40] += b1 * x40;
        let x41 = subgroupBroadcast(a5, 1u);
        c0[41] += b0 * x41;
        c1[41] += b1 * x41;
        let x42 = subgroupBroadcast(a5, 2u);
        c0[42] += b0 * x42;
        c1[42] += b1 * x42;
        let x43 = subgroupBroadcast(a5, 3u);
        c0[43] += b0 * x43;
        c1[43] += b1 * x43;
        let x44 = subgroupBroadcast(a5, 4u);
        c0[44] += b0 * x44;
        c1[44] += b1 * x44;
        let x45 = subgroupBroadcast(a5, 5u);
        c0[45] += b0 * x45;
        c1[45] += b1 * x45;
        let x46 = subgroupBroadcast(a5, 6u);
        c0[46] += b0 * x46;
        c1[46] += b1 * x46;
        let x47 = subgroupBroadcast(a5, 7u);
        c0[47] += b0 * x47;
        c1[47] += b1 * x47;
        let x48 = subgroupBroadcast(a6, 0u);
        c0[48] += b0 * x48;
        c1[48] += b1 * x48;
        let x49 = subgroupBroadcast(a6, 1u);
        c0[49] += b0 * x49;
        c1[49] += b1 * x49;
        let x50 = subgroupBroadcast(a6, 2u);
        c0[50] += b0 * x50;
        c1[50] += b1 * x50;
        let x51 = subgroupBroadcast(a6, 3u);
        c0[51] += b0 * x51;
        c1[51] += b1 * x51;
        let x52 = subgroupBroadcast(a6, 4u);
        c0[52] += b0 * x52;
        c1[52] += b1 * x52;
        let x53 = subgroupBroadcast(a6, 5u);
        c0[53] += b0 * x53;
        c1[53] += b1 * x53;
        let x54 = subgroupBroadcast(a6, 6u);
        c0[54] += b0 * x54;
        c1[54] += b1 * x54;
        let x55 = subgroupBroadcast(a6, 7u);
        c0[55] += b0 * x55;
        c1[55] += b1 * x55;
        let x56 = subgroupBroadcast(a7, 0u);
        c0[56] += b0 * x56;
        c1[56] += b1 * x56;
        let x57 = subgroupBroadcast(a7, 1u);
        c0[57] += b0 * x57;
        c1[57] += b1 * x57;
        let x58 = subgroupBroadcast(a7, 2u);
        c0[58] += b0 * x58;
        c1[58] += b1 * x58;
        let x59 = subgroupBroadcast(a7, 3u);
        c0[59] += b0 * x59;
        c1[59] += b1 * x59;
        let x60 = subgroupBroadcast(a7, 4u);
        c0[60] += b0 * x60;
        c1[60] += b1 * x60;
        let x61 = subgroupBroadcast(a7, 5u);
        c0[61] += b0 * x61;
        c1[61] += b1 * x61;
        let x62 = subgroupBroadcast(a7, 6u);
        c0[62] += b0 * x62;
        c1[62] += b1 * x62;
        let x63 = subgroupBroadcast(a7, 7u);
        c0[63] += b0 * x63;
        c1[63] += b1 * x63;
    }
    // Row r is in c0[0] / c1[0] at iteration r.
    for (var r = 0u; r < SG_ROWS; r++) {
        store4(m0 + r, col0, c0[0]);
        store4(m0 + r, col1, c1[0]);
        c0[0] = c0[1];
        c0[1] = c0[2];
        c0[2] = c0[3];
        c0[3] = c0[4];
        c0[4] = c0[5];
        c0[5] = c0[6];
        c0[6] = c0[7];
        c0[7] = c0[8];
        c0[8] = c0[9];
        c0[9] = c0[10];
        c0[10] = c0[11];
        c0[11] = c0[12];
        c0[12] = c0[13];
        c0[13] = c0[14];
        c0[14] = c0[15];
        c0[15] = c0[16];
        c0[16] = c0[17];
        c0[17] = c0[18];
        c0[18] = c0[19];
        c0[19] = c0[20];
        c0[20] = c0[21];
        c0[21] = c0[22];
        c0[22] = c0[23];
        c0[23] = c0[24];
        c0[24] = c0[25];
        c0[25] = c0[26];
        c0[26] = c0[27];
        c0[27] = c0[28];
        c0[28] = c0[29];
        c0[29] = c0[30];
        c0[30] = c0[31];
        c0[31] = c0[32];
        c0[32] = c0[33];
        c0[33] = c0[34];
        c0[34] = c0[35];
        c0[35] = c0[36];
        c0[36] = c0[37];
        c0[37] = c0[38];
        c0[38] = c0[39];
        c0[39] = c0[40];
        c0[40] = c0[41];
        c0[41] = c0[42];
        c0[42] = c0[43];
        c0[43] = c0[44];
        c0[44] = c0[45];
        c0[45] = c0[46];
        c0[46] = c0[47];
        c0[47] = c0[48];
        c0[48] = c0[49];
        c0[49] = c0[50];
        c0[50] = c0[51];
        c0[51] = c0[52];
        c0[52] = c0[53];
        c0[53] = c0[54];
        c0[54] = c0[55];
        c0[55] = c0[56];
        c0[56] = c0[57];
        c0[57] = c0[58];
        c0[58] = c0[59];
        c0[59] = c0[60];
        c0[60] = c0[61];
        c0[61] = c0[62];
        c0[62] = c0[63];
        c1[0] = c1[1];
        c1[1] = c1[2];
        c1[2] = c1[3];
        c1[3] = c1[4];
        c1[4] = c1[5];
        c1[5] = c1[6];
        c1[6] = c1[7];
        c1[7] = c1[8];
        c1[8] = c1[9];
        c1[9] = c1[10];
        c1[10] = c1[11];
        c1[11] = c1[12];
        c1[12] = c1[13];
        c1[13] = c1[14];
        c1[14] = c1[15];
        c1[15] = c1[16];
        c1[16] = c1[17];
        c1[17] = c1[18];
        c1[18] = c1[19];
        c1[19] = c1[20];
        c1[20] = c1[21];
        c1[21] = c1[22];
        c1[22] = c1[23];
        c1[23] = c1[24];
        c1[24] = c1[25];
        c1[25] = c1[26];
        c1[26] = c1[27];
        c1[27] = c1[28];
        c1[28] = c1[29];
        c1[29] = c1[30];
        c1[30] = c1[31];
        c1[31] = c1[32];
        c1[32] = c1[33];
        c1[33] = c1[34];
        c1[34] = c1[35];
        c1[35] = c1[36];
        c1[36] = c1[37];
        c1[37] = c1[38];
        c1[38] = c1[39];
        c1[39] = c1[40];
        c1[40] = c1[41];
        c1[41] = c1[42];
        c1[42] = c1[43];
        c1[43] = c1[44];
        c1[44] = c1[45];
        c1[45] = c1[46];
        c1[46] = c1[47];
        c1[47] = c1[48];
        c1[48] = c1[49];
        c1[49] = c1[50];
        c1[50] = c1[51];
        c1[51] = c1[52];
        c1[52] = c1[53];
        c1[53] = c1[54];
        c1[54] = c1[55];
        c1[55] = c1[56];
        c1[56] = c1[57];
        c1[57] = c1[58];
        c1[58] = c1[59];
        c1[59] = c1[60];
        c1[60] = c1[61];
        c1[61] = c1[62];
        c1[62] = c1[63];
    }
}
