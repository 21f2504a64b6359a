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

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn quantiles_are_within_the_bucket_resolution() {
    let h = Histogram::default();
    for v in 1..=10_000u64 {
      h.record(v * 100);
    }
    let p50 = h.quantile(0.5).unwrap();
    let p99 = h.quantile(0.99).unwrap();
    assert!((p50 / 500_000.0 - 1.0).abs() < 0.07, "p50 {p50}");
    assert!((p99 / 990_000.0 - 1.0).abs() < 0.07, "p99 {p99}");
  }

  #[test]
  fn small_values_are_exact_and_an_empty_histogram_has_no_quantile() {
    let h = Histogram::default();
    assert_eq!(h.quantile(0.5), None);
    h.record(3);
    assert_eq!(h.quantile(0.99), Some(3.0));
    h.reset();
    assert_eq!(h.quantile(0.5), None);
  }

  #[test]
  fn buckets_are_monotonic() {
    let mut last = 0;
    for v in 0..1_000_000u64 {
      let b = bucket_of(v);
      assert!(b >= last);
      last = b;
    }
  }
}
