//! The data loaders: the shipped subset, and every kind of bad file getting a clear error that
//! names the file and the problem.

mod common;

use common::files::{gz, idx, npy, write};

use vae_wgpu::data::{self, Pixels};

/// Asserts the error names the file and contains `needle`.
fn assert_error<T: std::fmt::Debug>(r: data::Result<T>, path: &std::path::Path, needle: &str) {
    let msg = r.expect_err("bad input must be rejected").to_string();
    assert!(
        msg.contains(&path.display().to_string()),
        "error does not name the file: {msg}"
    );
    assert!(msg.contains(needle), "expected `{needle}` in: {msg}");
}

#[test]
fn shipped_subset_loads_and_splits_stratified() {
    let set = data::shipped_mnist5k().unwrap();
    assert_eq!(
        (set.len, set.item_shape.clone(), set.dim()),
        (5000, vec![28, 28], 784)
    );
    let labels = set.labels.as_ref().unwrap();
    assert!(
        labels.windows(2).all(|w| w[0] <= w[1]),
        "the subset is sorted by label"
    );
    let src = data::load_source("mnist5k").unwrap();
    let test = src.test.unwrap();
    assert_eq!((src.train.len, test.len), (4000, 1000));
    // Every class is in the held-out split, in proportion.
    for class in 0..10u8 {
        let n = test
            .labels
            .as_ref()
            .unwrap()
            .iter()
            .filter(|&&l| l == class)
            .count();
        assert!((60..=140).contains(&n), "class {class}: {n} test images");
    }
    let px = src.train.to_unit_f32();
    assert!(px.iter().all(|v| (0.0..=1.0).contains(v)) && px.contains(&1.0));
}

#[test]
fn idx_round_trip_raw_and_gz() {
    let dir = tempfile::tempdir().unwrap();
    let pixels: Vec<u8> = (0..2 * 3 * 5).map(|i| i as u8 * 7).collect();
    for (name, bytes) in [
        ("a-idx3-ubyte", idx(&[2, 3, 5], &pixels)),
        ("b-idx3-ubyte.gz", gz(&idx(&[2, 3, 5], &pixels))),
    ] {
        let images = write(dir.path(), name, &bytes);
        let labels = write(dir.path(), &format!("{name}.labels"), &idx(&[2], &[4, 9]));
        let set = data::load_idx_pair(&images, &labels).unwrap();
        assert_eq!(set.pixels, Pixels::U8(pixels.clone()));
        assert_eq!(set.labels, Some(vec![4, 9]));
        assert_eq!((set.len, set.item_shape), (2, vec![3, 5]));
    }
}

#[test]
fn bad_idx_files_are_rejected_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let good = idx(&[2, 2, 2], &[1; 8]);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "magic",
            vec![0x12, 0x34, 8, 3, 0, 0, 0, 1],
            "not an IDX file",
        ),
        ("short-header", vec![0, 0, 8], "truncated header"),
        (
            "dims-cut",
            vec![0, 0, 8, 3, 0, 0, 0, 2, 0, 0],
            "truncated header",
        ),
        (
            "truncated-body",
            good[..good.len() - 3].to_vec(),
            "the file holds only 5",
        ),
        // A header claiming 4 billion images must be refused without allocating for them.
        (
            "absurd",
            idx(&[u32::MAX, 28, 28], &[0; 10]),
            "the file holds only 10",
        ),
        (
            "trailing",
            [good.clone(), vec![0; 4]].concat(),
            "the file holds 12",
        ),
        (
            "dtype",
            vec![0, 0, 0x0d, 1, 0, 0, 0, 1, 0, 0, 0, 0],
            "unsupported IDX element type 0x0d",
        ),
        ("empty", idx(&[0, 28, 28], &[]), "empty dataset"),
        (
            "gzip",
            [gz(&good)[..20].to_vec(), vec![0xff; 8]].concat(),
            "corrupt gzip data",
        ),
    ];
    for (name, bytes, needle) in cases {
        let path = write(dir.path(), name, &bytes);
        assert_error(data::load_idx(&path), &path, needle);
    }
    let images = write(dir.path(), "img", &good);
    let labels = write(dir.path(), "lab", &idx(&[3], &[1, 2, 3]));
    assert_error(
        data::load_idx_pair(&images, &labels),
        &labels,
        "3 labels for 2 images",
    );
    let missing = dir.path().join("nope");
    assert_error(data::load_idx(&missing), &missing, "cannot read");
}

#[test]
fn csv_loads_bytes_floats_and_header() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "a.csv",
        b"p0,p1,p2,p3,label\n0,255,3,4,7\n1,2,3,4,1\n",
    );
    let set = data::load_csv(&path, true).unwrap();
    assert_eq!(set.pixels, Pixels::U8(vec![0, 255, 3, 4, 1, 2, 3, 4]));
    assert_eq!(
        (set.labels, set.len, set.item_shape),
        (Some(vec![7, 1]), 2, vec![2, 2])
    );
    let path = write(dir.path(), "b.csv.gz", &gz(b"0.5,0.25,1\n0,1,0\n"));
    let set = data::load_csv(&path, false).unwrap();
    assert_eq!(set.pixels, Pixels::F32(vec![0.5, 0.25, 1.0, 0.0, 1.0, 0.0]));
}

#[test]
fn bad_csv_files_are_rejected_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let cases: Vec<(&str, &[u8], &str)> = vec![
        (
            "ragged.csv",
            b"1,2,3\n1,2\n",
            "line 2 has 2 columns, earlier rows have 3",
        ),
        (
            "text.csv",
            b"1,2,3\n1,x,3\n",
            "line 2, column 2: `x` is not a number",
        ),
        ("nan.csv", b"0.5,NaN,0\n", "is not finite"),
        ("inf.csv", b"0.5,inf,0\n", "is not finite"),
        ("range.csv", b"0.5,-0.25,0\n", "outside [0, 1]"),
        ("empty.csv", b"\n\n", "empty dataset"),
    ];
    for (name, bytes, needle) in cases {
        let path = write(dir.path(), name, bytes);
        assert_error(data::load_csv(&path, false), &path, needle);
    }
    let path = write(dir.path(), "label.csv", b"1,2,3,4.5\n");
    assert_error(data::load_csv(&path, true), &path, "label `4.5`");
}

#[test]
fn npy_loads_u8_and_f32() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "a.npy",
        &npy("|u1", false, "(2, 2, 2)", &[0, 1, 2, 3, 4, 5, 6, 255]),
    );
    let set = data::load_npy(&path).unwrap();
    assert_eq!((set.len, set.item_shape), (2, vec![2, 2]));
    let f: Vec<u8> = [0.0f32, 0.5, 1.0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let path = write(dir.path(), "b.npy", &npy("<f4", false, "(1, 3)", &f));
    assert_eq!(
        data::load_npy(&path).unwrap().pixels,
        Pixels::F32(vec![0.0, 0.5, 1.0])
    );
}

#[test]
fn bad_npy_files_are_rejected_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let nan: Vec<u8> = [0.0f32, f32::NAN]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "magic.npy",
            b"PK\x03\x04 not numpy".to_vec(),
            "not a .npy file",
        ),
        (
            "dtype.npy",
            npy("<f8", false, "(1, 2)", &[0; 16]),
            "unsupported dtype `<f8`",
        ),
        (
            "short.npy",
            npy("|u1", false, "(2, 4)", &[0; 7]),
            "needs 8 bytes of data, the file holds only 7",
        ),
        (
            "rank.npy",
            npy("|u1", false, "(4,)", &[0; 4]),
            "at least 2 dimensions",
        ),
        (
            "nan.npy",
            npy("<f4", false, "(1, 2)", &nan),
            "is not finite",
        ),
        (
            "empty.npy",
            npy("|u1", false, "(0, 4)", &[]),
            "empty dataset",
        ),
    ];
    for (name, bytes, needle) in cases {
        let path = write(dir.path(), name, &bytes);
        assert_error(data::load_npy(&path), &path, needle);
    }
}

#[test]
fn missing_named_dataset_says_how_to_get_it() {
    let dir = tempfile::tempdir().unwrap();
    let err = data::load_source(dir.path().to_str().unwrap()).expect_err("empty dir");
    assert!(
        err.to_string().contains("no train-images-idx3-ubyte"),
        "{err}"
    );
    let err = data::load_source("/no/such/place.idx").expect_err("missing");
    assert!(err.to_string().contains("no such file"), "{err}");
    if !std::path::Path::new(data::FASHION_MNIST_DIR).exists() {
        let err = data::load_source("fashion-mnist").expect_err("not installed");
        assert!(
            err.to_string()
                .contains("apt-get install dataset-fashion-mnist"),
            "{err}"
        );
    } else {
        let src = data::load_source("fashion-mnist").unwrap();
        assert_eq!(
            (src.train.len, src.test.as_ref().unwrap().len),
            (60000, 10000)
        );
    }
}

#[test]
fn hostile_headers_are_refused_before_reading_or_allocating() {
    let dir = tempfile::tempdir().unwrap();
    // 2^32-1 of each of four dimensions: the product overflows 64 bits.
    let mut overflow = vec![0, 0, 8, 4];
    for _ in 0..4 {
        overflow.extend_from_slice(&u32::MAX.to_be_bytes());
    }
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("overflow", overflow, "more than 2^64 bytes of data"),
        ("zero-pixels", idx(&[3, 0, 28], &[]), "0 pixels per item"),
        (
            "labels-as-images",
            idx(&[2], &[1, 2]),
            "expected images (items × rows × cols), found shape [2]",
        ),
        ("ndim", vec![0, 0, 8, 9, 0, 0, 0, 1], "claims 9 dimensions"),
        // A gzip bomb behind a small header: reading stops one byte past the 10 bytes claimed.
        (
            "bomb.gz",
            gz(&idx(&[10, 1, 1], &vec![0; 64 << 20])),
            "header claims [10, 1, 1] = 10 bytes of data, but the file holds more than 10",
        ),
        (
            "short.gz",
            gz(&idx(&[10, 1, 1], &[0; 4])),
            "but the file holds only 4",
        ),
        (
            "no-trailer.gz",
            {
                let g = gz(&idx(&[2, 2, 2], &[1; 8]));
                g[..g.len() - 4].to_vec()
            },
            "corrupt gzip data",
        ),
        (
            "trailing-junk.gz",
            [gz(&idx(&[2, 2, 2], &[1; 8])), b"junk".to_vec()].concat(),
            "corrupt gzip data",
        ),
    ];
    for (name, bytes, needle) in cases {
        let path = write(dir.path(), name, &bytes);
        assert_error(data::load_idx(&path), &path, needle);
    }
    let images = write(dir.path(), "img", &idx(&[2, 2, 2], &[1; 8]));
    let labels = write(dir.path(), "lab", &idx(&[2, 2, 2], &[1; 8]));
    assert_error(
        data::load_idx_pair(&images, &labels),
        &labels,
        "expected labels (1 dimension), found shape [2, 2, 2]",
    );
}

#[test]
fn csv_header_bom_and_label_column_edge_cases() {
    let dir = tempfile::tempdir().unwrap();
    // A byte-order mark does not turn the first data row into a "header".
    let path = write(dir.path(), "bom.csv", b"\xef\xbb\xbf0,255,7\n1,2,3\n");
    let set = data::load_csv(&path, true).unwrap();
    assert_eq!((set.len, set.labels), (2, Some(vec![7, 3])));
    let cases: Vec<(&str, &[u8], bool, &str)> = vec![
        // A first row with some numbers is data, not a header to skip silently.
        (
            "typo.csv",
            b"1,2,x\n1,2,3\n",
            false,
            "line 1, column 3: `x` is not a number (a header row must have no numeric cells)",
        ),
        (
            "one-column.csv",
            b"5\n6\n",
            true,
            "line 1 has 1 column: pixels and a label column need at least 2",
        ),
        (
            "bytes-range.csv",
            b"0,300,2\n",
            false,
            "line 1, column 2: value 300 is outside 0–255",
        ),
        (
            "huge.csv",
            b"0.5,1e39\n",
            false,
            "line 1, column 2: `1e39` is not finite",
        ),
        ("header-only.csv", b"a,b,label\n", true, "empty dataset"),
        (
            "latin1.csv",
            b"0,1\n\xe9,1\n",
            false,
            "line 2 is not UTF-8 text",
        ),
    ];
    for (name, bytes, label, needle) in cases {
        let path = write(dir.path(), name, bytes);
        assert_error(data::load_csv(&path, label), &path, needle);
    }
}

#[test]
fn npy_header_edge_cases() {
    let dir = tempfile::tempdir().unwrap();
    let mut fortran = npy("|u1", false, "(1, 2)", &[0, 1]);
    let at = fortran.windows(5).position(|w| w == b"False").unwrap();
    fortran[at..at + 5].copy_from_slice(b"True ");
    let mut v2_cut = b"\x93NUMPY\x02\x00\x10".to_vec();
    v2_cut.truncate(9);
    let mut huge_header = b"\x93NUMPY\x02\x00".to_vec();
    huge_header.extend_from_slice(&u32::MAX.to_le_bytes());
    let big: Vec<u8> = [0.5f32, 1.5].iter().flat_map(|v| v.to_le_bytes()).collect();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "fortran.npy",
            fortran,
            "Fortran-order arrays are not supported",
        ),
        ("v2-cut.npy", v2_cut, "truncated header"),
        ("magic-only.npy", b"\x93NUMPY".to_vec(), "truncated header"),
        (
            "version.npy",
            b"\x93NUMPY\x07\x00\x00\x00".to_vec(),
            "unsupported .npy format version 7",
        ),
        (
            "header-len.npy",
            huge_header,
            "header length 4294967295 is implausible",
        ),
        (
            "overflow.npy",
            npy("|u1", false, "(4294967296, 4294967296, 4294967296)", &[]),
            "needs more than 2^64 bytes of data",
        ),
        (
            "negative.npy",
            npy("|u1", false, "(-1, 2)", &[]),
            "malformed shape (-1, 2)",
        ),
        (
            "zero-pixels.npy",
            npy("|u1", false, "(3, 0)", &[]),
            "0 pixels per item",
        ),
        (
            "range.npy",
            npy("<f4", false, "(1, 2)", &big),
            "item 0, pixel 1: value 1.5 is outside [0, 1]",
        ),
        (
            "big-endian.npy",
            npy(">f4", false, "(1, 2)", &big),
            "unsupported dtype `>f4`",
        ),
        (
            "gz-long.npy.gz",
            gz(&npy("|u1", false, "(1, 2)", &[0, 1, 2])),
            "needs 2 bytes of data, the file holds more than 2",
        ),
    ];
    for (name, bytes, needle) in cases {
        let path = write(dir.path(), name, &bytes);
        assert_error(data::load_npy(&path), &path, needle);
    }
}

#[test]
fn test_data_must_match_the_training_items() {
    let dir = tempfile::tempdir().unwrap();
    let train = write(
        dir.path(),
        "train.npy",
        &npy("|u1", false, "(2, 4)", &[0; 8]),
    );
    let test = write(
        dir.path(),
        "test.npy",
        &npy("|u1", false, "(2, 3)", &[0; 6]),
    );
    let same = write(dir.path(), "same.csv", b"1,2,3,4,0\n5,6,7,8,1\n");
    let err = data::load_sources(train.to_str().unwrap(), test.to_str())
        .expect_err("3-pixel test items for 4-pixel training items");
    assert_eq!(err.path, test);
    assert!(
        err.to_string()
            .contains("test items have 3 pixels (shape [3]), the training items 4 (shape [4])"),
        "{err}"
    );
    // The same pixel count in another shape (CSV makes 4 pixels 2×2) is fine.
    let src = data::load_sources(train.to_str().unwrap(), same.to_str()).unwrap();
    assert_eq!(src.test.unwrap().len, 2);
}

#[test]
fn the_shipped_set_trains_on_all_of_it_when_a_test_set_is_given() {
    let dir = tempfile::tempdir().unwrap();
    let test = write(
        dir.path(),
        "test.npy",
        &npy("|u1", false, "(3, 784)", &[7; 3 * 784]),
    );
    let split = data::load_sources("mnist5k", None).unwrap();
    assert_eq!(split.train.len, 4000);
    assert_eq!(split.test.unwrap().len, 1000);
    let whole = data::load_sources("mnist5k", test.to_str()).unwrap();
    assert_eq!(whole.train.len, 5000);
    assert_eq!(whole.test.unwrap().len, 3);
}
