//! Latency histogram written by one thread and read by another without locks.
//!
//! Log-linear buckets (8 per power of two, the HdrHistogram idea at 3 significant bits) cover
//! 1 ns to ~17 s in 272 counters; quantiles are reported as the bucket's midpoint, within 6 %.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

const SUB_BITS: u32 = 3;
const SUB: usize = 1 << SUB_BITS;
const BUCKETS: usize = 34 * SUB;

pub struct Histogram {
  counts: Box<[AtomicU64]>,
}

impl Default for Histogram {
  fn default() -> Self {
    Self {
      counts: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
    }
  }
}

fn bucket_of(v: u64) -> usize {
  if v < SUB as u64 {
    return v as usize;
  }
  let msb = 63 - v.leading_zeros();
  let shift = msb - SUB_BITS;
  let sub = ((v >> shift) as usize) & (SUB - 1);
  (((shift + 1) as usize) * SUB + sub).min(BUCKETS - 1)
}

fn bucket_mid(b: usize) -> f64 {
  if b < SUB {
    return b as f64;
  }
  let shift = (b / SUB - 1) as u32;
  let sub = (b % SUB) as u64;
  let lo = ((SUB as u64) | sub) << shift;
  lo as f64 + ((1u64 << shift) as f64) / 2.0
}

impl Histogram {
  /// Single-writer increment: a relaxed load and store, no locked instruction on the hot path.
  #[inline]
  pub fn record(&self, v: u64) {
    let c = &self.counts[bucket_of(v)];
    c.store(c.load(Relaxed) + 1, Relaxed);
  }

  pub fn reset(&self) {
    for c in self.counts.iter() {
      c.store(0, Relaxed);
    }
  }

  pub fn quantile(&self, q: f64) -> Option<f64> {
    let snapshot: Vec<u64> = self.counts.iter().map(|c| c.load(Relaxed)).collect();
    let total: u64 = snapshot.iter().sum();
    if total == 0 {
      return None;
    }
    let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
    let mut seen = 0;
    for (b, n) in snapshot.iter().enumerate() {
      seen += n;
      if seen >= rank {
        return Some(bucket_mid(b));
      }
    }
    None
  }
}
