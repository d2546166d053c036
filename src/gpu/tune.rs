//! Kernel variants chosen by timing: the first time a kernel family meets a shape on an adapter,
//! each candidate is timed and the fastest kept; the choice is cached on disk per adapter, driver
//! and crate version, so later runs (and resumed ones) start at once with the same kernels.
//!
//! The cache is a JSON file: `$VAE_TUNE_CACHE` if set (an empty value keeps it in memory only),
//! else `$XDG_CACHE_HOME/vae-wgpu/tune.json` or `~/.cache/vae-wgpu/tune.json`. A missing,
//! unreadable or corrupt file is retuned, never an error; a failed save only warns.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::{Gpu, Result};

/// The candidates' times and the one chosen, for one kernel family and shape on one adapter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TuneEntry {
    pub choice: String,
    /// Seconds per dispatch, per candidate.
    pub seconds: BTreeMap<String, f64>,
}

/// A candidate whose first warm run is this many times slower than the best so far is not timed
/// further (the slow kernels on large shapes would otherwise make tuning take seconds).
const GIVE_UP: f64 = 3.0;

/// A candidate other than the first (the heuristic's pick) must be this much faster to be
/// chosen, so that timing noise on a busy host does not flip choices between runs.
const MARGIN: f64 = 1.1;

/// Timing rounds over the candidates.
const ROUNDS: usize = 3;

#[derive(Debug, Default)]
pub struct TuneCache {
    path: Option<PathBuf>,
    entries: Mutex<BTreeMap<String, TuneEntry>>,
}

impl TuneCache {
    /// The cache at the default location (see the module docs).
    pub fn from_env() -> Self {
        let path = match std::env::var_os("VAE_TUNE_CACHE") {
            Some(p) if p.is_empty() => None,
            Some(p) => Some(PathBuf::from(p)),
            None => std::env::var_os("XDG_CACHE_HOME")
                .filter(|d| !d.is_empty())
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))
                .map(|d| d.join("vae-wgpu").join("tune.json")),
        };
        Self::at(path)
    }

    /// A cache kept in `path` (`None`: in memory only).
    pub fn at(path: Option<PathBuf>) -> Self {
        let entries = path.as_deref().map(read_entries).unwrap_or_default();
        Self {
            path,
            entries: Mutex::new(entries),
        }
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    pub fn get(&self, key: &str) -> Option<TuneEntry> {
        self.lock().get(key).cloned()
    }

    /// Records `entry` unless another process saved one for `key` meanwhile, in which case that
    /// one wins (so concurrent runs agree); returns the entry in force.
    fn insert(
        &self,
        key: String,
        entry: TuneEntry,
        valid: impl Fn(&TuneEntry) -> bool,
    ) -> TuneEntry {
        let Some(path) = &self.path else {
            self.lock().insert(key, entry.clone());
            return entry;
        };
        let mut on_disk = read_entries(path);
        if let Some(theirs) = on_disk.get(&key).filter(|e| valid(e)) {
            let theirs = theirs.clone();
            self.lock().insert(key, theirs.clone());
            return theirs;
        }
        self.lock().insert(key.clone(), entry.clone());
        on_disk.insert(key, entry.clone());
        if let Err(e) = write_entries(path, &on_disk) {
            eprintln!(
                "warning: could not save the kernel tuning cache {}: {e}",
                path.display()
            );
        }
        entry
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, TuneEntry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn read_entries(path: &Path) -> BTreeMap<String, TuneEntry> {
    std::fs::read(path)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default()
}

fn write_entries(path: &Path, entries: &BTreeMap<String, TuneEntry>) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let json = serde_json::to_vec_pretty(entries).map_err(std::io::Error::other)?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let tmp = path.with_extension(format!("tmp-{}-{nanos}", std::process::id()));
    std::fs::write(&tmp, json)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

impl Gpu {
    /// What identifies this adapter's timings: the device, its driver and this crate's kernels.
    fn tune_prefix(&self) -> String {
        let i = &self.info;
        format!(
            "{} | {:?} | {} {} | vae-wgpu {}",
            i.name,
            i.backend,
            i.driver,
            i.driver_info,
            env!("CARGO_PKG_VERSION")
        )
    }

    /// The fastest of `candidates` for `key` (a kernel family and shape): from the cache, or by
    /// calling `seconds` on each (seconds per dispatch, warm; given the time above which it may
    /// stop early and report what it saw) and caching the result. The first candidate is the
    /// default and wins unless another is [`MARGIN`] times faster.
    pub fn tuned(
        &self,
        key: &str,
        candidates: &[&str],
        mut seconds: impl FnMut(&str, Option<f64>) -> Result<f64>,
    ) -> Result<String> {
        let full = format!("{} | {key}", self.tune_prefix());
        // An entry that did not time every candidate (a kernel variant added since) is retuned.
        let valid = |e: &TuneEntry| {
            candidates.contains(&e.choice.as_str())
                && candidates.iter().all(|c| e.seconds.contains_key(*c))
        };
        if let Some(e) = self.tune.get(&full).filter(|e| valid(e)) {
            return Ok(e.choice);
        }
        // Rounds over the candidates in turn, each keeping its best time, so that a burst of
        // load on a shared host does not fall on one candidate alone; one far behind the best
        // (GIVE_UP) is not timed again.
        let mut times: BTreeMap<String, f64> = BTreeMap::new();
        let fastest = |times: &BTreeMap<String, f64>| times.values().copied().reduce(f64::min);
        for round in 0..ROUNDS {
            for &c in candidates {
                let best = fastest(&times);
                if round > 0 && best.is_some_and(|b| times[c] > GIVE_UP * b) {
                    continue;
                }
                let t = seconds(c, best.map(|b| GIVE_UP * b))?;
                let kept = times.get(c).map_or(t, |&old| old.min(t));
                times.insert(c.to_string(), kept);
            }
        }
        // The first candidate (the heuristic's pick) unless another beats it by the margin.
        let mut best: Option<(&str, f64)> = None;
        for (i, &c) in candidates.iter().enumerate() {
            let t = times[c];
            let margin = if i == 0 { 1.0 } else { MARGIN };
            if best.is_none_or(|(_, b)| t * margin < b) {
                best = Some((c, t));
            }
        }
        let choice = best.map_or_else(String::new, |(c, _)| c.to_string());
        let entry = TuneEntry {
            choice,
            seconds: times,
        };
        Ok(self.tune.insert(full, entry, valid).choice)
    }

    /// Replaces the tuning cache (tests, and callers that manage their own).
    pub fn set_tune_cache(&mut self, cache: TuneCache) {
        self.tune = cache;
    }

    pub fn tune_cache(&self) -> &TuneCache {
        &self.tune
    }

    /// Warm seconds per run of `dispatches` (after one untimed run that compiles and JITs): the
    /// best of three batches sized to take about 20 ms each, or the first warm run alone when it
    /// exceeds `give_up_above`.
    pub fn time_dispatches(
        &self,
        dispatches: &[&super::Dispatch],
        give_up_above: Option<f64>,
    ) -> Result<f64> {
        let once = || -> Result<f64> {
            let t = std::time::Instant::now();
            self.run(dispatches)?;
            Ok(t.elapsed().as_secs_f64())
        };
        once()?;
        let mut best = once()?;
        if give_up_above.is_some_and(|limit| best > limit) {
            return Ok(best);
        }
        let reps = ((0.02 / best.max(1e-6)) as usize).clamp(1, 50);
        for _ in 0..3 {
            let batch: Vec<&super::Dispatch> =
                (0..reps).flat_map(|_| dispatches.iter().copied()).collect();
            let t = std::time::Instant::now();
            self.run(&batch)?;
            best = best.min(t.elapsed().as_secs_f64() / reps as f64);
        }
        Ok(best)
    }
}
