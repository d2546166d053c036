// Batch assembly from the device-resident dataset: the dataset stays as bytes (four pixels per
// u32, 4x smaller than f32, so full Fashion-MNIST fits one binding), and each step gathers its
// rows through the epoch's permutation, converting to f32 in [0, 1].
//
// With BINARIZE each pixel p = byte / 255 becomes a Bernoulli(p) draw: 1 when the Philox word of
// (block of the column, item, draw, 1) says u < p. The comparison is done in integers, exactly:
// u = (2k + 1) 2^-24 with k the word's top 23 bits, so u < byte/255 <=> (2k + 1) 255 < byte 2^24
// (both sides < 2^32). A fixed `draw` gives static binarization, a new one per epoch dynamic.

override BINARIZE: bool = false;

struct Params {
    // Distinct rows, and rows written (the distinct ones repeated, for K samples per item).
    rows: u32,
    total: u32,
    dim: u32,
    // Index into `perm` of the batch's first row; rewritten each step.
    first: u32,
    // Which binarization of the dataset (third Philox counter word).
    draw: u32,
    seed_lo: u32,
    seed_hi: u32,
    _pad0: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
// Bytes packed four to a word, or (FLOAT_PIXELS) one f32 per word.
@group(0) @binding(1) var<storage, read> pixels: array<u32>;
@group(0) @binding(2) var<storage, read> perm: array<u32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

const WG: u32 = 256u;

// Float datasets (CSV/NPY float32 in [0, 1]) stay f32 on the device rather than being quantized.
override FLOAT_PIXELS: bool = false;

// The k of u = (2k + 1)·2⁻²⁴ for columns 4·block .. 4·block + 3 of `item`: one Philox call.
fn block_draws(item: u32, block: u32) -> vec4<u32> {
    let words = philox4x32_10(vec4<u32>(block, item, params.draw, 1u),
                              vec2<u32>(params.seed_lo, params.seed_hi));
    return words >> vec4<u32>(9u);
}

// The k of pixel `col`'s uniform.
fn draw_k(item: u32, col: u32) -> u32 {
    return block_draws(item, col / 4u)[col & 3u];
}

// Bernoulli(byte / 255) from the uniform's k: u < byte/255 ⇔ (2k + 1)·255 < byte·2²⁴, in
// integers.
fn byte_draw(byte: u32, k: u32) -> f32 {
    return select(0.0, 1.0, (2u * k + 1u) * 255u < (byte << 24u));
}

fn binarized(byte: u32, item: u32, col: u32) -> f32 {
    return byte_draw(byte, draw_k(item, col));
}

// Bernoulli(p): u < p ⇔ 2k + 1 < p·2²⁴, both sides exact in f32 (2k + 1 < 2²⁴).
fn binarized_float(p: f32, item: u32, col: u32) -> f32 {
    return select(0.0, 1.0, f32(2u * draw_k(item, col) + 1u) < p * 16777216.0);
}

@compute @workgroup_size(WG)
fn gather(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    let i = flat_workgroup(wid, nwg) * WG + lid;
    if (i >= params.total * params.dim) {
        return;
    }
    let row = i / params.dim;
    let col = i - row * params.dim;
    let item = perm[params.first + row % params.rows];
    let index = item * params.dim + col;
    if (FLOAT_PIXELS) {
        let p = bitcast<f32>(pixels[index]);
        out[i] = select(p, binarized_float(p, item, col), BINARIZE);
        return;
    }
    let byte = (pixels[index >> 2u] >> ((index & 3u) * 8u)) & 0xffu;
    if (BINARIZE) {
        out[i] = binarized(byte, item, col);
    } else {
        out[i] = f32(byte) / 255.0;
    }
}

// `gather` for byte pixels when dim % 4 == 0: one invocation per packed word (four pixels of one
// row, one Philox call for the four when binarizing) and one workgroup per WORDS_WG words of a
// row, so the row comes from the workgroup index instead of a per-pixel integer division (which
// llvmpipe runs as scalar divisions, one per lane: most of `gather`'s time there).
const WORDS_WG: u32 = 64u;

@compute @workgroup_size(WORDS_WG)
fn gather_words(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let words = params.dim / 4u;
    let tiles = (words + WORDS_WG - 1u) / WORDS_WG;
    let t = flat_workgroup(wid, nwg);
    let row = t / tiles;
    let w = (t - row * tiles) * WORDS_WG + lid;
    if (row >= params.total || w >= words) {
        return;
    }
    let item = perm[params.first + row % params.rows];
    let word = pixels[item * words + w];
    let base = row * params.dim + 4u * w;
    if (BINARIZE) {
        // Columns 4w .. 4w+3 all draw from block w.
        let ks = block_draws(item, w);
        for (var j = 0u; j < 4u; j++) {
            out[base + j] = byte_draw((word >> (8u * j)) & 0xffu, ks[j]);
        }
    } else {
        for (var j = 0u; j < 4u; j++) {
            out[base + j] = f32((word >> (8u * j)) & 0xffu) / 255.0;
        }
    }
}
