//! Philox4x32-10, the counter-based generator of Salmon et al., "Parallel random numbers: as
//! easy as 1, 2, 3" (SC 2011), as in Random123. `shaders/sample.wgsl` computes the same function
//! bit for bit, so the CPU can reproduce any GPU draw from (seed, step, stream, element).

/// Round multipliers and Weyl key increments (Random123's PHILOX_M4x32_*, PHILOX_W32_*).
pub const M0: u32 = 0xD251_1F53;
pub const M1: u32 = 0xCD9E_8D57;
pub const W0: u32 = 0x9E37_79B9;
pub const W1: u32 = 0xBB67_AE85;

fn mulhilo(a: u32, b: u32) -> (u32, u32) {
    let p = a as u64 * b as u64;
    (p as u32, (p >> 32) as u32)
}

/// Ten Philox rounds of `ctr` under `key`.
pub fn philox4x32_10(ctr: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let mut c = ctr;
    let mut k = key;
    for round in 0..10 {
        if round > 0 {
            k = [k[0].wrapping_add(W0), k[1].wrapping_add(W1)];
        }
        let (lo0, hi0) = mulhilo(M0, c[0]);
        let (lo1, hi1) = mulhilo(M1, c[2]);
        c = [hi1 ^ c[1] ^ k[0], lo1, hi0 ^ c[3] ^ k[1], lo0];
    }
    c
}

/// Where one Philox call sits in the engine's random stream: `seed` is the key; the counter is
/// (block, step, stream, 0), block = element / 4. So every element's draw depends only on
/// (seed, step, stream, element), never on how the work is split into dispatches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StreamPos {
    pub seed: u64,
    pub step: u32,
    pub stream: u32,
}

impl StreamPos {
    pub fn key(&self) -> [u32; 2] {
        [self.seed as u32, (self.seed >> 32) as u32]
    }

    /// The four words of block `block` (elements 4·block .. 4·block + 3).
    pub fn block(&self, block: u32) -> [u32; 4] {
        philox4x32_10([block, self.step, self.stream, 0], self.key())
    }

    /// The raw 32-bit word of every element 0..n.
    pub fn words(&self, n: usize) -> Vec<u32> {
        (0..n.div_ceil(4) as u32)
            .flat_map(|b| self.block(b))
            .take(n)
            .collect()
    }
}

/// A word to a uniform in (0, 1): the top 23 bits k give (k + ½)·2⁻²³ = (2k + 1)·2⁻²⁴, which is
/// exact in f32 (2k + 1 < 2²⁴), never 0 or 1, and symmetric about ½. (With 24 bits the midpoint
/// (k + ½)·2⁻²⁴ needs 25 significant bits and rounds to 1.0 at the top.)
pub fn uniform(word: u32) -> f32 {
    ((word >> 9) as f32 + 0.5) * (1.0 / 8_388_608.0)
}
