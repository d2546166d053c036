// Batch assembly from the device-resident dataset: the dataset stays as bytes (four pixels per
// u32, 4x smaller than f32, so full Fashion-MNIST fits one binding), and each step gathers its
// rows through the epoch's permutation, converting to f32 in [0, 1].

struct Params {
    rows: u32,
    dim: u32,
    // Index into `perm` of the batch's first row; rewritten each step.
    first: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> pixels: array<u32>;
@group(0) @binding(2) var<storage, read> perm: array<u32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

const WG: u32 = 256u;

@compute @workgroup_size(WG)
fn gather(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    let i = flat_workgroup(wid, nwg) * WG + lid;
    if (i >= params.rows * params.dim) {
        return;
    }
    let row = i / params.dim;
    let col = i - row * params.dim;
    let byte = perm[params.first + row] * params.dim + col;
    let word = pixels[byte >> 2u];
    out[i] = f32((word >> ((byte & 3u) * 8u)) & 0xffu) / 255.0;
}
