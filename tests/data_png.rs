//! `--data` a folder of PNG images: flat or in class subfolders, grayscale or colour, every bit
//! depth, and every kind of bad folder or file getting an error that names it.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::files::{idx, write};
use png::{BitDepth, ColorType};
use vae_wgpu::data::{self, Pixels};

/// A PNG of `width`×`height` pixels in `color` at `depth`; `data` as the encoder takes it (rows
/// packed, 16-bit samples big-endian).
fn png_bytes(width: u32, height: u32, color: ColorType, depth: BitDepth, data: &[u8]) -> Vec<u8> {
    png_with(width, height, color, depth, data, |_| {})
}

fn png_with(
    width: u32,
    height: u32,
    color: ColorType,
    depth: BitDepth,
    data: &[u8],
    setup: impl FnOnce(&mut png::Encoder<'_, &mut Vec<u8>>),
) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, width, height);
        enc.set_color(color);
        enc.set_depth(depth);
        setup(&mut enc);
        let mut writer = enc.write_header().unwrap();
        writer.write_image_data(data).unwrap();
        writer.finish().unwrap();
    }
    out
}

/// An 8-bit grayscale PNG.
fn gray(width: u32, height: u32, data: &[u8]) -> Vec<u8> {
    png_bytes(width, height, ColorType::Grayscale, BitDepth::Eight, data)
}

/// `n` distinct 8×6 grayscale images' pixels.
fn gray_pixels(seed: u8) -> Vec<u8> {
    (0..48u8)
        .map(|i| i.wrapping_mul(5).wrapping_add(seed))
        .collect()
}

fn u8_pixels(set: &data::Dataset) -> &[u8] {
    match &set.pixels {
        Pixels::U8(v) => v,
        Pixels::F32(_) => panic!("PNG pixels must stay bytes"),
    }
}

fn load(dir: &Path) -> data::DataSource {
    data::load_source(dir.to_str().unwrap()).unwrap()
}

/// The error loading `dir` gives, checked to name `named`.
fn load_error(dir: &Path, named: &Path) -> String {
    let err = data::load_source(dir.to_str().unwrap())
        .expect_err("bad folder must be rejected")
        .to_string();
    assert!(
        err.starts_with(&format!("{}: ", named.display())),
        "error does not name {}: {err}",
        named.display()
    );
    err
}

#[test]
fn grayscale_folder_loads_sorted_with_other_files_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(d, "b.png", &gray(8, 6, &gray_pixels(1)));
    write(d, "a.PNG", &gray(8, 6, &gray_pixels(2)));
    write(d, "c.png", &gray(8, 6, &gray_pixels(3)));
    // Not PNG files by name, hidden, or a folder without images: all ignored.
    write(d, "README.txt", b"my pictures");
    write(d, "c.png.bak", b"junk");
    write(d, "._c.png", b"macOS resource fork, not a PNG");
    std::fs::create_dir(d.join("notes")).unwrap();
    write(&d.join("notes"), "todo.txt", b"nothing");

    let src = load(d);
    assert_eq!(src.test, None, "a folder has no test split");
    assert!(src.classes.is_empty());
    assert_eq!(src.name, d.file_name().unwrap().to_string_lossy());
    let set = &src.train;
    assert_eq!(
        (set.len, set.item_shape.clone(), set.dim()),
        (3, vec![6, 8], 48)
    );
    assert_eq!(set.labels, None);
    let expected: Vec<u8> = [2, 1, 3].iter().flat_map(|&s| gray_pixels(s)).collect();
    assert_eq!(
        u8_pixels(set),
        &expected[..],
        "a.PNG, b.png, c.png in order"
    );

    let folder = data::load_png_dir(d).unwrap();
    assert_eq!(&folder.set, set);
    assert!(folder.classes.is_empty());
}

#[test]
fn class_subfolders_give_labels_in_sorted_name_order() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for (class, name, seed) in [
        ("dogs", "1.png", 11),
        ("dogs", "0.png", 10),
        ("cats", "x.png", 20),
        ("birds", "b.png", 30),
        ("birds", "a.png", 31),
    ] {
        std::fs::create_dir_all(d.join(class)).unwrap();
        write(&d.join(class), name, &gray(8, 6, &gray_pixels(seed)));
    }
    write(&d.join("cats"), "about.md", b"cats");
    std::fs::create_dir(d.join("empty")).unwrap();
    write(d, "LICENSE", b"no images directly here");

    let src = load(d);
    assert_eq!(src.classes, ["birds", "cats", "dogs"]);
    let set = &src.train;
    assert_eq!((set.len, set.item_shape.clone()), (5, vec![6, 8]));
    assert_eq!(set.labels.as_deref(), Some(&[0, 0, 1, 2, 2][..]));
    let expected: Vec<u8> = [31, 30, 20, 10, 11]
        .iter()
        .flat_map(|&s| gray_pixels(s))
        .collect();
    assert_eq!(u8_pixels(set), &expected[..]);
}

#[test]
fn rgb_is_interleaved_and_alpha_is_composited_on_black() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let rgb: Vec<u8> = (0..2 * 3 * 3).map(|i| i as u8 * 13).collect();
    write(
        d,
        "0.png",
        &png_bytes(2, 3, ColorType::Rgb, BitDepth::Eight, &rgb),
    );
    // RGBA: opaque, half and fully transparent pixels.
    let rgba = [
        200, 100, 50, 255, //
        200, 100, 50, 128, //
        200, 100, 50, 0, //
        10, 20, 30, 255, //
        255, 255, 255, 1, //
        0, 0, 0, 255,
    ];
    write(
        d,
        "1.png",
        &png_bytes(2, 3, ColorType::Rgba, BitDepth::Eight, &rgba),
    );
    // A palette image expands to RGB.
    let palette = [255, 0, 0, 0, 255, 0, 0, 0, 255, 9, 8, 7];
    let indexed = png_with(
        2,
        3,
        ColorType::Indexed,
        BitDepth::Eight,
        &[0, 1, 2, 3, 2, 1],
        |e| e.set_palette(palette.to_vec()),
    );
    write(d, "2.png", &indexed);

    let set = load(d).train;
    assert_eq!(
        (set.len, set.item_shape.clone(), set.dim()),
        (3, vec![3, 2, 3], 18)
    );
    let px = u8_pixels(&set);
    assert_eq!(&px[..18], &rgb[..]);
    // 200·128/255 = 100.4, 100·128/255 = 50.2, 50·128/255 = 25.1, 255·1/255 = 1.
    assert_eq!(
        &px[18..36],
        &[
            200, 100, 50, 100, 50, 25, 0, 0, 0, 10, 20, 30, 1, 1, 1, 0, 0, 0
        ]
    );
    assert_eq!(
        &px[36..],
        &[
            255, 0, 0, 0, 255, 0, 0, 0, 255, 9, 8, 7, 0, 0, 255, 0, 255, 0
        ]
    );
}

#[test]
fn sixteen_bit_and_low_bit_depths_become_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let wide: [u16; 8] = [0, 65535, 32896, 32768, 1000, 128, 129, 65000];
    let be: Vec<u8> = wide.iter().flat_map(|v| v.to_be_bytes()).collect();
    write(
        d,
        "a16.png",
        &png_bytes(4, 2, ColorType::Grayscale, BitDepth::Sixteen, &be),
    );
    // 1-bit: 1 → 255; one byte per row, the 4 pixels in its high bits.
    write(
        d,
        "b1.png",
        &png_bytes(
            4,
            2,
            ColorType::Grayscale,
            BitDepth::One,
            &[0b1010_0000, 0b0111_0000],
        ),
    );
    // 2-bit: v · 85.
    write(
        d,
        "c2.png",
        &png_bytes(
            4,
            2,
            ColorType::Grayscale,
            BitDepth::Two,
            &[0b00_01_10_11, 0b11_10_01_00],
        ),
    );
    // 16-bit gray with alpha: 65535 · 32768/65535 → 32768 → 128.
    let ga: Vec<u8> = [[65535u16, 32768], [65535, 65535], [1000, 0], [0, 65535]]
        .iter()
        .cycle()
        .take(8)
        .flatten()
        .flat_map(|v| v.to_be_bytes())
        .collect();
    write(
        d,
        "d16a.png",
        &png_bytes(4, 2, ColorType::GrayscaleAlpha, BitDepth::Sixteen, &ga),
    );

    let set = load(d).train;
    assert_eq!((set.len, set.item_shape.clone()), (4, vec![2, 4]));
    let px = u8_pixels(&set);
    // Nearest of v · 255 / 65535.
    let scaled: Vec<u8> = wide
        .iter()
        .map(|&v| (v as f64 * 255.0 / 65535.0).round() as u8)
        .collect();
    assert_eq!(scaled, [0, 255, 128, 128, 4, 0, 1, 253]);
    assert_eq!(&px[..8], &scaled[..]);
    assert_eq!(&px[8..16], &[255, 0, 255, 0, 0, 255, 255, 255]);
    assert_eq!(&px[16..24], &[0, 85, 170, 255, 255, 170, 85, 0]);
    assert_eq!(&px[24..], &[128, 255, 0, 0, 128, 255, 0, 0]);
}

#[test]
fn images_of_another_size_or_kind_are_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(d, "a.png", &gray(8, 6, &gray_pixels(0)));
    let odd = write(d, "b.png", &gray(6, 8, &gray_pixels(0)));
    let err = load_error(d, &odd);
    assert!(
        err.ends_with(
            "b.png: image is 6×8 grayscale, but the first image (a.png) is 8×6 grayscale: all \
             images must have the same width×height and be all grayscale or all colour"
        ),
        "{err}"
    );

    std::fs::remove_file(&odd).unwrap();
    let colour = write(
        d,
        "c.png",
        &png_bytes(8, 6, ColorType::Rgb, BitDepth::Eight, &[0; 144]),
    );
    let err = load_error(d, &colour);
    assert!(
        err.ends_with(
            "c.png: image is 8×6 colour (RGB), but the first image (a.png) is 8×6 grayscale: \
             all images must have the same width×height and be all grayscale or all colour"
        ),
        "{err}"
    );

    // In class folders the first image is named relative to the folder.
    let classes = tempfile::tempdir().unwrap();
    let c = classes.path();
    for class in ["a", "b"] {
        std::fs::create_dir(c.join(class)).unwrap();
    }
    write(&c.join("a"), "0.png", &gray(8, 6, &gray_pixels(0)));
    let odd = write(&c.join("b"), "0.png", &gray(4, 4, &[0; 16]));
    let err = load_error(c, &odd);
    assert!(
        err.contains("image is 4×4 grayscale, but the first image (a/0.png) is 8×6 grayscale"),
        "{err}"
    );
}

/// CRC-32 as PNG uses it, to forge chunks the decoder would otherwise reject for their checksum.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = flate2::Crc::new();
    crc.update(bytes);
    crc.sum()
}

#[test]
fn corrupt_and_fake_pngs_are_refused_naming_the_file() {
    let good = gray(8, 6, &gray_pixels(0));
    // IDAT's payload: after the 8-byte signature and the 25-byte IHDR chunk, 8 bytes of header.
    let idat = 8 + 25;
    assert_eq!(&good[idat + 4..idat + 8], b"IDAT");
    let mut flipped = good.clone();
    flipped[idat + 10] ^= 0x55;
    let idat_len = u32::from_be_bytes(good[idat..idat + 4].try_into().unwrap()) as usize;
    let mut bad_crc = good.clone();
    bad_crc[idat + 8 + idat_len] ^= 0x01;
    // A header claiming 100000×100000 pixels (checksum fixed up) in a file of ~100 bytes.
    let mut huge = good.clone();
    huge[16..20].copy_from_slice(&100_000u32.to_be_bytes());
    huge[20..24].copy_from_slice(&100_000u32.to_be_bytes());
    let crc = crc32(&huge[12..29]);
    huge[29..33].copy_from_slice(&crc.to_be_bytes());

    let cases: Vec<(&str, Vec<u8>, String)> = vec![
        (
            "text.png",
            b"this is not a picture".to_vec(),
            "not a PNG file (it does not start with the PNG signature)".into(),
        ),
        (
            "empty.png",
            Vec::new(),
            "not a PNG file (it does not start with the PNG signature)".into(),
        ),
        (
            "signature-only.png",
            good[..8].to_vec(),
            "truncated PNG: the file ends before the image does".into(),
        ),
        (
            "truncated.png",
            good[..good.len() / 2].to_vec(),
            "truncated PNG: the file ends before the image does".into(),
        ),
        (
            "flipped.png",
            flipped,
            "corrupt PNG: Corrupt deflate stream.".into(),
        ),
        (
            "bad-crc.png",
            bad_crc,
            "corrupt PNG: CRC error: expected 0x".into(),
        ),
        (
            "huge.png",
            huge.clone(),
            format!(
                "corrupt PNG: the header claims 100000×100000 pixels, more than the file's {} \
                 bytes can hold",
                huge.len()
            ),
        ),
    ];
    for (name, bytes, problem) in cases {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "a.png", &good);
        let bad = write(dir.path(), name, &bytes);
        let err = load_error(dir.path(), &bad);
        assert!(
            err.contains(&problem),
            "{name}: expected `{problem}` in: {err}"
        );
        let direct = data::load_png_dir(dir.path()).expect_err(name).to_string();
        assert_eq!(direct, err, "{name}");
    }
}

#[test]
fn empty_or_ambiguous_folders_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let expected = format!(
        "{}: no train-images-idx3-ubyte[.gz] and train-labels-idx1-ubyte[.gz] (MNIST-style IDX \
         files) here, and no .png images, directly or in class subfolders",
        d.display()
    );
    assert_eq!(load_error(d, d), expected);
    write(d, "README.txt", b"no images");
    std::fs::create_dir(d.join("sub")).unwrap();
    assert_eq!(load_error(d, d), expected);
    assert_eq!(
        data::load_png_dir(d).unwrap_err().to_string(),
        format!(
            "{}: no .png images here, directly or in class subfolders (one subfolder per class)",
            d.display()
        )
    );

    write(d, "top.png", &gray(8, 6, &gray_pixels(0)));
    write(&d.join("sub"), "x.png", &gray(8, 6, &gray_pixels(0)));
    assert_eq!(
        load_error(d, d),
        format!(
            "{}: holds .png images both directly (top.png) and in subfolders (sub/): put every \
             image in a class subfolder, or all of them directly in the folder",
            d.display()
        )
    );
}

#[test]
fn more_than_256_classes_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let one = gray(1, 1, &[7]);
    for class in 0..257 {
        let sub = d.join(format!("{class:03}"));
        std::fs::create_dir(&sub).unwrap();
        write(&sub, "0.png", &one);
    }
    assert_eq!(
        load_error(d, d),
        format!(
            "{}: 257 subfolders hold .png images: labels are bytes, so at most 256 classes are \
             supported",
            d.display()
        )
    );
    std::fs::remove_dir_all(d.join("256")).unwrap();
    let src = load(d);
    assert_eq!(src.classes.len(), 256);
    assert_eq!(src.train.labels.unwrap()[255], 255);
}

#[test]
fn idx_files_in_the_folder_take_precedence_over_pngs() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(d, "a.png", &gray(8, 6, &gray_pixels(0)));
    write(
        d,
        "train-images-idx3-ubyte",
        &idx(&[2, 2, 2], &[1, 2, 3, 4, 5, 6, 7, 8]),
    );
    write(d, "train-labels-idx1-ubyte", &idx(&[2], &[3, 4]));
    let src = load(d);
    assert_eq!((src.train.len, src.train.item_shape), (2, vec![2, 2]));
    assert_eq!(src.train.labels, Some(vec![3, 4]));
}

#[test]
fn test_data_folder_must_have_the_training_classes() {
    let root = tempfile::tempdir().unwrap();
    let folder = |name: &str, classes: &[&str]| -> PathBuf {
        let d = root.path().join(name);
        for class in classes {
            std::fs::create_dir_all(d.join(class)).unwrap();
            write(&d.join(class), "0.png", &gray(8, 6, &gray_pixels(1)));
        }
        d
    };
    let train = folder("train", &["cat", "dog"]);
    let same = folder("same", &["cat", "dog"]);
    let other = folder("other", &["cat", "cow"]);
    let s = |p: &Path| p.to_str().unwrap().to_string();

    let src = data::load_sources(&s(&train), Some(&s(&same))).unwrap();
    assert_eq!(src.classes, ["cat", "dog"]);
    assert_eq!(src.test.unwrap().labels, Some(vec![0, 1]));
    let err = data::load_sources(&s(&train), Some(&s(&other))).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "{}: test classes [\"cat\", \"cow\"] differ from the training classes [\"cat\", \
             \"dog\"]: the labels would not mean the same",
            other.display()
        )
    );
    let alone = data::load_sources(&s(&train), None).unwrap();
    assert_eq!(alone.test, None);
}

fn vae(args: &[&str], data: &Path, out: &Path) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_vae"))
        .args(args)
        .arg("--data")
        .arg(data)
        .arg("--out")
        .arg(out)
        .output()
        .expect("run vae");
    (
        output.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

/// A bad image is refused before any device is opened (`--adapter` names none there is), so this
/// needs no GPU.
#[test]
fn vae_train_refuses_a_bad_png_before_opening_a_device() {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("images");
    std::fs::create_dir(&images).unwrap();
    write(&images, "a.png", &gray(8, 6, &gray_pixels(0)));
    let bad = write(&images, "b.png", b"GIF89a");
    let (ok, output) = vae(
        &[
            "train",
            "--quiet",
            "--epochs",
            "1",
            "--adapter",
            "no-such-adapter-png",
        ],
        &images,
        &dir.path().join("run"),
    );
    assert!(!ok, "{output}");
    assert!(
        !output.contains("panicked") && !output.contains("no-such-adapter-png"),
        "{output}"
    );
    assert!(
        output.contains(&format!(
            "{}: not a PNG file (it does not start with the PNG signature)",
            bad.display()
        )),
        "{output}"
    );
}

/// Tiny 8×6 grayscale and 4×4 colour folders train for an epoch end to end (needs an adapter).
#[test]
fn vae_train_runs_on_png_folders() {
    let dir = tempfile::tempdir().unwrap();
    let gray_dir = dir.path().join("gray");
    let colour_dir = dir.path().join("colour");
    for class in ["x", "y"] {
        std::fs::create_dir_all(gray_dir.join(class)).unwrap();
    }
    std::fs::create_dir_all(&colour_dir).unwrap();
    for i in 0..12u8 {
        let class = if i % 2 == 0 { "x" } else { "y" };
        write(
            &gray_dir.join(class),
            &format!("{i}.png"),
            &gray(8, 6, &gray_pixels(i * 7)),
        );
        let rgb: Vec<u8> = (0..48u8).map(|p| p.wrapping_mul(i + 1)).collect();
        write(
            &colour_dir,
            &format!("{i}.png"),
            &png_bytes(4, 4, ColorType::Rgb, BitDepth::Eight, &rgb),
        );
    }
    for (data, input) in [(&gray_dir, 48), (&colour_dir, 48)] {
        let run = dir.path().join(format!(
            "run-{}",
            data.file_name().unwrap().to_string_lossy()
        ));
        let (ok, output) = vae(
            &[
                "train", "--quiet", "--epochs", "1", "--batch", "4", "--hidden", "16", "--latent",
                "2",
            ],
            data,
            &run,
        );
        assert!(ok, "{}: {output}", data.display());
        assert!(run.join("checkpoint.safetensors").exists(), "{output}");
        let config = std::fs::read_to_string(run.join("config.json")).unwrap();
        assert!(config.contains(&format!("\"input\": {input}")), "{config}");
    }
}
