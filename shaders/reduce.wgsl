// Reductions: column sums (bias gradients) and two-pass sums / sums of squares (loss totals,
// the global gradient norm for clipping). Workgroup-memory tree reductions: portable, no
// subgroup operations needed.

struct Params {
    rows: u32,
    cols: u32,
    // partial_sums: elements; finish_sum: number of partials.
    len: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;
// finish_sum with ACCUMULATE: a running total (e.g. the logging interval's loss) += the sum.
@group(0) @binding(3) var<storage, read_write> running: array<f32>;

override SQUARE: bool = false;
override ACCUMULATE: bool = false;

const WG: u32 = 256u;
// Elements each invocation folds before the tree: a workgroup covers WG * ITEMS elements.
const ITEMS: u32 = 16u;

var<workgroup> tree: array<f32, WG>;

fn term(v: f32) -> f32 {
    return select(v, v * v, SQUARE);
}

// Sums tree[0..WG) into tree[0]; every invocation must call it.
fn reduce_tree(lid: u32) {
    for (var s = WG / 2u; s > 0u; s = s >> 1u) {
        workgroupBarrier();
        if (lid < s) {
            tree[lid] = tree[lid] + tree[lid + s];
        }
    }
    workgroupBarrier();
}

// dst[c] (+)= sum over rows of src[r * cols + c]: one invocation per column, walking rows so
// neighbouring invocations read neighbouring addresses.
@compute @workgroup_size(WG)
fn column_sums(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let c = flat_workgroup(wid, nwg) * WG + lid;
    if (c >= params.cols) {
        return;
    }
    var acc = 0.0;
    for (var r = 0u; r < params.rows; r = r + 1u) {
        acc = acc + src[r * params.cols + c];
    }
    dst[c] = select(acc, dst[c] + acc, ACCUMULATE);
}

// dst[workgroup] = sum of term(src[i]) over the workgroup's contiguous chunk.
@compute @workgroup_size(WG)
fn partial_sums(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let group = flat_workgroup(wid, nwg);
    let base = group * WG * ITEMS;
    var acc = 0.0;
    for (var j = 0u; j < ITEMS; j = j + 1u) {
        let i = base + j * WG + lid;
        if (i < params.len) {
            acc = acc + term(src[i]);
        }
    }
    tree[lid] = acc;
    reduce_tree(lid);
    if (lid == 0u) {
        dst[group] = tree[0];
    }
}

// dst[0] = sum of src[0..len) (the partials); with ACCUMULATE also running[0] += dst[0].
@compute @workgroup_size(WG)
fn finish_sum(@builtin(local_invocation_index) lid: u32) {
    var acc = 0.0;
    for (var i = lid; i < params.len; i = i + WG) {
        acc = acc + src[i];
    }
    tree[lid] = acc;
    reduce_tree(lid);
    if (lid == 0u) {
        dst[0] = tree[0];
        if (ACCUMULATE) {
            running[0] = running[0] + tree[0];
        }
    }
}
