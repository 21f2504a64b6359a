//! Baselines for `bench/gpu-sampler`: the cost floor of a timed loop that reads no counter,
//! measured the same way as the sampler so their ratio isolates what NVML sampling adds.

use crate::clock::{monotonic_ns, set_timer_slack_ns, sleep_until_ns, thread_cpu_ns};
use napi_derive::napi;

#[napi(object)]
pub struct IdleLoopResult {
  pub ticks: f64,
  pub wall_ns: f64,
  pub cpu_ns: f64,
}

/// Runs the sampler's sleep/wake schedule with no NVML call on a fresh thread for `durationMs`
/// and reports that thread's CPU time. Blocks the caller; for benchmarks only.
#[napi]
pub fn measure_idle_loop(interval_us: u32, duration_ms: u32) -> IdleLoopResult {
  let interval = interval_us as i64 * 1_000;
  let duration = duration_ms as i64 * 1_000_000;
  std::thread::spawn(move || {
    if interval > 0 {
      set_timer_slack_ns((interval / 20).min(50_000) as u64);
    }
    let cpu0 = thread_cpu_ns();
    let start = monotonic_ns();
    let mut next = start;
    let mut ticks = 0u64;
    loop {
      let now = monotonic_ns();
      if now - start >= duration {
        break;
      }
      std::hint::black_box(now);
      ticks += 1;
      if interval > 0 {
        next += interval;
        if next > now {
          sleep_until_ns(next);
        } else {
          next = now;
        }
      }
    }
    IdleLoopResult {
      ticks: ticks as f64,
      wall_ns: (monotonic_ns() - start) as f64,
      cpu_ns: (thread_cpu_ns() - cpu0) as f64,
    }
  })
  .join()
  .unwrap_or(IdleLoopResult {
    ticks: 0.0,
    wall_ns: 0.0,
    cpu_ns: 0.0,
  })
}
