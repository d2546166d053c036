@compute @workgroup_size(1)
fn main_placeholder() {}
