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

/// Where alerts go: the JS callback in the addon, a no-op in the unit tests (which read the
/// reason `evaluate` returns and must not link the Node-API functions).
pub trait AlertSink {
  fn send(&self, alert: WatchAlert);
}

impl AlertSink for Arc<AlertFn> {
  fn send(&self, alert: WatchAlert) {
    // NonBlocking: the sampler never waits on JS. A full queue drops this alert; the next
    // crossing fires again.
    self.call(alert, ThreadsafeFunctionCallMode::NonBlocking);
  }
}

impl AlertSink for () {
  fn send(&self, _: WatchAlert) {}
}

pub struct WatchState<S: AlertSink = Arc<AlertFn>> {
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
  sink: S,
}

impl WatchState {
  pub fn new(spec: &WatchSpec) -> Self {
    WatchState::with_sink(
      spec.id,
      spec.device,
      spec.used_fraction,
      spec.growth_bytes_per_sec,
      spec.growth_window_ns,
      spec.callback.clone(),
    )
  }
}

impl<S: AlertSink> WatchState<S> {
  fn with_sink(
    id: u32,
    device: u32,
    used_fraction: Option<f64>,
    growth: Option<f64>,
    window_ns: i64,
    sink: S,
  ) -> Self {
    Self {
      id,
      device,
      used_fraction,
      growth,
      window_ns,
      step_ns: (window_ns / (HISTORY as i64 - 1)).max(1),
      armed: true,
      hist_t: [0; HISTORY],
      hist_v: [0.0; HISTORY],
      hist_len: 0,
      hist_head: 0,
      sink,
    }
  }

  /// Carries the armed state and history across a rebuild of the watch list.
  pub fn inherit(&mut self, old: &WatchState<S>) {
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
  /// Returns the reason when this tick fires the watch (and calls the JS callback).
  #[inline]
  pub fn evaluate(&mut self, t: i64, t_rel: f64, used: f64, total: f64) -> Option<WatchReason> {
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
      None if clear => {
        self.armed = true;
        None
      }
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
        self.sink.send(alert);
        Some(reason)
      }
      _ => None,
    }
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  const MS: i64 = 1_000_000;
  const TOTAL: f64 = 80e9;

  fn detached(id: u32, device: u32, f: Option<f64>, g: Option<f64>, window_ns: i64) -> WatchState<()> {
    WatchState::with_sink(id, device, f, g, window_ns, ())
  }

  fn tick(w: &mut WatchState<()>, t_ms: f64, used: f64) -> Option<WatchReason> {
    let t = (t_ms * MS as f64) as i64;
    w.evaluate(t, t as f64, used, TOTAL)
  }

  #[test]
  fn a_fraction_watch_fires_once_per_crossing_and_rearms_below_the_hysteresis() {
    let mut w = detached(1, 0, Some(0.9), None, 100 * MS);
    assert_eq!(tick(&mut w, 0.0, 0.5 * TOTAL), None);
    assert_eq!(
      tick(&mut w, 1.0, 0.9 * TOTAL),
      Some(WatchReason::MemoryUsedFraction)
    );
    assert_eq!(
      tick(&mut w, 2.0, 0.95 * TOTAL),
      None,
      "still above: no second alert"
    );
    assert_eq!(tick(&mut w, 3.0, 0.895 * TOTAL), None, "within 1 %: not re-armed");
    assert_eq!(tick(&mut w, 4.0, 0.9 * TOTAL), None);
    assert_eq!(tick(&mut w, 5.0, 0.85 * TOTAL), None, "clearly below: re-armed");
    assert_eq!(
      tick(&mut w, 6.0, 0.91 * TOTAL),
      Some(WatchReason::MemoryUsedFraction)
    );
  }

  #[test]
  fn a_growth_watch_waits_for_a_window_of_history_then_measures_the_slope() {
    // 1 GB/s ramp sampled at 1 kHz; threshold 0.5 GB/s over 100 ms.
    let mut w = detached(1, 0, None, Some(0.5e9), 100 * MS);
    let mut fired = None;
    for i in 0..200 {
      let t = i as f64;
      if let Some(r) = tick(&mut w, t, 1e9 + 1e9 * t / 1000.0) {
        fired = Some((t, r));
        break;
      }
    }
    let (t, r) = fired.expect("the watch fires");
    assert_eq!(r, WatchReason::GrowthBytesPerSec);
    assert!(
      (75.0..=110.0).contains(&t),
      "fired at {t} ms, once ~3/4 of the window was seen"
    );
    let rate = w
      .rate_from_oldest((t * MS as f64) as i64, 1e9 + 1e9 * t / 1000.0)
      .unwrap();
    assert!((rate / 1e9 - 1.0).abs() < 0.01, "rate {rate}");
  }

  #[test]
  fn a_flat_or_slow_series_never_fires_a_growth_watch() {
    let mut w = detached(1, 0, None, Some(2e9), 50 * MS);
    for i in 0..1000 {
      let t = i as f64 * 0.1;
      assert_eq!(tick(&mut w, t, 10e9 + 1e9 * t / 1000.0), None);
    }
  }

  #[test]
  fn a_step_allocation_fires_the_growth_watch_on_the_tick_that_sees_it() {
    let mut w = detached(1, 0, None, Some(10e9), 20 * MS);
    for i in 0..300 {
      assert_eq!(tick(&mut w, i as f64 * 0.1, 5e9), None);
    }
    // 4 GiB appears between two 100 µs ticks.
    assert_eq!(
      tick(&mut w, 30.0, 5e9 + 4.0 * (1u64 << 30) as f64),
      Some(WatchReason::GrowthBytesPerSec)
    );
  }
}
