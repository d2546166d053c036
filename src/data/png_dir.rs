//! A folder of PNG images: `.png` files directly in it (unlabelled), or in class subfolders (the
//! label is the subfolder's index in sorted name order).
//!
//! Every image is expanded to 8-bit grayscale or 8-bit RGB: palettes and 1/2/4-bit grayscale are
//! expanded, 16-bit samples are scaled to 8 bits (rounded, 65535 → 255), and an alpha channel
//! (or a `tRNS` transparency chunk) is composited on black, i.e. each sample is multiplied by its
//! pixel's opacity. All images must then have the same width, height and channel count.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use png::{BitDepth, ColorType, DecodingError, Transformations};

use super::{DataError, Dataset, Pixels, Result, fail};

const PNG_SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1a, b'\n'];

/// Deflate (the compression inside a PNG) never expands data more than 1032:1; a header claiming
/// more image data than this many times the file's size is corrupt, and is refused before its
/// pixels are allocated.
const MAX_DEFLATE_RATIO: u128 = 1100;

/// The most classes a byte label can name.
const MAX_CLASSES: usize = 256;

/// The images of a folder and, where they are in class subfolders, the class names in label order
/// (label `i` is `classes[i]`); empty for a flat folder.
#[derive(Debug, Clone, PartialEq)]
pub struct PngFolder {
    pub set: Dataset,
    pub classes: Vec<String>,
}

/// Loads every `.png` in `dir` (extension case-insensitive), or in its class subfolders; see the
/// module documentation for the layouts and the pixel conversion.
pub fn load_png_dir(dir: &Path) -> Result<PngFolder> {
    let listing = list(dir)?;
    if listing.files.is_empty() {
        return fail(
            dir,
            "no .png images here, directly or in class subfolders (one subfolder per class)",
        );
    }
    decode(dir, listing)
}

/// The PNG files a folder holds, in load order, with their labels when in class subfolders.
pub(crate) struct Listing {
    pub files: Vec<PathBuf>,
    labels: Option<Vec<u8>>,
    classes: Vec<String>,
}

/// Finds the PNGs in `dir` without opening them. Hidden entries (names starting with `.`, such as
/// macOS's `._name.png` resource forks) and files of other types are ignored, and so are
/// subfolders holding no PNG. Images both directly in `dir` and in subfolders are refused, since
/// it is unclear whether the subfolders are classes.
pub(crate) fn list(dir: &Path) -> Result<Listing> {
    let top = entries(dir)?;
    let direct: Vec<PathBuf> = top
        .iter()
        .filter(|p| is_png(p) && p.is_file())
        .cloned()
        .collect();
    let mut classes = Vec::new();
    let mut class_files = Vec::new();
    for sub in top.iter().filter(|p| p.is_dir()) {
        let pngs: Vec<PathBuf> = entries(sub)?
            .into_iter()
            .filter(|p| is_png(p) && p.is_file())
            .collect();
        if !pngs.is_empty() {
            classes.push(file_name(sub));
            class_files.push(pngs);
        }
    }
    if classes.is_empty() {
        return Ok(Listing {
            files: direct,
            labels: None,
            classes,
        });
    }
    if let Some(first) = direct.first() {
        return fail(
            dir,
            format!(
                "holds .png images both directly ({}) and in subfolders ({}/): put every image \
                 in a class subfolder, or all of them directly in the folder",
                file_name(first),
                classes[0]
            ),
        );
    }
    if classes.len() > MAX_CLASSES {
        return fail(
            dir,
            format!(
                "{} subfolders hold .png images: labels are bytes, so at most {MAX_CLASSES} \
                 classes are supported",
                classes.len()
            ),
        );
    }
    let labels = class_files
        .iter()
        .enumerate()
        .flat_map(|(label, files)| std::iter::repeat_n(label as u8, files.len()))
        .collect();
    Ok(Listing {
        files: class_files.into_iter().flatten().collect(),
        labels: Some(labels),
        classes,
    })
}

/// The non-hidden entries of `dir`, sorted by name.
fn entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let read = std::fs::read_dir(dir).or_else(|e| fail(dir, format!("cannot read: {e}")))?;
    let mut paths = Vec::new();
    for entry in read {
        let entry = entry.or_else(|e| fail(dir, format!("cannot read: {e}")))?;
        if !entry.file_name().as_encoded_bytes().starts_with(b".") {
            paths.push(entry.path());
        }
    }
    paths.sort();
    Ok(paths)
}

fn is_png(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("png"))
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// What every image must match: the first image's.
struct Format {
    width: u32,
    height: u32,
    channels: usize,
    path: PathBuf,
}

fn describe(width: u32, height: u32, channels: usize) -> String {
    let kind = if channels == 1 {
        "grayscale"
    } else {
        "colour (RGB)"
    };
    format!("{width}×{height} {kind}")
}

pub(crate) fn decode(dir: &Path, listing: Listing) -> Result<PngFolder> {
    let n = listing.files.len();
    let mut pixels: Vec<u8> = Vec::new();
    let mut first: Option<Format> = None;
    for path in &listing.files {
        let mut reader = open(path)?;
        let (width, height) = reader.info().size();
        let channels = channels(&reader, path)?;
        match &first {
            None => {
                let item = width as usize * height as usize * channels;
                if item
                    .checked_mul(n)
                    .is_none_or(|total| pixels.try_reserve_exact(total).is_err())
                {
                    return fail(
                        dir,
                        format!(
                            "cannot allocate {n} images of {} bytes",
                            width as u64 * height as u64 * channels as u64
                        ),
                    );
                }
                first = Some(Format {
                    width,
                    height,
                    channels,
                    path: path.clone(),
                });
            }
            Some(f) if (f.width, f.height, f.channels) != (width, height, channels) => {
                let shown = f.path.strip_prefix(dir).unwrap_or(&f.path);
                return fail(
                    path,
                    format!(
                        "image is {}, but the first image ({}) is {}: all images must have the \
                         same width×height and be all grayscale or all colour",
                        describe(width, height, channels),
                        shown.display(),
                        describe(f.width, f.height, f.channels)
                    ),
                );
            }
            Some(_) => {}
        }
        read_pixels(&mut reader, path, channels, &mut pixels)?;
    }
    let Some(f) = first else {
        return fail(dir, "no .png images here");
    };
    let (h, w) = (f.height as usize, f.width as usize);
    let item_shape = if f.channels == 1 {
        vec![h, w]
    } else {
        vec![h, w, 3]
    };
    Ok(PngFolder {
        set: Dataset {
            pixels: Pixels::U8(pixels),
            labels: listing.labels,
            len: n,
            item_shape,
        },
        classes: listing.classes,
    })
}

type Reader = png::Reader<BufReader<File>>;

/// Opens a PNG and reads its header, checking the signature and that the claimed size is one the
/// file's compressed data could hold.
fn open(path: &Path) -> Result<Reader> {
    let cannot_read = |e: std::io::Error| DataError {
        path: path.to_path_buf(),
        problem: format!("cannot read: {e}"),
    };
    let file = File::open(path).map_err(cannot_read)?;
    let len = file.metadata().map_err(cannot_read)?.len();
    let mut file = BufReader::new(file);
    let mut signature = [0u8; 8];
    match file.read_exact(&mut signature) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => signature = [0; 8],
        Err(e) => return Err(cannot_read(e)),
    }
    if signature != PNG_SIGNATURE {
        return fail(
            path,
            "not a PNG file (it does not start with the PNG signature)",
        );
    }
    file.seek(SeekFrom::Start(0)).map_err(cannot_read)?;
    let mut decoder = png::Decoder::new(file);
    decoder.set_transformations(Transformations::EXPAND);
    let reader = decoder.read_info().or_else(|e| decode_error(path, e))?;
    let info = reader.info();
    let row_bits = info.width as u128 * info.bits_per_pixel() as u128;
    let raw = info.height as u128 * (1 + row_bits.div_ceil(8));
    if raw > MAX_DEFLATE_RATIO * len as u128 {
        return fail(
            path,
            format!(
                "corrupt PNG: the header claims {}×{} pixels, more than the file's {len} bytes \
                 can hold",
                info.width, info.height
            ),
        );
    }
    Ok(reader)
}

/// 1 for grayscale, 3 for colour (after expansion; alpha is composited away).
fn channels(reader: &Reader, path: &Path) -> Result<usize> {
    match reader.output_color_type().0 {
        ColorType::Grayscale | ColorType::GrayscaleAlpha => Ok(1),
        ColorType::Rgb | ColorType::Rgba => Ok(3),
        ColorType::Indexed => fail(path, "cannot decode PNG: palette was not expanded"),
    }
}

/// Decodes the image and appends its 8-bit pixels (row-major, channels interleaved) to `out`.
fn read_pixels(reader: &mut Reader, path: &Path, channels: usize, out: &mut Vec<u8>) -> Result<()> {
    let (color, depth) = reader.output_color_type();
    let samples = color.samples();
    let alpha = samples > channels;
    let wide = depth == BitDepth::Sixteen;
    let Some(size) = reader.output_buffer_size() else {
        return fail(path, "cannot decode PNG: the image does not fit in memory");
    };
    let mut buf = Vec::new();
    if buf.try_reserve_exact(size).is_err() {
        return fail(path, format!("cannot allocate {size} bytes for the image"));
    }
    buf.resize(size, 0);
    let frame = reader
        .next_frame(&mut buf)
        .or_else(|e| decode_error(path, e))?;
    let (width, height) = reader.info().size();
    if (frame.width, frame.height) != (width, height) {
        // Only an animated PNG can do this (and APNG forbids it for the first frame).
        return fail(
            path,
            format!(
                "corrupt PNG: its first frame is {}×{}, the image {width}×{height}",
                frame.width, frame.height
            ),
        );
    }
    let data = &buf[..frame.buffer_size()];
    let max: u64 = if wide { 65535 } else { 255 };
    let sample = |i: usize| -> u64 {
        if wide {
            u16::from_be_bytes([data[2 * i], data[2 * i + 1]]) as u64
        } else {
            data[i] as u64
        }
    };
    // Opaque pixels: v · 255 / max; with alpha a: v · a · 255 / max², each rounded to nearest.
    let den = max * max;
    let pixel_count = frame.width as usize * frame.height as usize;
    for p in 0..pixel_count {
        let base = p * samples;
        let a = if alpha { sample(base + channels) } else { max };
        for c in 0..channels {
            let v = sample(base + c) * a * 255;
            out.push(((v + den / 2) / den) as u8);
        }
    }
    Ok(())
}

fn decode_error<T>(path: &Path, e: DecodingError) -> Result<T> {
    let problem = match e {
        DecodingError::IoError(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            "truncated PNG: the file ends before the image does".to_string()
        }
        DecodingError::IoError(e) => format!("cannot read: {e}"),
        DecodingError::Format(e) => format!("corrupt PNG: {e}"),
        DecodingError::Parameter(e) => format!("cannot decode PNG: {e}"),
        DecodingError::LimitsExceeded => {
            "cannot decode PNG: it exceeds the decoder's memory limit (64 MiB)".to_string()
        }
    };
    fail(path, problem)
}
