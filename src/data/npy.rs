//! NumPy `.npy` (format 1.0–3.0), C order, uint8 or little-endian float32, shape (items, ...).

use std::path::Path;

use super::{Dataset, MAX_FILE_BYTES, Pixels, Result, check_unit_range, fail, read_maybe_gz};

const MAGIC: &[u8] = b"\x93NUMPY";

pub fn load_npy(path: &Path) -> Result<Dataset> {
    let bytes = read_maybe_gz(path, MAX_FILE_BYTES)?;
    if !bytes.starts_with(MAGIC) || bytes.len() < 10 {
        return fail(path, "not a .npy file (missing the \\x93NUMPY magic)");
    }
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize,
            12,
        ),
        v => return fail(path, format!("unsupported .npy format version {v}")),
    };
    let Some(header) = bytes.get(start..start + header_len) else {
        return fail(path, "truncated header");
    };
    let header = String::from_utf8_lossy(header);
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
        return fail(path, format!("malformed header: {header}"));
    };
    if order != "False" {
        return fail(
            path,
            "Fortran-order arrays are not supported; save with np.ascontiguousarray",
        );
    }
    let dims: Vec<usize> = shape
        .trim_matches(|c| c == '(' || c == ')')
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>())
        .collect::<std::result::Result<_, _>>()
        .or_else(|_| fail(path, format!("malformed shape {shape}")))?;
    if dims.len() < 2 {
        return fail(
            path,
            format!("shape {shape}: expected (items, pixels...) with at least 2 dimensions"),
        );
    }
    let count = dims
        .iter()
        .try_fold(1u64, |a, &d| a.checked_mul(d as u64))
        .unwrap_or(u64::MAX);
    let data = &bytes[start + header_len..];
    let elem = match descr.as_str() {
        "|u1" | "u1" => 1,
        "<f4" | "f4" => 4,
        other => {
            return fail(
                path,
                format!(
                    "unsupported dtype `{other}`: only uint8 (|u1) and float32 (<f4) are supported"
                ),
            );
        }
    };
    if count.saturating_mul(elem) != data.len() as u64 {
        return fail(
            path,
            format!(
                "shape {shape} needs {} bytes of data, the file holds {}",
                count.saturating_mul(elem),
                data.len()
            ),
        );
    }
    if dims[0] == 0 {
        return fail(path, "empty dataset: shape has 0 items");
    }
    let pixels = if elem == 1 {
        Pixels::U8(data.to_vec())
    } else {
        let v: Vec<f32> = data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        check_unit_range(path, &v)?;
        Pixels::F32(v)
    };
    Ok(Dataset {
        pixels,
        labels: None,
        len: dims[0],
        item_shape: dims[1..].to_vec(),
    })
}
