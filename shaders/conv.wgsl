// 2-D convolution (NCHW, f32) as an implicit GEMM: the tiled product of shaders/tiled_gemm.wgsl
// (shared with matmul.wgsl: 64x64 block of the product per 8x8 workgroup, 8x8 per invocation, K
// in slices of 16 staged in workgroup memory), whose operand loads compute the im2col index on
// the fly instead of reading a materialized im2col buffer. `MODE` (an override constant) picks the loads; the
// tiling, the multiply-add core and the epilogue are shared by all three modes.
//
// Geometry (always in the direction of a plain convolution; src/kernels/conv.rs maps the
// transposed convolution onto it): image [N, CI, H, W], columns [N, CO, OH, OW], weight
// [CO, CI, KH, KW], stride s, padding p, dilation 1; tap (kh, kw) of output (oh, ow) reads
// image pixel (oh s - p + kh, ow s - p + kw), zero outside the image. With KK = CI KH KW:
//
// MODE 0 (forward: conv2d forward, and the data gradient of the transposed conv):
//   out[n, co, oh, ow] = sum_{k = (ci, kh, kw)} weight[co, k] image[n, ci, oh s - p + kh, ...]
//   GEMM M = CO, N = N OH OW (column j = (n, oh, ow)), K = KK;
//   A[co, k] = weight[co KK + k], B[k, j] = the im2col gather of `image`.
// MODE 1 (data gradient: conv2d backward-data, and the transposed conv forward):
//   out[n, ci, ih, iw] = sum_{k = (co, kh, kw)} weight[co, ci, kh, kw] cols[n, co, oh, ow]
//   where oh s = ih + p - kh (and likewise for w); taps with no such (oh, ow) read 0.
//   GEMM M = CI, N = N H W (column j = (n, ih, iw)), K = CO KH KW.
// MODE 2 (weight gradient: conv2d's, and the transposed conv's with the tensors' roles
//   swapped): out[co, k] = sum_{j = (n, oh, ow)} cols[n, co, oh, ow] image[n, ci, oh s - p + kh, ...]
//   GEMM M = CO, N = KK (column k = (ci, kh, kw)), K = N OH OW.
//
// Bindings: `opa` is the weight in modes 0 and 1 and `cols` in mode 2; `opb` is the image in
// modes 0 and 2 and `cols` in mode 1. Epilogue per output element (row = channel):
//   v = sum (+ bias[row] if HAS_BIAS); aux = v (STORE_PRE); v = act_forward(ACT, v);
//   v *= act_derivative(GRAD_ACT, aux) (HAS_GRAD); out = v (or out + v: ACCUMULATE).
// `aux` is a pre-activation of the output's shape: stored by a forward pass for its backward, read
// by a data gradient that flows on into the layer below's pre-activation.
//
// CHANNELS_LAST: the image tensor is [N, H, W, CI] (a model's input pixels, or its output
// picture) instead of NCHW; `cols` stays NCHW. It changes the im2col read (modes 0 and 2) and
// the mode 1 store. SUMS_CHANNELS_LAST does the same for `channel_sums`' tensor.
//
// `channel_sums` (its own entry point, 64 invocations per channel): sums[c] (+)= sum over
// n, h, w of t[n, c, h, w], the bias gradient of either convolution.

override MODE: u32 = 0u;
override HAS_BIAS: bool = false;
override ACT: u32 = 0u;
override ACCUMULATE: bool = false;
override STORE_PRE: bool = false;
override HAS_GRAD: bool = false;
override GRAD_ACT: u32 = 0u;
override CHANNELS_LAST: bool = false;
override SUMS_CHANNELS_LAST: bool = false;

struct ConvParams {
    batch: u32,
    ci: u32,
    h: u32,
    w: u32,
    co: u32,
    oh: u32,
    ow: u32,
    kh: u32,
    kw: u32,
    stride: u32,
    pad: u32,
    // The GEMM: out is m x n (in the layout above), inner dimension k.
    m: u32,
    n: u32,
    k: u32,
    tiles_n: u32,
    tiles: u32,
}

@group(0) @binding(0) var<uniform> cp: ConvParams;
@group(0) @binding(1) var<storage, read> opa: array<f32>;
@group(0) @binding(2) var<storage, read> opb: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<storage, read> bias: array<f32>;
@group(0) @binding(5) var<storage, read_write> aux: array<f32>;

// Index of image[n, c, y, x] in NCHW, or NHWC with CHANNELS_LAST.
fn image_index(n: u32, c: u32, y: u32, x: u32) -> u32 {
    if (CHANNELS_LAST) {
        return ((n * cp.h + y) * cp.w + x) * cp.ci + c;
    }
    return ((n * cp.ci + c) * cp.h + y) * cp.w + x;
}

// image[n, ci, oh s - p + kh, ow s - p + kw] for column position (n, oh, ow) and tap
// (ci, kh, kw) given flat: sp = oh OW + ow, tap = (ci KH + kh) KW + kw. Zero in the padding.
fn im2col(n: u32, sp: u32, tap: u32) -> f32 {
    let oh = sp / cp.ow;
    let ow = sp % cp.ow;
    let kw = tap % cp.kw;
    let r = tap / cp.kw;
    let kh = r % cp.kh;
    let ci = r / cp.kh;
    let ih = i32(oh * cp.stride + kh) - i32(cp.pad);
    let iw = i32(ow * cp.stride + kw) - i32(cp.pad);
    if (ih < 0 || iw < 0 || ih >= i32(cp.h) || iw >= i32(cp.w)) {
        return 0.0;
    }
    return opb[image_index(n, ci, u32(ih), u32(iw))];
}

// op(A)[row, kk], row < m and kk < k.
fn load_a(row: u32, kk: u32) -> f32 {
    switch MODE {
        case 3u: {
            // weight[co = kk, (ci, kh, kw) = row]: the weight read transposed.
            return opa[kk * cp.m + row];
        }
        case 1u: {
            // weight[co, ci = row, kh, kw] with kk = (co KH + kh) KW + kw.
            let taps = cp.kh * cp.kw;
            let co = kk / taps;
            return opa[(co * cp.ci + row) * taps + kk % taps];
        }
        case 2u: {
            // cols[n, co = row, oh, ow] with kk = (n, oh, ow).
            let sp = cp.oh * cp.ow;
            let n = kk / sp;
            return opa[(n * cp.co + row) * sp + kk % sp];
        }
        default: {
            return opa[row * cp.k + kk];
        }
    }
}

// op(B)[kk, col], kk < k and col < n.
fn load_b(kk: u32, col: u32) -> f32 {
    switch MODE {
        case 3u: {
            // cols[n, co = kk, oh, ow] for col = (n, oh, ow).
            let sp = cp.oh * cp.ow;
            return opb[((col / sp) * cp.co + kk) * sp + col % sp];
        }
        case 1u: {
            // cols[n, co, oh, ow] for image pixel col = (n, ih, iw) and kk = (co, kh, kw), where
            // oh s = ih + p - kh; zero where no output position uses this tap.
            let hw = cp.h * cp.w;
            let n = col / hw;
            let ih = (col % hw) / cp.w;
            let iw = col % cp.w;
            let kw = kk % cp.kw;
            let kh = (kk / cp.kw) % cp.kh;
            let co = kk / (cp.kw * cp.kh);
            let th = i32(ih + cp.pad) - i32(kh);
            let tw = i32(iw + cp.pad) - i32(kw);
            if (th < 0 || tw < 0) {
                return 0.0;
            }
            let s = cp.stride;
            let oh = u32(th) / s;
            let ow = u32(tw) / s;
            if (u32(th) % s != 0u || u32(tw) % s != 0u || oh >= cp.oh || ow >= cp.ow) {
                return 0.0;
            }
            return opb[((n * cp.co + co) * cp.oh + oh) * cp.ow + ow];
        }
        case 2u: {
            // kk = (n, oh, ow), col = tap.
            let sp = cp.oh * cp.ow;
            return im2col(kk / sp, kk % sp, col);
        }
        default: {
            // col = (n, oh, ow), kk = tap.
            let sp = cp.oh * cp.ow;
            return im2col(col / sp, col % sp, kk);
        }
    }
}

fn conv_epilogue(row: u32, col: u32, sum: f32) {
    if (row >= cp.m || col >= cp.n) {
        return;
    }
    if (MODE == 3u) {
        // The column buffer [n, (ci, kh, kw) = row, oh, ow], before col2im.
        let sp = cp.oh * cp.ow;
        out[((col / sp) * cp.m + row) * sp + col % sp] = sum;
        return;
    }
    var i = row * cp.n + col;
    if (MODE == 1u && CHANNELS_LAST) {
        // col = (n, ih, iw) in order: NHWC with `row` as the channel.
        i = col * cp.m + row;
    } else if (MODE != 2u) {
        // col = (n, spatial position): NCHW with `row` as the channel.
        let sp = select(cp.oh * cp.ow, cp.h * cp.w, MODE == 1u);
        i = ((col / sp) * cp.m + row) * sp + col % sp;
    }
    var v = sum;
    if (HAS_BIAS) {
        v += bias[row];
    }
    if (STORE_PRE) {
        aux[i] = v;
    }
    v = act_forward(ACT, v);
    if (HAS_GRAD) {
        v *= act_derivative(GRAD_ACT, aux[i]);
    }
    if (ACCUMULATE) {
        v += out[i];
    }
    out[i] = v;
}

fn gemm_dims() -> vec3<u32> {
    return vec3<u32>(cp.m, cp.n, cp.k);
}

// Consecutive invocations stage A along k (in mode 2 `cols` is contiguous along k = (n, oh, ow)
// anyway; mode 3's transposed weight along m) and B along the columns: neighbouring output
// pixels.
fn gemm_a_along_m() -> bool {
    return MODE == 3u;
}

fn gemm_b_along_k() -> bool {
    return false;
}

fn gemm_load_a(row: u32, kk: u32) -> f32 {
    return load_a(row, kk);
}

fn gemm_load_b(kk: u32, col: u32) -> f32 {
    return load_b(kk, col);
}

fn gemm_store(row: u32, col: u32, sum: f32) {
    conv_epilogue(row, col, sum);
}

@compute @workgroup_size(8, 8)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_id) lid: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let t = flat_workgroup(wid, nwg);
    if (t >= cp.tiles) {
        return;
    }
    gemm_tile((t / cp.tiles_n) * TILE, (t % cp.tiles_n) * TILE, lid, li);
}

// channel_sums: one workgroup per channel c of t = `opb` [batch, co, oh, ow] (or [batch, oh, ow,
// co] with SUMS_CHANNELS_LAST) (the tensor whose
// channel sums are the bias gradient), each invocation striding over n and positions, then a
// tree. Written to `out[c]`, or added with ACCUMULATE.
var<workgroup> tree: array<f32, THREADS>;

@compute @workgroup_size(64)
fn channel_sums(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) li: u32) {
    let c = flat_workgroup(wid, nwg);
    if (c >= cp.co) {
        return;
    }
    let sp = cp.oh * cp.ow;
    let total = cp.batch * sp;
    var s = 0.0;
    for (var j = li; j < total; j += THREADS) {
        if (SUMS_CHANNELS_LAST) {
            s += opb[j * cp.co + c];
        } else {
            s += opb[((j / sp) * cp.co + c) * sp + j % sp];
        }
    }
    tree[li] = s;
    for (var half = THREADS / 2u; half > 0u; half = half >> 1u) {
        workgroupBarrier();
        if (li < half) {
            tree[li] = tree[li] + tree[li + half];
        }
    }
    if (li == 0u) {
        if (ACCUMULATE) {
            out[c] = out[c] + tree[0];
        } else {
            out[c] = tree[0];
        }
    }
}

// Direct kernels for the passes the implicit GEMM serves poorly: `gather` (MODE 1) when
// the image has few channels (most of a 64-row tile idle) and stride > 1 (most taps read zero);
// `direct_reduce` (MODE 2) when the weight has few elements and the sum over positions is long
// (few tiles, each with a long K loop, leave the device idle). src/kernels/conv.rs times each
// against the GEMM and keeps the faster. Both end in the same epilogue.

// MODE 1, one invocation per image element [n, row = ci, ih, iw] in NCHW order (`gather`): the
// sum over the taps that land on it, kh ≡ ih + p (mod s), skipping the rest. Per tap, either
// the sum over output channels of weight × cols (the direct variant), or, with FROM_COLUMNS,
// one entry of the column buffer T that the columns variant's MODE 3 GEMM wrote (`opa`):
//   T[n, (ci, kh, kw), oh, ow] = sum_co weight[co, ci, kh, kw] cols[n, co, oh, ow]
// (M = CI KH KW, N = N OH OW, K = CO: no zero taps, and M fills the tile when CI is small).
override FROM_COLUMNS: bool = false;

fn tap_value(n: u32, row: u32, kh: u32, kw: u32, oh: u32, ow: u32) -> f32 {
    let taps = cp.kh * cp.kw;
    let out_sp = cp.oh * cp.ow;
    let tap = kh * cp.kw + kw;
    if (FROM_COLUMNS) {
        return opa[((n * cp.ci + row) * taps + tap) * out_sp + oh * cp.ow + ow];
    }
    var w_at = row * taps + tap;
    var c_at = n * cp.co * out_sp + oh * cp.ow + ow;
    var sum = 0.0;
    for (var co = 0u; co < cp.co; co++) {
        sum += opa[w_at] * opb[c_at];
        w_at += cp.ci * taps;
        c_at += out_sp;
    }
    return sum;
}

@compute @workgroup_size(64)
fn gather(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) li: u32) {
    let hw = cp.h * cp.w;
    let e = flat_workgroup(wid, nwg) * THREADS + li;
    if (e >= cp.batch * cp.ci * hw) {
        return;
    }
    let n = e / (cp.ci * hw);
    let row = (e / hw) % cp.ci;
    let pix = e % hw;
    let ih = pix / cp.w;
    let iw = pix % cp.w;
    let s = cp.stride;
    var sum = 0.0;
    for (var kh = (ih + cp.pad) % s; kh < cp.kh && kh <= ih + cp.pad; kh += s) {
        let oh = (ih + cp.pad - kh) / s;
        if (oh >= cp.oh) {
            continue;
        }
        for (var kw = (iw + cp.pad) % s; kw < cp.kw && kw <= iw + cp.pad; kw += s) {
            let ow = (iw + cp.pad - kw) / s;
            if (ow >= cp.ow) {
                continue;
            }
            sum += tap_value(n, row, kh, kw, oh, ow);
        }
    }
    conv_epilogue(row, n * hw + pix, sum);
}

// MODE 2, one workgroup per weight element [row = co, col = (ci, kh, kw)]: the sum over every
// (n, oh, ow), strided over the invocations, then a tree.
@compute @workgroup_size(64)
fn direct_reduce(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) li: u32) {
    let e = flat_workgroup(wid, nwg);
    if (e >= cp.m * cp.n) {
        return;
    }
    let row = e / cp.n;
    let col = e % cp.n;
    let sp = cp.oh * cp.ow;
    var s = 0.0;
    for (var j = li; j < cp.k; j += THREADS) {
        s += load_a(row, j) * im2col(j / sp, j % sp, col);
    }
    tree[li] = s;
    for (var half = THREADS / 2u; half > 0u; half = half >> 1u) {
        workgroupBarrier();
        if (li < half) {
            tree[li] = tree[li] + tree[li + half];
        }
    }
    if (li == 0u) {
        conv_epilogue(row, col, tree[0]);
    }
}
