// Operand reads for matmul_subgroup.wgsl from `r32float` textures, one element per image load:
// any M, N, K >= 1. Element i of A (B) is texel (i mod 2^a_shift, i >> a_shift) of `ta` (`tb`).
// Lane l loads op(A) rows m0 + 8g + l (g < 4) over k .. k+3, so accumulator r is tile row r.

@group(0) @binding(8) var ta: texture_storage_2d<r32float, read>;
@group(0) @binding(9) var tb: texture_storage_2d<r32float, read>;

fn a_at(i: u32) -> f32 {
    return textureLoad(ta, vec2<u32>(i & ((1u << mm.a_shift) - 1u), i >> mm.a_shift)).x;
}

fn b_at(i: u32) -> f32 {
    return textureLoad(tb, vec2<u32>(i & ((1u << mm.b_shift) - 1u), i >> mm.b_shift)).x;
}

fn k_valid(k: u32) -> vec4<bool> {
    return vec4<u32>(k, k + 1u, k + 2u, k + 3u) < vec4<u32>(mm.k);
}

// op(A)[row, k .. k+3], row and k clamped, k beyond K zeroed (row M is ones with COLUMN_SUMS).
fn load_a(row: u32, k: u32) -> vec4<f32> {
    let r = min(row, mm.m - 1u);
    let kl = mm.k - 1u;
    let k0 = min(k, kl);
    let k1 = min(k + 1u, kl);
    let k2 = min(k + 2u, kl);
    let k3 = min(k + 3u, kl);
    var v: vec4<f32>;
    if (TRANS_A) {
        v = vec4<f32>(a_at(a_index(k0, r)), a_at(a_index(k1, r)), a_at(a_index(k2, r)),
                      a_at(a_index(k3, r)));
    } else {
        v = vec4<f32>(a_at(a_index(r, k0)), a_at(a_index(r, k1)), a_at(a_index(r, k2)),
                      a_at(a_index(r, k3)));
    }
    if (COLUMN_SUMS && row == mm.m) {
        v = vec4<f32>(1.0);
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
        return vec4<f32>(b_at(b_index(c0, k)), b_at(b_index(c1, k)), b_at(b_index(c2, k)),
                         b_at(b_index(c3, k)));
    }
    return vec4<f32>(b_at(b_index(k, c0)), b_at(b_index(k, c1)), b_at(b_index(k, c2)),
                     b_at(b_index(k, c3)));
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

// Lane l's rows m0 + 8g + l at k .. k+3.
fn load_a_rows(m0: u32, lane: u32, k: u32) -> mat4x4<f32> {
    return mat4x4<f32>(load_a(m0 + lane, k), load_a(m0 + 8u + lane, k), load_a(m0 + 16u + lane, k),
                       load_a(m0 + 24u + lane, k));
}

fn tile_row(r: u32) -> u32 {
    return r;
}
