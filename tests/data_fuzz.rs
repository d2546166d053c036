//! Property-based fuzzing of every data loader: arbitrary bytes, valid files, and structured
//! mutations of valid files (truncation, flipped bytes, header fields set to huge or zero values,
//! hostile tokens), each plain and gzip-wrapped (including corrupted gzip streams).
//!
//! Every input must give either a dataset with consistent shapes (items × pixels = pixel count,
//! one label per item, floats finite and in [0, 1]) or an error that names the file; a panic
//! fails the test. Valid files must load back exactly.
//!
//! Each strategy runs `CASES` cases (override with `VAE_FUZZ_CASES=N`) from a fixed seed (or
//! `PROPTEST_RNG_SEED`); each test prints how many inputs it tried (`-- --nocapture` to see).

mod common;

use common::files::{gz, idx};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use proptest::prelude::*;
use proptest::sample::{Index, select};
use proptest::test_runner::{Config, RngSeed, TestCaseError, TestRunner};
use vae_wgpu::data::{self, Dataset, Pixels};

/// Cases per strategy: 44 strategies over the six parsers, 88,000 inputs in all, about 6 s in
/// release mode on 2 cores (most of it writing the files).
const CASES: u32 = 2000;
const SEED: u64 = 0x5eed_da7a;

fn config() -> Config {
    let cases = std::env::var("VAE_FUZZ_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(CASES);
    let mut config = Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    };
    if std::env::var_os("PROPTEST_RNG_SEED").is_none() {
        config.rng_seed = RngSeed::Fixed(SEED);
    }
    config
}

/// One parser's fuzzing: a scratch directory and the tally of what each strategy tried.
struct Fuzz {
    parser: &'static str,
    dir: tempfile::TempDir,
    /// (strategy, inputs tried, inputs that parsed)
    tally: Vec<(String, usize, usize)>,
}

impl Fuzz {
    fn new(parser: &'static str) -> Self {
        Fuzz {
            parser,
            dir: tempfile::tempdir().unwrap(),
            tally: Vec::new(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Runs `check` on `CASES` values of `strategy`; `check` says whether the input parsed.
    fn run<S: Strategy>(
        &mut self,
        strategy_name: &str,
        strategy: S,
        check: impl Fn(S::Value) -> Result<bool, TestCaseError>,
    ) {
        let (tried, parsed) = (AtomicUsize::new(0), AtomicUsize::new(0));
        let mut config = config();
        if let RngSeed::Fixed(seed) = config.rng_seed {
            // Each strategy its own stream (FNV-1a of its name): the gzip variants must not
            // replay the plain inputs.
            let name = format!("{}/{strategy_name}", self.parser);
            let fnv = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
            });
            config.rng_seed = RngSeed::Fixed(seed ^ fnv);
        }
        let mut runner = TestRunner::new(config);
        let result = runner.run(&strategy, |value| {
            tried.fetch_add(1, Relaxed);
            if check(value)? {
                parsed.fetch_add(1, Relaxed);
            }
            Ok(())
        });
        if let Err(e) = result {
            panic!("{} / {strategy_name}: {e}", self.parser);
        }
        self.tally.push((
            strategy_name.into(),
            tried.into_inner(),
            parsed.into_inner(),
        ));
    }
}

impl Drop for Fuzz {
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        let tried: usize = self.tally.iter().map(|t| t.1).sum();
        let parsed: usize = self.tally.iter().map(|t| t.2).sum();
        let mut report = format!(
            "fuzz {}: {tried} inputs ({} strategies × {} cases), {parsed} parsed with consistent \
             shapes, {} rejected with an error naming the file, 0 panics",
            self.parser,
            self.tally.len(),
            config().cases,
            tried - parsed,
        );
        for (name, tried, parsed) in &self.tally {
            report += &format!("\n    {name}: {tried} tried, {parsed} parsed");
        }
        println!("{report}");
    }
}

/// Replaces the file at `path`. Unlinking first rather than truncating keeps ext4 from flushing
/// the old blocks to disk on every case (its `auto_da_alloc` heuristic), which made the suite
/// several times slower.
fn write(path: &Path, bytes: &[u8]) {
    let _ = std::fs::remove_file(path);
    std::fs::write(path, bytes).unwrap();
}

/// Ok: the dataset is consistent. Err: the message names one of `files`.
fn judge(result: data::Result<Dataset>, files: &[&Path]) -> Result<bool, TestCaseError> {
    match result {
        Ok(set) => {
            let dim = set.dim();
            prop_assert!(set.len >= 1, "an empty dataset was accepted");
            prop_assert!(dim >= 1, "items of 0 pixels were accepted");
            let pixels = match &set.pixels {
                Pixels::U8(v) => v.len(),
                Pixels::F32(v) => {
                    prop_assert!(
                        v.iter().all(|x| x.is_finite() && (0.0..=1.0).contains(x)),
                        "float pixels outside [0, 1] were accepted"
                    );
                    v.len()
                }
            };
            prop_assert_eq!(pixels, set.len * dim, "pixel count vs items × pixels");
            if let Some(labels) = &set.labels {
                prop_assert_eq!(labels.len(), set.len, "one label per item");
            }
            Ok(true)
        }
        Err(e) => {
            let msg = e.to_string();
            prop_assert!(
                files.iter().any(|f| msg.contains(&f.display().to_string())),
                "error does not name the file: {}",
                msg
            );
            prop_assert!(!e.problem.is_empty(), "error without a problem: {}", msg);
            Ok(false)
        }
    }
}

/// File contents that print as a byte string in a failing case, e.g. `b"\x93NUMPY\x01\x00v\x00{'descr'..."`.
#[derive(Clone, PartialEq, Eq)]
struct Bytes(Vec<u8>);

impl std::fmt::Debug for Bytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "b\"{}\"", self.0.escape_ascii())
    }
}

impl std::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

// ---- structured mutations -----------------------------------------------------------------

/// An edit of a file's bytes.
#[derive(Debug, Clone)]
enum Mutation {
    /// Keep only a prefix.
    Truncate(Index),
    /// XOR a few bytes with nonzero values.
    Flip(Vec<(Index, u8)>),
    /// Overwrite 4 bytes among the first 32 (the header) with an interesting u32, big- or
    /// little-endian: huge sizes, zero, one.
    SetHeader32(Index, u32, bool),
    /// Insert bytes (or a hostile token) somewhere.
    Insert(Index, Bytes),
    /// Append bytes.
    Append(Bytes),
}

fn interesting_u32() -> impl Strategy<Value = u32> {
    prop_oneof![
        select(vec![
            0,
            1,
            2,
            255,
            0x100,
            0xffff,
            0x0100_0000,
            0x7fff_ffff,
            0x8000_0000,
            0xffff_fffe,
            u32::MAX,
        ]),
        any::<u32>(),
    ]
}

fn token() -> impl Strategy<Value = Bytes> {
    prop_oneof![
        select(vec![
            &b","[..],
            b"\n",
            b"\r\n",
            b"NaN",
            b"inf",
            b"-inf",
            b"-1",
            b"256",
            b"1e39",
            b"0.5",
            b"255",
            b"1.5",
            b"x",
            b"\"",
            b"\xef\xbb\xbf",
            b"\xff\xfe",
            b" ",
            b"(",
            b")",
            b"'",
            b"True",
            b"18446744073709551616",
            b"4294967296",
        ])
        .prop_map(|t| Bytes(t.to_vec())),
        prop::collection::vec(any::<u8>(), 1..8).prop_map(Bytes),
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        any::<Index>().prop_map(Mutation::Truncate),
        prop::collection::vec((any::<Index>(), 1u8..=255), 1..4).prop_map(Mutation::Flip),
        (any::<Index>(), interesting_u32(), any::<bool>())
            .prop_map(|(i, v, be)| Mutation::SetHeader32(i, v, be)),
        (any::<Index>(), token()).prop_map(|(i, t)| Mutation::Insert(i, t)),
        token().prop_map(Mutation::Append),
    ]
}

fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    prop::collection::vec(mutation(), 1..4)
}

fn apply(mut bytes: Vec<u8>, edits: &[Mutation]) -> Vec<u8> {
    for edit in edits {
        match edit {
            Mutation::Truncate(at) => {
                let at = at.index(bytes.len() + 1);
                bytes.truncate(at);
            }
            Mutation::Flip(flips) => {
                if !bytes.is_empty() {
                    for (at, x) in flips {
                        let at = at.index(bytes.len());
                        bytes[at] ^= x;
                    }
                }
            }
            Mutation::SetHeader32(at, v, big_endian) => {
                let room = bytes.len().min(32);
                if room >= 4 {
                    let at = at.index(room - 3);
                    let b = if *big_endian {
                        v.to_be_bytes()
                    } else {
                        v.to_le_bytes()
                    };
                    bytes[at..at + 4].copy_from_slice(&b);
                }
            }
            Mutation::Insert(at, t) => {
                let at = at.index(bytes.len() + 1);
                bytes.splice(at..at, t.iter().copied());
            }
            Mutation::Append(t) => bytes.extend_from_slice(t),
        }
    }
    bytes
}

/// A gzip stream of `bytes`, sometimes itself damaged (truncated, flipped, with trailing junk).
fn gz_maybe_corrupt(bytes: Vec<u8>, edits: Option<Vec<Mutation>>) -> Vec<u8> {
    let packed = gz(&bytes);
    match edits {
        Some(edits) => apply(packed, &edits),
        None => packed,
    }
}

fn arbitrary_bytes() -> impl Strategy<Value = Bytes> {
    prop::collection::vec(any::<u8>(), 0..200).prop_map(Bytes)
}

/// Runs the strategies every parser shares: arbitrary bytes, `magic` + arbitrary bytes, valid
/// files (must load as `expect` says), mutated valid files; and gzip-wrapped: arbitrary, valid,
/// mutated, and valid with a damaged gzip stream.
fn fuzz_file_parser<V: std::fmt::Debug + Clone + 'static>(
    fuzz: &mut Fuzz,
    magic: &'static [u8],
    valid: impl Strategy<Value = (Bytes, V)> + Clone,
    load: impl Fn(&Path) -> data::Result<Dataset>,
    expect: impl Fn(&V, &Dataset) -> Result<(), TestCaseError>,
) {
    let plain = fuzz.path("input");
    let packed = fuzz.path("input.gz");
    fuzz.run("arbitrary bytes", arbitrary_bytes(), |bytes| {
        write(&plain, &bytes);
        judge(load(&plain), &[&plain])
    });
    fuzz.run("magic + arbitrary bytes", arbitrary_bytes(), |bytes| {
        write(&plain, &[magic, &bytes[..]].concat());
        judge(load(&plain), &[&plain])
    });
    fuzz.run("valid file", valid.clone(), |(bytes, v)| {
        write(&plain, &bytes);
        let set = load(&plain).map_err(|e| TestCaseError::fail(format!("valid file: {e}")))?;
        expect(&v, &set)?;
        judge(Ok(set), &[&plain])
    });
    fuzz.run(
        "mutated valid file",
        (valid.clone(), mutations()),
        |((bytes, _), edits)| {
            write(&plain, &apply(bytes.0, &edits));
            judge(load(&plain), &[&plain])
        },
    );
    fuzz.run("gz: magic + arbitrary bytes", arbitrary_bytes(), |bytes| {
        write(&packed, &gz(&[magic, &bytes[..]].concat()));
        judge(load(&packed), &[&packed])
    });
    fuzz.run("gz: valid file", valid.clone(), |(bytes, v)| {
        write(&packed, &gz(&bytes));
        let set = load(&packed).map_err(|e| TestCaseError::fail(format!("valid file: {e}")))?;
        expect(&v, &set)?;
        judge(Ok(set), &[&packed])
    });
    fuzz.run(
        "gz: mutated valid file",
        (valid.clone(), mutations()),
        |((bytes, _), edits)| {
            write(&packed, &gz(&apply(bytes.0, &edits)));
            judge(load(&packed), &[&packed])
        },
    );
    fuzz.run(
        "gz: damaged gzip stream",
        (valid, prop::option::of(mutations())),
        |((bytes, _), edits)| {
            write(&packed, &gz_maybe_corrupt(bytes.0, edits));
            judge(load(&packed), &[&packed])
        },
    );
}

// ---- valid files --------------------------------------------------------------------------

/// An IDX image file of 2 to 4 dimensions, and its (dims, pixels).
fn valid_idx_images() -> impl Strategy<Value = (Bytes, (Vec<u32>, Vec<u8>))> + Clone {
    prop::collection::vec(1u32..6, 2..=4)
        .prop_flat_map(|dims| {
            let n = dims.iter().product::<u32>() as usize;
            (Just(dims), prop::collection::vec(any::<u8>(), n))
        })
        .prop_map(|(dims, data)| (Bytes(idx(&dims, &data)), (dims, data)))
}

fn valid_idx_labels() -> impl Strategy<Value = (Bytes, Vec<u8>)> + Clone {
    prop::collection::vec(0u8..10, 1..20).prop_map(|l| (Bytes(idx(&[l.len() as u32], &l)), l))
}

fn expect_idx((dims, data): &(Vec<u32>, Vec<u8>), set: &Dataset) -> Result<(), TestCaseError> {
    prop_assert_eq!(set.len, dims[0] as usize);
    let shape: Vec<usize> = dims[1..].iter().map(|&d| d as usize).collect();
    prop_assert_eq!(&set.item_shape, &shape);
    prop_assert_eq!(&set.pixels, &Pixels::U8(data.clone()));
    Ok(())
}

/// A valid CSV: rows × width values (bytes, or floats in [0, 1]), an optional header, an
/// optional trailing label column; and the expected (rows, pixels, labels).
#[derive(Debug, Clone)]
struct CsvFile {
    rows: usize,
    pixels: Pixels,
    labels: Option<Vec<u8>>,
}

fn valid_csv(label: bool) -> impl Strategy<Value = (Bytes, CsvFile)> + Clone {
    (
        1usize..6,
        1usize..10,
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_flat_map(move |(rows, width, bytes, header, crlf)| {
            let n = rows * width;
            let values = if bytes {
                // At least one value above 1, so that the file reads as bytes.
                prop::collection::vec(0u8..=255, n)
                    .prop_map(|mut v| {
                        v[0] = v[0].max(2);
                        Pixels::U8(v)
                    })
                    .boxed()
            } else {
                prop::collection::vec(0u32..=1000, n)
                    .prop_map(|v| Pixels::F32(v.into_iter().map(|x| x as f32 / 1000.0).collect()))
                    .boxed()
            };
            let labels = prop::collection::vec(0u8..=255, if label { rows } else { 0 });
            (Just((rows, width, header, crlf)), values, labels)
        })
        .prop_map(move |((rows, width, header, crlf), pixels, labels)| {
            let eol = if crlf { "\r\n" } else { "\n" };
            let mut text = String::new();
            if header {
                let names: Vec<String> = (0..width).map(|i| format!("p{i}")).collect();
                text += &names.join(",");
                if label {
                    text += ",label";
                }
                text += eol;
            }
            for r in 0..rows {
                let cells: Vec<String> = (0..width)
                    .map(|c| match &pixels {
                        Pixels::U8(v) => v[r * width + c].to_string(),
                        Pixels::F32(v) => v[r * width + c].to_string(),
                    })
                    .collect();
                text += &cells.join(",");
                if label {
                    text += &format!(",{}", labels[r]);
                }
                text += eol;
            }
            (
                Bytes(text.into_bytes()),
                CsvFile {
                    rows,
                    pixels,
                    labels: label.then_some(labels),
                },
            )
        })
}

fn expect_csv(want: &CsvFile, set: &Dataset) -> Result<(), TestCaseError> {
    prop_assert_eq!(set.len, want.rows);
    prop_assert_eq!(&set.pixels, &want.pixels);
    prop_assert_eq!(&set.labels, &want.labels);
    Ok(())
}

/// A `.npy` file with the given header fields (padded as NumPy pads them) and data.
fn npy(version: u8, descr: &str, fortran: &str, shape: &str, data: &[u8]) -> Vec<u8> {
    let mut header =
        format!("{{'descr': '{descr}', 'fortran_order': {fortran}, 'shape': {shape}, }}");
    let prefix = if version == 1 { 10 } else { 12 };
    while (prefix + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut v = b"\x93NUMPY".to_vec();
    v.extend_from_slice(&[version, 0]);
    if version == 1 {
        v.extend_from_slice(&(header.len() as u16).to_le_bytes());
    } else {
        v.extend_from_slice(&(header.len() as u32).to_le_bytes());
    }
    v.extend_from_slice(header.as_bytes());
    v.extend_from_slice(data);
    v
}

fn shape_text(dims: &[usize]) -> String {
    let inner: Vec<String> = dims.iter().map(usize::to_string).collect();
    if dims.len() == 1 {
        format!("({},)", inner[0])
    } else {
        format!("({})", inner.join(", "))
    }
}

/// A valid `.npy` (format 1, 2 or 3; uint8 or float32 in [0, 1]) and its (dims, pixels).
fn valid_npy() -> impl Strategy<Value = (Bytes, (Vec<usize>, Pixels))> + Clone {
    (
        prop::collection::vec(1usize..6, 2..=4),
        1u8..=3,
        any::<bool>(),
    )
        .prop_flat_map(|(dims, version, float)| {
            let n: usize = dims.iter().product();
            let values = if float {
                prop::collection::vec(0u32..=1000, n)
                    .prop_map(|v| Pixels::F32(v.into_iter().map(|x| x as f32 / 1000.0).collect()))
                    .boxed()
            } else {
                prop::collection::vec(any::<u8>(), n)
                    .prop_map(Pixels::U8)
                    .boxed()
            };
            (Just(dims), Just(version), values)
        })
        .prop_map(|(dims, version, pixels)| {
            let (descr, data) = match &pixels {
                Pixels::U8(v) => ("|u1", v.clone()),
                Pixels::F32(v) => ("<f4", v.iter().flat_map(|x| x.to_le_bytes()).collect()),
            };
            let bytes = Bytes(npy(version, descr, "False", &shape_text(&dims), &data));
            (bytes, (dims, pixels))
        })
}

fn expect_npy((dims, pixels): &(Vec<usize>, Pixels), set: &Dataset) -> Result<(), TestCaseError> {
    prop_assert_eq!(set.len, dims[0]);
    prop_assert_eq!(&set.item_shape[..], &dims[1..]);
    prop_assert_eq!(&set.pixels, pixels);
    Ok(())
}

/// `.npy` files whose header fields are individually hostile: unsupported or odd dtypes, Fortran
/// order, shapes that are huge, overflowing, negative, empty or of the wrong rank, and a body
/// whose length is near what the shape needs.
fn hostile_npy() -> impl Strategy<Value = Bytes> {
    // Each field is usually valid, so that the others' checks are reached too.
    let descr = prop_oneof![
        2 => select(vec!["|u1", "<f4", "u1", "f4", "<u1"]),
        1 => select(vec!["<f8", ">f4", "|b1", "<i4", "|i1", "<f2", "O", ""]),
    ];
    let fortran = prop_oneof![
        3 => Just("False"),
        1 => select(vec!["True", "false", "0", ""]),
    ];
    // Parsed dims (to size an exact body) or a shape text that does not parse.
    let shape = prop_oneof![
        3 => prop::collection::vec(
            prop_oneof![
                4 => 0usize..4,
                1 => select(vec![
                    usize::MAX,
                    u32::MAX as usize,
                    1 << 32,
                    1 << 62,
                    (1 << 31) + 1
                ])
            ],
            0..5
        )
        .prop_map(|d| (shape_text(&d), Some(d))),
        1 => select(vec![
            "()",
            "(-1, 2)",
            "(2, -1)",
            "(18446744073709551616, 1)",
            "(2 3)",
            "(1.5, 2)",
            "(",
            "2, 2",
            "[2, 2]",
            "(2, 2L)",
        ])
        .prop_map(|s| (s.to_string(), None)),
    ];
    (
        1u8..=4,
        descr,
        fortran,
        shape,
        any::<bool>(),
        prop::collection::vec(any::<u8>(), 0..64),
    )
        .prop_map(
            |(version, descr, fortran, (shape, dims), exact, mut data)| {
                let elem = if descr.contains('1') { 1 } else { 4 };
                let needed =
                    dims.and_then(|d| d.iter().try_fold(elem, |a: usize, &x| a.checked_mul(x)));
                if let Some(n) = needed.filter(|&n| exact && n <= 64) {
                    data.resize(n, 0);
                }
                Bytes(npy(version, descr, fortran, &shape, &data))
            },
        )
}

/// IDX files whose header fields are individually hostile: other element types, 0 or more than
/// 4 dimensions, sizes of 0 or near 2^32 (whose product overflows 64 bits), and a body that is
/// exactly what the header claims where that is small, else a few bytes.
fn hostile_idx() -> impl Strategy<Value = Bytes> {
    let dim = prop_oneof![
        3 => 0u32..4,
        1 => select(vec![0x7fff_ffff, 0x8000_0000, 0xffff_ffff, 0x0001_0000]),
    ];
    (
        select(vec![0x08u8, 0x08, 0x08, 0x09, 0x0b, 0x0c, 0x0d, 0x0e, 0x00]),
        prop::collection::vec(dim, 0..6),
        any::<bool>(),
        prop::collection::vec(any::<u8>(), 0..32),
    )
        .prop_map(|(dtype, dims, exact, junk)| {
            let mut v = vec![0, 0, dtype, dims.len() as u8];
            for d in &dims {
                v.extend_from_slice(&d.to_be_bytes());
            }
            let claimed = dims.iter().try_fold(1u64, |a, &d| a.checked_mul(d as u64));
            match claimed {
                Some(n) if exact && n <= 64 => v.resize(v.len() + n as usize, 0x80),
                _ => v.extend_from_slice(&junk),
            }
            Bytes(v)
        })
}

// ---- the parsers --------------------------------------------------------------------------

#[test]
fn fuzz_idx_images() {
    let mut fuzz = Fuzz::new("IDX images (load_idx)");
    fuzz_file_parser(
        &mut fuzz,
        &[0, 0, 8, 3],
        valid_idx_images(),
        data::load_idx,
        expect_idx,
    );
    let plain = fuzz.path("hostile");
    let packed = fuzz.path("hostile.gz");
    fuzz.run("hostile header fields", hostile_idx(), |bytes| {
        write(&plain, &bytes);
        judge(data::load_idx(&plain), &[&plain])
    });
    fuzz.run("gz: hostile header fields", hostile_idx(), |bytes| {
        write(&packed, &gz(&bytes));
        judge(data::load_idx(&packed), &[&packed])
    });
}

#[test]
fn fuzz_idx_labels() {
    // Labels alone go through the pair loader with a fixed valid image file of the same count.
    let mut fuzz = Fuzz::new("IDX labels (load_idx_pair, labels side)");
    let plain = fuzz.path("labels");
    let packed = fuzz.path("labels.gz");
    let images: Vec<PathBuf> = (1..20)
        .map(|n| {
            let p = fuzz.path(&format!("images-{n}"));
            write(&p, &idx(&[n, 2, 2], &vec![7; 4 * n as usize]));
            p
        })
        .collect();
    let load = |labels: &Path, n: usize| data::load_idx_pair(&images[n.clamp(1, 19) - 1], labels);
    fuzz.run(
        "arbitrary bytes",
        (arbitrary_bytes(), 1usize..20),
        |(bytes, n)| {
            write(&plain, &bytes);
            judge(load(&plain, n), &[&plain])
        },
    );
    fuzz.run(
        "magic + arbitrary bytes",
        (arbitrary_bytes(), 1usize..20),
        |(bytes, n)| {
            write(&plain, &[&[0, 0, 8, 1], &bytes[..]].concat());
            judge(load(&plain, n), &[&plain])
        },
    );
    fuzz.run("valid file", valid_idx_labels(), |(bytes, labels)| {
        write(&plain, &bytes);
        let set = load(&plain, labels.len())
            .map_err(|e| TestCaseError::fail(format!("valid file: {e}")))?;
        prop_assert_eq!(set.labels.as_ref(), Some(&labels));
        judge(Ok(set), &[&plain])
    });
    fuzz.run(
        "mutated valid file",
        (valid_idx_labels(), mutations()),
        |((bytes, labels), edits)| {
            write(&plain, &apply(bytes.0, &edits));
            judge(load(&plain, labels.len()), &[&plain])
        },
    );
    fuzz.run(
        "gz: mutated valid file",
        (valid_idx_labels(), mutations()),
        |((bytes, labels), edits)| {
            write(&packed, &gz(&apply(bytes.0, &edits)));
            judge(load(&packed, labels.len()), &[&packed])
        },
    );
    fuzz.run(
        "gz: damaged gzip stream",
        (valid_idx_labels(), prop::option::of(mutations())),
        |((bytes, labels), edits)| {
            write(&packed, &gz_maybe_corrupt(bytes.0, edits));
            judge(load(&packed, labels.len()), &[&packed])
        },
    );
}

#[test]
fn fuzz_idx_pair() {
    let mut fuzz = Fuzz::new("IDX image+label pair (load_idx_pair)");
    let images = fuzz.path("images");
    let labels = fuzz.path("labels.gz");
    // Each side valid or mutated, plain or gzip; counts that agree or not.
    let side = |valid: BoxedStrategy<Bytes>| {
        (
            valid,
            prop::option::of(mutations()),
            any::<bool>(),
            prop::option::of(mutations()),
        )
            .prop_map(|(bytes, edits, packed, gz_edits)| {
                let bytes = match edits {
                    Some(e) => apply(bytes.0, &e),
                    None => bytes.0,
                };
                Bytes(if packed {
                    gz_maybe_corrupt(bytes, gz_edits)
                } else {
                    bytes
                })
            })
    };
    let image_files = valid_idx_images().prop_map(|(b, _)| b).boxed();
    let label_files = valid_idx_labels().prop_map(|(b, _)| b).boxed();
    fuzz.run(
        "either side mutated",
        (side(image_files), side(label_files)),
        |(img, lab)| {
            write(&images, &img);
            write(&labels, &lab);
            judge(data::load_idx_pair(&images, &labels), &[&images, &labels])
        },
    );
    fuzz.run(
        "valid pair, counts agree or not",
        (valid_idx_images(), any::<bool>()),
        |((img, (dims, _)), agree)| {
            let n = dims[0] as usize + usize::from(!agree);
            write(&images, &img);
            write(&labels, &gz(&idx(&[n as u32], &vec![3; n])));
            let result = data::load_idx_pair(&images, &labels);
            prop_assert_eq!(result.is_ok(), agree, "{:?}", result.as_ref().err());
            judge(result, &[&labels])
        },
    );
}

#[test]
fn fuzz_csv_with_label_column() {
    let mut fuzz = Fuzz::new("CSV with label column (load_csv(.., true))");
    fuzz_file_parser(
        &mut fuzz,
        b"0,1,2\n",
        valid_csv(true),
        |p| data::load_csv(p, true),
        expect_csv,
    );
}

#[test]
fn fuzz_csv_without_label_column() {
    let mut fuzz = Fuzz::new("CSV without label column (load_csv(.., false))");
    fuzz_file_parser(
        &mut fuzz,
        b"0.5,",
        valid_csv(false),
        |p| data::load_csv(p, false),
        expect_csv,
    );
}

#[test]
fn fuzz_npy() {
    let mut fuzz = Fuzz::new("NPY (load_npy)");
    fuzz_file_parser(
        &mut fuzz,
        b"\x93NUMPY\x01\x00",
        valid_npy(),
        data::load_npy,
        expect_npy,
    );
    let plain = fuzz.path("hostile.npy");
    let packed = fuzz.path("hostile.npy.gz");
    fuzz.run("hostile header fields", hostile_npy(), |bytes| {
        write(&plain, &bytes);
        judge(data::load_npy(&plain), &[&plain])
    });
    fuzz.run("gz: hostile header fields", hostile_npy(), |bytes| {
        write(&packed, &gz(&bytes));
        judge(data::load_npy(&packed), &[&packed])
    });
}
