//! The fast sampler thread: memory on every tick, the driver-cached counters when their
//! interval is due, watches evaluated on every sample.
//!
//! Nothing on this loop allocates or logs: rows go into a thread-local staging ring that is
//! appended to the shared ring under its lock once a millisecond (sooner if a tick might not fit), so
//! `drain()` on the JS thread and the loop rarely touch the same lock.

use crate::clock::{monotonic_ns, set_timer_slack_ns, sleep_until_ns, thread_cpu_ns};
use crate::nvml::{read_cached, read_memory, Support, CACHED_COLS};
use crate::ring::Ring;
use crate::shared::{Shared, FAST_COLS};
use crate::types::{GpuEvent, GpuEventKind};
use crate::watch::WatchState;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::Device;
use std::sync::atomic::Ordering::*;

const STAGE_ROWS: usize = 512;
const FLUSH_NS: i64 = 1_000_000;
/// How many missed ticks are made up for before the schedule is reset.
const CATCH_UP_TICKS: i64 = 10;
/// Sleeps longer than this are made interruptible.
const LONG_SLEEP_NS: i64 = 2_000_000;

struct Slot<'a> {
  slot: usize,
  index: u32,
  dev: Option<Device<'a>>,
  support: Support,
  memory_v1: bool,
  reported_errors: u32,
}

pub fn run(sh: &Shared) {
  let nvml = &*sh.nvml;
  let mut slots: Vec<Slot> = sh
    .cfg
    .devices
    .iter()
    .enumerate()
    .map(|(slot, &index)| Slot {
      slot,
      index,
      dev: open(sh, slot, index),
      support: Support::default(),
      memory_v1: false,
      reported_errors: 0,
    })
    .collect();
  let interval = sh.cfg.interval_ns;
  if interval > 0 {
    set_timer_slack_ns((interval / 20).min(50_000) as u64);
  }
  let mut stage: Ring<FAST_COLS> = Ring::new(STAGE_ROWS.max(2 * slots.len()));
  let mut stage_cached: Ring<CACHED_COLS> = Ring::new(slots.len().max(1));
  let mut watches: Vec<WatchState> = Vec::new();
  let mut generation = u64::MAX;
  let cpu0 = thread_cpu_ns();
  let start = monotonic_ns();
  // The run counts from here, not from start(): opening the devices (milliseconds on a real driver)
  // is not sampling, and a rate over it reads as missed ticks.
  sh.stats.run_start_ns.store(start as u64, Relaxed);
  let mut next = start;
  let mut next_cached = start;
  let mut last_flush = start;
  let mut ticks: u64 = 0;

  while !sh.stopping() {
    let g = sh.watch_generation.load(Acquire);
    if g != generation {
      generation = g;
      rebuild_watches(sh, &mut watches);
    }

    // Flush first if this tick's rows might not fit: the stage must never overwrite.
    if stage.len() + slots.len() > stage.capacity() {
      flush(sh, &mut stage, &mut slots);
    }
    let mut live = 0;
    let mut t_now = 0;
    for s in slots.iter_mut() {
      let Some(dev) = s.dev.as_ref() else { continue };
      if s.support.lost || sh.lost[s.slot].load(Relaxed) {
        continue;
      }
      live += 1;
      let t0 = monotonic_ns();
      let m = read_memory(nvml, dev, &mut s.memory_v1, &mut s.support);
      t_now = monotonic_ns();
      sh.stats.latency.record((t_now - t0) as u64);
      let t_mid = t0 + (t_now - t0) / 2;
      let t_rel = sh.rel_ns(t_mid);
      match m {
        Some(m) => {
          let reserved = m.reserved.map_or(f64::NAN, |r| r as f64);
          stage.push(t_rel, s.index, &[m.used as f64, m.free as f64, reserved]);
          let used = (m.total - m.free) as f64;
          for w in watches.iter_mut().filter(|w| w.device == s.index) {
            w.evaluate(t_mid, t_rel, used, m.total as f64);
          }
        }
        None if s.support.lost => sh.mark_lost(s.slot, t_mid, "nvmlDeviceGetMemoryInfo"),
        None => {}
      }
    }
    // The last read's end time doubles as "now" for the rest of the tick.
    let t_prev = if live > 0 { t_now } else { monotonic_ns() };

    if t_prev >= next_cached {
      // Read into the local stage first: NVML calls are never made while holding a lock
      // that drain() on the JS thread also takes.
      for s in slots.iter_mut() {
        let Some(dev) = s.dev.as_ref() else { continue };
        if s.support.lost || sh.lost[s.slot].load(Relaxed) {
          continue;
        }
        let t0 = monotonic_ns();
        let vals: [f64; CACHED_COLS] = read_cached(nvml, dev, &mut s.support);
        if s.support.lost {
          sh.mark_lost(s.slot, t0, "a cached-counter read");
        } else {
          stage_cached.push(sh.rel_ns(t0), s.index, &vals);
        }
      }
      sh.cached.lock().unwrap().append(&mut stage_cached);
      next_cached += sh.cfg.cached_interval_ns;
      if next_cached <= t_prev {
        next_cached = t_prev + sh.cfg.cached_interval_ns;
      }
    }

    if t_prev - last_flush >= FLUSH_NS {
      flush(sh, &mut stage, &mut slots);
      last_flush = t_prev;
      sh.stats.cpu_ns.store((thread_cpu_ns() - cpu0) as u64, Relaxed);
    }
    ticks += 1;
    sh.stats.ticks.store(ticks, Relaxed);

    if live == 0 {
      // Nothing left to read (every device lost): idle instead of spinning.
      sh.sleep_interruptible(interval.max(10_000_000));
      next = monotonic_ns();
    } else if interval > 0 {
      next += interval;
      let now = monotonic_ns();
      if now > next + CATCH_UP_TICKS * interval {
        // Far behind (the process was stopped, the host stalled): resume from now instead of
        // bursting through the backlog.
        sh.stats.overruns.fetch_add(1, Relaxed);
        next = now;
      } else if now > next {
        // A late wake-up: run the missed tick at once (fixed-rate scheduling) so the achieved
        // rate stays the requested one; counted so late ticks are visible.
        sh.stats.overruns.fetch_add(1, Relaxed);
      } else {
        if next - now > LONG_SLEEP_NS {
          // Long intervals sleep on the condvar that stop() signals, so stop() never waits
          // out a whole interval; the precise clock sleep only covers the last millisecond.
          sh.sleep_interruptible(next - now - 1_000_000);
          if sh.stopping() {
            break;
          }
        }
        sleep_until_ns(next);
      }
    }
  }
  flush(sh, &mut stage, &mut slots);
  sh.stats.cpu_ns.store((thread_cpu_ns() - cpu0) as u64, Relaxed);
}

/// Opens a device for this thread. A device lost since construction is reported as lost; any
/// other failure as an `eventError`, and the device is left out.
fn open<'a>(sh: &'a Shared, slot: usize, index: u32) -> Option<Device<'a>> {
  match sh.nvml.device_by_index(index) {
    Ok(d) => Some(d),
    Err(NvmlError::GpuLost) => {
      sh.mark_lost(slot, monotonic_ns(), "nvmlDeviceGetHandleByIndex");
      None
    }
    Err(e) => {
      sh.emit(GpuEvent {
        kind: GpuEventKind::EventError,
        device: index,
        timestamp_ns: sh.rel_ns(monotonic_ns()),
        xid: None,
        message: format!("GPU {index} could not be opened by the sampler thread ({e}); it is not sampled"),
      });
      None
    }
  }
}

fn flush(sh: &Shared, stage: &mut Ring<FAST_COLS>, slots: &mut [Slot]) {
  if stage.len() > 0 {
    sh.fast.lock().unwrap().append(stage);
  }
  for s in slots.iter_mut() {
    let e = s.support.transient_errors;
    if e != s.reported_errors {
      sh.stats
        .read_errors
        .fetch_add((e - s.reported_errors) as u64, Relaxed);
      s.reported_errors = e;
    }
  }
}

fn rebuild_watches(sh: &Shared, watches: &mut Vec<WatchState>) {
  let specs = sh.watches.lock().unwrap();
  let mut next: Vec<WatchState> = specs.iter().map(WatchState::new).collect();
  for w in next.iter_mut() {
    if let Some(old) = watches.iter().find(|o| o.id == w.id) {
      w.inherit(old);
    }
  }
  *watches = next;
}
