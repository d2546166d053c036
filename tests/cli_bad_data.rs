//! `vae train --data <bad file>` through the real binary: every kind of bad data file exits
//! non-zero with an error naming the file and the problem, never a panic.
//!
//! Data are loaded and checked before a device is opened, so none of this needs a GPU: each
//! run also passes `--adapter` with a name no adapter has, and were the device opened first the
//! error would be about that adapter instead of the data.

mod common;

use common::files::{f32s, gz, idx, npy, write};
use std::path::Path;
use std::process::Command;

const NO_SUCH_ADAPTER: &str = "no-such-adapter-for-bad-data-tests";

/// Runs `vae train` on `data` (and `test_data`); returns (success, stderr).
fn train(dir: &Path, data: &Path, test_data: Option<&Path>) -> (bool, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vae"));
    cmd.args([
        "train",
        "--quiet",
        "--epochs",
        "1",
        "--adapter",
        NO_SUCH_ADAPTER,
    ])
    .arg("--out")
    .arg(dir.join("run"))
    .arg("--data")
    .arg(data);
    if let Some(t) = test_data {
        cmd.arg("--test-data").arg(t);
    }
    let out = cmd.output().expect("run vae");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Asserts `vae train` fails on `data` with an error that names `named` and says `problem`.
fn assert_refused(
    dir: &Path,
    data: &Path,
    test_data: Option<&Path>,
    named: &Path,
    problem: &str,
) -> String {
    let (ok, stderr) = train(dir, data, test_data);
    let what = data.file_name().unwrap().to_string_lossy();
    assert!(!ok, "{what}: vae train succeeded");
    assert!(!stderr.contains("panicked"), "{what}: panic:\n{stderr}");
    assert!(
        stderr.contains(&named.display().to_string()),
        "{what}: the error does not name {}:\n{stderr}",
        named.display()
    );
    assert!(
        stderr.contains(problem),
        "{what}: expected `{problem}` in:\n{stderr}"
    );
    assert!(
        !stderr.contains(NO_SUCH_ADAPTER),
        "{what}: the device was opened before the data were checked:\n{stderr}"
    );
    stderr
}

/// (file name, contents, the problem the error must state), one per kind of bad file. The
/// extension picks the loader, as it does for a user.
fn bad_files() -> Vec<(&'static str, Vec<u8>, &'static str)> {
    let good = idx(&[2, 2, 2], &[9; 8]);
    let good_gz = gz(&good);
    let mut too_many_dims = vec![0, 0, 8, 4];
    for _ in 0..4 {
        too_many_dims.extend_from_slice(&u32::MAX.to_be_bytes());
    }
    vec![
        // IDX
        (
            "bad-magic-idx3-ubyte",
            vec![0x12, 0x34, 8, 3, 0, 0, 0, 1],
            "not an IDX file: magic number 12340803",
        ),
        (
            "short-header-idx3-ubyte",
            vec![0, 0, 8],
            "truncated header: 3 bytes, an IDX header has at least 8",
        ),
        (
            "cut-dims-idx3-ubyte",
            vec![0, 0, 8, 3, 0, 0, 0, 2, 0, 0],
            "truncated header: 10 bytes, 3 dimensions need 16",
        ),
        (
            "truncated-body-idx3-ubyte",
            good[..good.len() - 3].to_vec(),
            "header claims [2, 2, 2] = 8 bytes of data, but the file holds only 5",
        ),
        (
            "absurd-count-idx3-ubyte",
            idx(&[u32::MAX, 28, 28], &[0; 10]),
            "header claims [4294967295, 28, 28] = 3367254359280 bytes of data, but the file holds only 10",
        ),
        (
            "overflow-idx3-ubyte",
            too_many_dims,
            "header claims [4294967295, 4294967295, 4294967295, 4294967295]: more than 2^64 bytes of data",
        ),
        (
            "trailing-idx3-ubyte",
            [good.clone(), vec![0; 4]].concat(),
            "but the file holds 12",
        ),
        (
            "dtype-idx3-ubyte",
            vec![0, 0, 0x0d, 1, 0, 0, 0, 1, 0, 0, 0, 0],
            "unsupported IDX element type 0x0d",
        ),
        (
            "labels-not-images-idx1-ubyte",
            idx(&[3], &[1, 2, 3]),
            "expected images (items × rows × cols), found shape [3]",
        ),
        (
            "empty-idx3-ubyte",
            idx(&[0, 28, 28], &[]),
            "empty dataset: the header claims 0 items",
        ),
        (
            "zero-pixels-idx3-ubyte",
            idx(&[5, 0, 28], &[]),
            "header claims items of shape [0, 28]: 0 pixels per item",
        ),
        (
            "corrupt-idx3-ubyte.gz",
            [good_gz[..20].to_vec(), vec![0xff; 8]].concat(),
            "corrupt gzip data",
        ),
        (
            "cut-gzip-idx3-ubyte.gz",
            good_gz[..good_gz.len() - 6].to_vec(),
            "corrupt gzip data",
        ),
        (
            "bomb-idx3-ubyte.gz",
            gz(&idx(&[4, 1, 1], &vec![0; 16 << 20])),
            "header claims [4, 1, 1] = 4 bytes of data, but the file holds more than 4",
        ),
        // CSV (the last column is the label)
        (
            "ragged.csv",
            b"1,2,3,0\n1,2,0\n".to_vec(),
            "line 2 has 3 columns, earlier rows have 4",
        ),
        (
            "text.csv",
            b"1,2,3,0\n1,x,3,0\n".to_vec(),
            "line 2, column 2: `x` is not a number",
        ),
        (
            "nan.csv",
            b"0.5,NaN,0,1\n".to_vec(),
            "line 1, column 2: `NaN` is not finite",
        ),
        (
            "inf.csv",
            b"0.5,0,0,1\n0.5,-inf,0,1\n".to_vec(),
            "line 2, column 2: `-inf` is not finite",
        ),
        (
            "negative.csv",
            b"p0,p1,p2,label\n0.5,0.25,0,1\n0.5,-0.25,0,1\n".to_vec(),
            "line 3, column 2: value -0.25 is outside [0, 1] (data that are not all integers are read as [0, 1] floats)",
        ),
        (
            "over-255.csv",
            b"0,12,255,1\n0,300,2,1\n".to_vec(),
            "line 2, column 2: value 300 is outside 0–255 (integer data are read as bytes)",
        ),
        (
            "label.csv",
            b"1,2,3,4.5\n".to_vec(),
            "line 1: label `4.5` is not an integer class in 0..=255",
        ),
        (
            "header-only.csv",
            b"p0,p1,label\n\n".to_vec(),
            "empty dataset: no data rows",
        ),
        (
            "corrupt.csv.gz",
            {
                let g = gz(b"1,2,3,0\n4,5,6,1\n");
                [g[..12].to_vec(), vec![0xff; 6]].concat()
            },
            "corrupt gzip data",
        ),
        // NPY
        (
            "magic.npy",
            b"PK\x03\x04 not numpy".to_vec(),
            "not a .npy file (missing the \\x93NUMPY magic)",
        ),
        (
            "float64.npy",
            npy("<f8", false, "(1, 2)", &[0; 16]),
            "unsupported dtype `<f8`: only uint8 (|u1) and float32 (<f4) are supported",
        ),
        (
            "fortran.npy",
            npy("|u1", true, "(2, 2)", &[0; 4]),
            "Fortran-order arrays are not supported",
        ),
        (
            "rank1.npy",
            npy("|u1", false, "(4,)", &[0; 4]),
            "shape (4,): expected (items, pixels...) with at least 2 dimensions",
        ),
        (
            "short.npy",
            npy("|u1", false, "(2, 4)", &[0; 7]),
            "shape (2, 4) needs 8 bytes of data, the file holds only 7",
        ),
        (
            "huge.npy",
            npy(
                "|u1",
                false,
                "(4294967296, 4294967296, 4294967296)",
                &[0; 8],
            ),
            "needs more than 2^64 bytes of data",
        ),
        (
            "nan.npy",
            npy("<f4", false, "(1, 2)", &f32s(&[0.0, f32::NAN])),
            "item 0, pixel 1: value NaN is not finite",
        ),
        (
            "inf.npy",
            npy("<f4", false, "(2, 1)", &f32s(&[0.0, f32::INFINITY])),
            "item 1, pixel 0: value inf is not finite",
        ),
        (
            "range.npy",
            npy("<f4", false, "(1, 2)", &f32s(&[0.5, 255.0])),
            "item 0, pixel 1: value 255 is outside [0, 1]",
        ),
        (
            "empty.npy",
            npy("|u1", false, "(0, 4)", &[]),
            "empty dataset: shape has 0 items",
        ),
        (
            "corrupt.npy.gz",
            {
                let g = gz(&npy("|u1", false, "(2, 4)", &[0; 8]));
                [g[..16].to_vec(), vec![0xff; 8]].concat()
            },
            "corrupt gzip data",
        ),
    ]
}

#[test]
fn every_kind_of_bad_data_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let cases = bad_files();
    for (name, bytes, problem) in &cases {
        let path = write(dir.path(), name, bytes);
        let stderr = assert_refused(dir.path(), &path, None, &path, problem);
        print!("{stderr}");
    }
    println!("{} bad files refused", cases.len());
}

#[test]
fn a_bad_test_data_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let train_file = write(
        dir.path(),
        "train.npy",
        &npy("|u1", false, "(2, 4)", &[0; 8]),
    );
    let nan = write(dir.path(), "nan-test.csv", b"0.5,NaN,0,0,1\n");
    assert_refused(
        dir.path(),
        &train_file,
        Some(&nan),
        &nan,
        "line 1, column 2: `NaN` is not finite",
    );
    let narrow = write(
        dir.path(),
        "narrow-test.npy",
        &npy("|u1", false, "(2, 3)", &[0; 6]),
    );
    assert_refused(
        dir.path(),
        &train_file,
        Some(&narrow),
        &narrow,
        "test items have 3 pixels (shape [3]), the training items 4 (shape [4])",
    );
}

#[test]
fn mismatched_image_and_label_counts_in_a_directory_are_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let mnist = dir.path().join("mnist");
    std::fs::create_dir(&mnist).unwrap();
    write(&mnist, "train-images-idx3-ubyte", &idx(&[2, 2, 2], &[1; 8]));
    let labels = write(
        &mnist,
        "train-labels-idx1-ubyte.gz",
        &gz(&idx(&[3], &[1, 2, 3])),
    );
    assert_refused(
        dir.path(),
        &mnist,
        None,
        &labels,
        "3 labels for 2 images in",
    );
    let missing = dir.path().join("no-such-file.npy");
    assert_refused(
        dir.path(),
        &missing,
        None,
        &missing,
        "no such file or directory",
    );
}

/// The control: a good file gets past the data checks to opening the device, which fails on
/// the adapter name (or on there being no adapter at all), not on the data.
#[test]
fn a_good_file_reaches_the_device() {
    let dir = tempfile::tempdir().unwrap();
    let good = write(
        dir.path(),
        "good.npy",
        // As many items as the default batch, which is checked before the device too.
        &npy("|u1", false, "(128, 4)", &[7; 512]),
    );
    let (ok, stderr) = train(dir.path(), &good, None);
    assert!(!ok, "no adapter has that name");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        stderr.contains(NO_SUCH_ADAPTER) || stderr.contains("no GPU adapter found"),
        "expected the adapter error:\n{stderr}"
    );
    assert!(!stderr.contains("good.npy"), "{stderr}");
}
