//! The picture commands on a freshly trained run: each PNG decodes, has the size its grid
//! implies, and shows images (not a blank or constant canvas); bad item and dimension indices are
//! clear errors.

use std::path::Path;
use std::process::{Command, Output};

fn vae(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vae"))
        .args(args)
        .output()
        .expect("run vae")
}

/// (width, height, pixels) of a grayscale PNG.
fn read_png(path: &Path) -> (u32, u32, Vec<u8>) {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!(info.color_type, png::ColorType::Grayscale);
    buf.truncate(info.buffer_size());
    (info.width, info.height, buf)
}

/// Grid size for n tiles of 28 pixels, `cols` per row, 2-pixel gaps.
fn grid(n: u32, cols: u32) -> (u32, u32) {
    let rows = n.div_ceil(cols);
    (cols * 30 + 2, rows * 30 + 2)
}

#[test]
fn picture_commands_write_the_stated_grids() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let run_s = run.to_str().unwrap();
    let train = vae(&[
        "train",
        "--quiet",
        "--epochs",
        "2",
        "--log-every",
        "4",
        "--hidden",
        "64",
        "--latent",
        "4",
        "--out",
        run_s,
    ]);
    assert!(
        train.status.success(),
        "{}",
        String::from_utf8_lossy(&train.stderr)
    );
    let cases: [(&[&str], &str, (u32, u32)); 5] = [
        (&["sample", "--n", "20"], "samples.png", grid(20, 5)),
        (
            &["reconstruct", "--n", "20"],
            "reconstructions.png",
            grid(4 * 16, 16),
        ),
        (
            &["interpolate", "--from", "3", "--to", "500", "--steps", "7"],
            "interpolation.png",
            grid(14, 7),
        ),
        (
            &["traverse", "--steps", "5"],
            "traversal.png",
            grid(4 * 5, 5),
        ),
        (
            &["traverse", "--dim", "2", "--steps", "9"],
            "traversal.png",
            grid(9, 9),
        ),
    ];
    for (args, file, (w, h)) in cases {
        let out = vae(&[&args[..1], &[run_s], &args[1..]].concat());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{args:?}: {stderr}");
        let (gw, gh, pixels) = read_png(&run.join(file));
        assert_eq!((gw, gh), (w, h), "{args:?}: size");
        // Not blank: the tiles hold many distinct grey levels and real contrast.
        let mut levels = [false; 256];
        pixels.iter().for_each(|&p| levels[p as usize] = true);
        let distinct = levels.iter().filter(|&&l| l).count();
        let (lo, hi) = (pixels.iter().min().unwrap(), pixels.iter().max().unwrap());
        assert!(
            distinct > 32 && hi - lo > 128,
            "{args:?}: {distinct} levels, range {lo}..{hi}"
        );
    }
    // The latent scatter (colour, so RGB) and the loss curves.
    for (args, file, size) in [
        (
            &["latent", run_s, "--limit", "300"][..],
            "latent.png",
            (900, 760),
        ),
        (&["plot", run_s][..], "curves.png", (900, 680)),
    ] {
        let out = vae(args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let decoder = png::Decoder::new(std::io::BufReader::new(
            std::fs::File::open(run.join(file)).unwrap(),
        ));
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!((info.width, info.height), size, "{file}");
        // Drawn on: far from all-white, and coloured points/lines present.
        let pixels = &buf[..info.buffer_size()];
        let coloured = pixels
            .chunks(3)
            .filter(|p| p.iter().max().unwrap() - p.iter().min().unwrap() > 60)
            .count();
        assert!(coloured > 200, "{file}: only {coloured} coloured pixels");
    }
    for (args, needle) in [
        (
            &["interpolate", run_s, "--from", "999999"][..],
            "item 999999 is out of range",
        ),
        (
            &["traverse", run_s, "--dim", "4"][..],
            "--dim 4 is out of range",
        ),
    ] {
        let out = vae(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(needle),
            "{args:?}: {stderr}"
        );
    }
}

/// Items are drawn in their own shape: [H, W] grayscale of any aspect, [H, W, 3] colour (RGB
/// PNG, channels interleaved), flat square counts as square grayscale; other shapes are refused.
#[test]
fn grids_follow_the_item_shape() {
    use vae_wgpu::eval::pictures::{ImageShape, write_grid};
    let gray = ImageShape::of(&[6, 8], 48).unwrap();
    assert_eq!((gray.height, gray.width, gray.channels), (6, 8, 1));
    let rgb = ImageShape::of(&[4, 5, 3], 60).unwrap();
    assert_eq!((rgb.height, rgb.width, rgb.channels), (4, 5, 3));
    let flat = ImageShape::of(&[784], 784).unwrap();
    assert_eq!((flat.height, flat.width, flat.channels), (28, 28, 1));
    assert_eq!(ImageShape::of(&[], 49).unwrap().width, 7);
    assert!(ImageShape::of(&[50], 50).is_none(), "not a square");
    assert!(ImageShape::of(&[2, 3, 4], 24).is_none(), "4 channels");
    assert!(ImageShape::of(&[12, 9, 3], 324).is_some());
    assert!(
        ImageShape::of(&[6, 8], 49).is_none(),
        "shape and pixel count disagree"
    );

    let dir = tempfile::tempdir().unwrap();
    // Two colour tiles: the first pure red, the second a horizontal ramp in green.
    let mut images = Vec::new();
    for _ in 0..rgb.height * rgb.width {
        images.extend([1.0f32, 0.0, 0.0]);
    }
    for _ in 0..rgb.height {
        for x in 0..rgb.width {
            images.extend([0.0f32, x as f32 / 4.0, 0.0]);
        }
    }
    let path = dir.path().join("rgb.png");
    let (w, h) = write_grid(&path, &images, rgb, 2).unwrap();
    assert_eq!((w, h), (2 * (5 + 2) + 2, 4 + 4));
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&path).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!(info.color_type, png::ColorType::Rgb);
    let at = |x: usize, y: usize| {
        let i = (y * w as usize + x) * 3;
        [buf[i], buf[i + 1], buf[i + 2]]
    };
    assert_eq!(at(2, 2), [255, 0, 0], "first tile, top-left");
    assert_eq!(at(2 + 4, 2 + 3), [255, 0, 0], "first tile, bottom-right");
    assert_eq!(at(9, 2), [0, 0, 0], "second tile, x = 0");
    assert_eq!(at(9 + 4, 5), [0, 255, 0], "second tile, x = 4");
    assert_eq!(at(0, 0), [40, 40, 40], "the gap");
}
