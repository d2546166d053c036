// Operand reads for matmul_subgroup.wgsl from `rgba32float` textures, four consecutive elements
// per texel: a quarter of the image loads of subgroup_texels.wgsl.
//
// Needs the operands' contiguous dimensions to be multiples of 4 (the wrapper checks): NN K and
// N, TN M and N, NT K; and column blocks (matmul_common.wgsl) of a multiple of 4 elements at
// strides of a multiple of 4, so no texel straddles two blocks. Texel t of `ta` holds elements
// 4t .. 4t+3 of A.
// - NN: lane l loads op(A) rows m0 + 8g + l (g < 4) at k .. k+3 as one texel each;
// - TN: A is KxM; lane l loads the texels A[k + j, m0 + 4l .. +3] (j < 4), so it holds rows
//   4l .. 4l+3 of the tile; p_g gathers row 4l + g's four k values (a free transpose: each vec4
//   component is its own register on llvmpipe). Accumulator 8g + s is then row 4s + g;
// - B: NN loads texels B[k + j, col .. col+3]; NT loads B[col + c, k .. k+3] and transposes.

@group(0) @binding(8) var ta: texture_storage_2d<rgba32float, read>;
@group(0) @binding(9) var tb: texture_storage_2d<rgba32float, read>;

fn a_texel(t: u32) -> vec4<f32> {
    return textureLoad(ta, vec2<u32>(t & ((1u << mm.a_shift) - 1u), t >> mm.a_shift));
}

fn b_texel(t: u32) -> vec4<f32> {
    return textureLoad(tb, vec2<u32>(t & ((1u << mm.b_shift) - 1u), t >> mm.b_shift));
}

// NN: op(A)[row, k .. k+3] (K a multiple of 4, so k + 3 < K); row M is ones with COLUMN_SUMS.
fn load_a_nn(row: u32, k: u32) -> vec4<f32> {
    let v = a_texel(a_index(min(row, mm.m - 1u), k) >> 2u);
    return select(v, vec4<f32>(1.0), COLUMN_SUMS && row == mm.m);
}

// TN: A[k, r0 .. r0+3] (zero for k beyond K); with COLUMN_SUMS the virtual row M is ones.
fn load_a_tn(k: u32, r0: u32) -> vec4<f32> {
    let v = a_texel(a_index(min(k, mm.k - 1u), min(r0, mm.m - 4u)) >> 2u);
    let rows = vec4<u32>(r0, r0 + 1u, r0 + 2u, r0 + 3u);
    let ones = vec4<bool>(COLUMN_SUMS) & (rows == vec4<u32>(mm.m));
    return select(vec4<f32>(0.0), select(v, vec4<f32>(1.0), ones), k < mm.k);
}

// Column j of the result is op(B)[k + j, col .. col+3] (zero for k + j beyond K).
fn load_b(k: u32, col: u32) -> mat4x4<f32> {
    if (TRANS_B) {
        // B is NxK with K a multiple of 4: texel c is B[col + c, k .. k+3].
        let nl = mm.n - 1u;
        let u = mat4x4<f32>(b_texel(b_index(min(col, nl), k) >> 2u),
                            b_texel(b_index(min(col + 1u, nl), k) >> 2u),
                            b_texel(b_index(min(col + 2u, nl), k) >> 2u),
                            b_texel(b_index(min(col + 3u, nl), k) >> 2u));
        return transpose(u);
    }
    let kl = mm.k - 1u;
    let c = min(col, mm.n - 4u);
    let z = vec4<f32>(0.0);
    return mat4x4<f32>(select(z, b_texel(b_index(min(k, kl), c) >> 2u), k < mm.k),
                       select(z, b_texel(b_index(min(k + 1u, kl), c) >> 2u), k + 1u < mm.k),
                       select(z, b_texel(b_index(min(k + 2u, kl), c) >> 2u), k + 2u < mm.k),
                       select(z, b_texel(b_index(min(k + 3u, kl), c) >> 2u), k + 3u < mm.k));
}

// Lane l's four vec4s to broadcast (see the header).
fn load_a_rows(m0: u32, lane: u32, k: u32) -> mat4x4<f32> {
    if (TRANS_A) {
        let r0 = m0 + 4u * lane;
        return transpose(mat4x4<f32>(load_a_tn(k, r0), load_a_tn(k + 1u, r0),
                                     load_a_tn(k + 2u, r0), load_a_tn(k + 3u, r0)));
    }
    return mat4x4<f32>(load_a_nn(m0 + lane, k), load_a_nn(m0 + 8u + lane, k),
                       load_a_nn(m0 + 16u + lane, k), load_a_nn(m0 + 24u + lane, k));
}

// NN: accumulator r is row r. TN: accumulator 8g + s holds p_g of lane s, row 4s + g.
fn tile_row(r: u32) -> u32 {
    return select(r, 4u * (r % 8u) + r / 8u, TRANS_A);
}
