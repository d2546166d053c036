//! NumPy `.npy` (format 1.0–3.0), C order, uint8 or little-endian float32, shape (items, ...).

use std::path::Path;

use super::{Dataset, Input, Pixels, Result, check_unit_range};

const MAGIC: &[u8] = b"\x93NUMPY";

/// The longest header accepted. NumPy writes a few dozen bytes (padded to 64) and by default
/// refuses to read headers over 10,000; a longer one is corrupt, not a big array.
const MAX_HEADER: usize = 1 << 20;

pub fn load_npy(path: &Path) -> Result<Dataset> {
    let mut input = Input::open(path)?;
    let mut head = [0u8; 8];
    let got = input.fill(&mut head)?;
    if got < MAGIC.len() || &head[..MAGIC.len()] != MAGIC {
        return input.fail("not a .npy file (missing the \\x93NUMPY magic)");
    }
    if got < 8 {
        return input.fail(format!("truncated header: {got} bytes"));
    }
    let len_bytes = match head[6] {
        1 => 2,
        2 | 3 => 4,
        v => return input.fail(format!("unsupported .npy format version {v}")),
    };
    let mut len = [0u8; 4];
    if input.fill(&mut len[..len_bytes])? < len_bytes {
        return input.fail(format!("truncated header: {} bytes", input.pos()));
    }
    let header_len = u32::from_le_bytes(len) as usize;
    if header_len > MAX_HEADER {
        return input.fail(format!(
            "header length {header_len} is implausible (more than {MAX_HEADER} bytes): corrupt file"
        ));
    }
    let mut header = vec![0u8; header_len];
    if input.fill(&mut header)? < header_len {
        return input.fail(format!(
            "truncated header: the file ends after {} bytes, the header claims {header_len}",
            input.pos()
        ));
    }
    let header = String::from_utf8_lossy(&header);
    let field = |key: &str| -> Option<String> {
        let at = header.find(&format!("'{key}'"))? + key.len() + 2;
        let rest = header[at..].trim_start().strip_prefix(':')?.trim_start();
        let end = if rest.starts_with('(') {
            rest.find(')')? + 1
        } else {
            rest.find([',', '}'])?
        };
        Some(rest[..end].trim().trim_matches('\'').to_string())
    };
    let (Some(descr), Some(order), Some(shape)) =
        (field("descr"), field("fortran_order"), field("shape"))
    else {
        return input.fail(format!("malformed header: {}", header.trim_end()));
    };
    match order.as_str() {
        "False" => {}
        "True" => {
            return input
                .fail("Fortran-order arrays are not supported; save with np.ascontiguousarray");
        }
        other => return input.fail(format!("malformed header: fortran_order is `{other}`")),
    }
    let Ok(dims) = shape
        .trim_matches(|c| c == '(' || c == ')')
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>())
        .collect::<std::result::Result<Vec<usize>, _>>()
    else {
        return input.fail(format!("malformed shape {shape}"));
    };
    if dims.len() < 2 {
        return input.fail(format!(
            "shape {shape}: expected (items, pixels...) with at least 2 dimensions"
        ));
    }
    let elem: u64 = match descr.as_str() {
        "|u1" | "<u1" | "u1" => 1,
        "<f4" | "f4" => 4,
        other => {
            return input.fail(format!(
                "unsupported dtype `{other}`: only uint8 (|u1) and float32 (<f4) are supported"
            ));
        }
    };
    if dims[0] == 0 {
        return input.fail("empty dataset: shape has 0 items");
    }
    if dims[1..].contains(&0) {
        return input.fail(format!("shape {shape}: 0 pixels per item"));
    }
    let Some(needed) = dims.iter().try_fold(elem, |a, &d| a.checked_mul(d as u64)) else {
        return input.fail(format!("shape {shape} needs more than 2^64 bytes of data"));
    };
    let data = match input.read_body(needed)? {
        Ok(data) => data,
        Err(held) => {
            return input.fail(format!(
                "shape {shape} needs {needed} bytes of data, {held}"
            ));
        }
    };
    let dim = dims[1..].iter().product();
    let pixels = if elem == 1 {
        Pixels::U8(data)
    } else {
        let v: Vec<f32> = data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        check_unit_range(&input.path, &v, dim)?;
        Pixels::F32(v)
    };
    Ok(Dataset {
        pixels,
        labels: None,
        len: dims[0],
        item_shape: dims[1..].to_vec(),
    })
}
