//! Threshold watches evaluated by the sampler thread on every tick.
//!
//! Edge-triggered with hysteresis: a watch fires when its condition becomes true and re-arms
//! only once the reading is clearly back below (1 % of the fraction, 10 % of the growth rate),
//! so a device sitting at a threshold, or a noisy rate near it, does not flood the JS thread.

use crate::shared::{AlertFn, WatchSpec};
use crate::types::{WatchAlert, WatchReason};
use napi::threadsafe_function::ThreadsafeFunctionCallMode;
use std::sync::Arc;

/// Growth is measured against a point about one window old. Keeping one point per 1/16 of
/// the window bounds memory and work at any tick rate (10 kHz or as fast as possible).
const HISTORY: usize = 17;

pub struct WatchState {
  pub id: u32,
  pub device: u32,
  used_fraction: Option<f64>,
  growth: Option<f64>,
  window_ns: i64,
  step_ns: i64,
  armed: bool,
  hist_t: [i64; HISTORY],
  hist_v: [f64; HISTORY],
  hist_len: usize,
  hist_head: usize,
  callback: Arc<AlertFn>,
}

impl WatchState {
  pub fn new(spec: &WatchSpec) -> Self {
    Self {
      id: spec.id,
      device: spec.device,
      used_fraction: spec.used_fraction,
      growth: spec.growth_bytes_per_sec,
      window_ns: spec.growth_window_ns,
      step_ns: (spec.growth_window_ns / (HISTORY as i64 - 1)).max(1),
      armed: true,
      hist_t: [0; HISTORY],
      hist_v: [0.0; HISTORY],
      hist_len: 0,
      hist_head: 0,
      callback: spec.callback.clone(),
    }
  }

  /// Carries the armed state and history across a rebuild of the watch list.
  pub fn inherit(&mut self, old: &WatchState) {
    self.armed = old.armed;
    self.hist_t = old.hist_t;
    self.hist_v = old.hist_v;
    self.hist_len = old.hist_len;
    self.hist_head = old.hist_head;
  }

  fn growth_rate(&mut self, t: i64, used: f64) -> Option<f64> {
    if self.hist_len > 0 {
      let newest = (self.hist_head + HISTORY - 1) % HISTORY;
      if t - self.hist_t[newest] < self.step_ns {
        return self.rate_from_oldest(t, used);
      }
    }
    self.hist_t[self.hist_head] = t;
    self.hist_v[self.hist_head] = used;
    self.hist_head = (self.hist_head + 1) % HISTORY;
    self.hist_len = (self.hist_len + 1).min(HISTORY);
    self.rate_from_oldest(t, used)
  }

  fn rate_from_oldest(&self, t: i64, used: f64) -> Option<f64> {
    let oldest = (self.hist_head + HISTORY - self.hist_len) % HISTORY;
    let dt = t - self.hist_t[oldest];
    // Until about a window of history exists the estimate would rest on a few ticks.
    if dt < self.window_ns * 3 / 4 {
      return None;
    }
    Some((used - self.hist_v[oldest]) * 1e9 / dt as f64)
  }

  /// `used` counts everything not free (reserved included), since free reaching zero is what
  /// makes an allocation fail.
  #[inline]
  pub fn evaluate(&mut self, t: i64, t_rel: f64, used: f64, total: f64) {
    let fraction = used / total;
    let growth = if self.growth.is_some() {
      self.growth_rate(t, used)
    } else {
      None
    };
    let reason = if self.used_fraction.is_some_and(|f| fraction >= f) {
      Some(WatchReason::MemoryUsedFraction)
    } else if matches!((self.growth, growth), (Some(g), Some(r)) if r >= g) {
      Some(WatchReason::GrowthBytesPerSec)
    } else {
      None
    };
    let clear = self.used_fraction.is_none_or(|f| fraction < f * 0.99)
      && match (self.growth, growth) {
        (Some(g), Some(r)) => r < g * 0.9,
        _ => true,
      };
    match reason {
      None if clear => self.armed = true,
      None => {}
      Some(reason) if self.armed => {
        self.armed = false;
        let alert = WatchAlert {
          watch_id: self.id,
          device: self.device,
          reason,
          timestamp_ns: t_rel,
          memory_used_bytes: used,
          memory_total_bytes: total,
          used_fraction: fraction,
          growth_bytes_per_sec: growth,
        };
        // NonBlocking: the sampler never waits on JS. A full queue drops this alert; the
        // next crossing fires again.
        self.callback.call(alert, ThreadsafeFunctionCallMode::NonBlocking);
      }
      Some(_) => {}
    }
  }
}
