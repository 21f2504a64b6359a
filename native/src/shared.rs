//! State shared between the JS thread and the sampler, slow and event threads.

use crate::histogram::Histogram;
use crate::nvml::CACHED_COLS;
use crate::ring::Ring;
use crate::types::{GpuEvent, GpuEventKind, SlowSample, WatchAlert};
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi::Status;
use nvml_wrapper::Nvml;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::*};
use std::sync::{Arc, Condvar, Mutex};

/// Weak: a listener must not keep the Node process alive. Bounded queue: a JS thread that is
/// busy makes `NonBlocking` calls fail fast instead of piling up memory; those events are kept
/// for `drain()` instead.
pub type EventFn = ThreadsafeFunction<GpuEvent, (), GpuEvent, Status, false, true, 1024>;
pub type AlertFn = ThreadsafeFunction<WatchAlert, (), WatchAlert, Status, false, true, 256>;

pub const FAST_COLS: usize = 3;
const MAX_QUEUED_SLOW: usize = 4096;
const MAX_QUEUED_EVENTS: usize = 4096;

pub struct Config {
  pub interval_ns: i64,
  pub cached_interval_ns: i64,
  pub slow_interval_ns: i64,
  pub ring_capacity: usize,
  /// NVML indices, in sampling order.
  pub devices: Vec<u32>,
  pub events: bool,
}

pub struct WatchSpec {
  pub id: u32,
  pub device: u32,
  pub used_fraction: Option<f64>,
  pub growth_bytes_per_sec: Option<f64>,
  pub growth_window_ns: i64,
  pub callback: Arc<AlertFn>,
}

#[derive(Default)]
pub struct Stats {
  pub ticks: AtomicU64,
  pub overruns: AtomicU64,
  pub read_errors: AtomicU64,
  pub slow_taken: AtomicU64,
  pub events_delivered: AtomicU64,
  pub run_start_ns: AtomicU64,
  /// 0 while running.
  pub run_end_ns: AtomicU64,
  pub cpu_ns: AtomicU64,
  pub latency: Histogram,
}

pub struct Shared {
  pub cfg: Config,
  pub nvml: Arc<Nvml>,
  pub epoch_ns: i64,
  pub stop: AtomicBool,
  pub fast: Mutex<Ring<FAST_COLS>>,
  pub cached: Mutex<Ring<CACHED_COLS>>,
  pub slow: Mutex<VecDeque<SlowSample>>,
  pub events: Mutex<VecDeque<GpuEvent>>,
  pub listener: Mutex<Option<Arc<EventFn>>>,
  /// Indexed like `cfg.devices`.
  pub lost: Vec<AtomicBool>,
  pub watches: Mutex<Vec<WatchSpec>>,
  pub watch_generation: AtomicU64,
  pub stats: Stats,
  /// Lets `stop()` wake the slow thread out of its interval sleep.
  pub wake: (Mutex<()>, Condvar),
}

impl Shared {
  pub fn new(cfg: Config, nvml: Arc<Nvml>, epoch_ns: i64) -> Self {
    let n = cfg.devices.len();
    let cap = cfg.ring_capacity;
    Self {
      fast: Mutex::new(Ring::new(cap)),
      cached: Mutex::new(Ring::new(cap)),
      slow: Mutex::new(VecDeque::new()),
      events: Mutex::new(VecDeque::new()),
      listener: Mutex::new(None),
      lost: (0..n).map(|_| AtomicBool::new(false)).collect(),
      watches: Mutex::new(Vec::new()),
      watch_generation: AtomicU64::new(0),
      stats: Stats::default(),
      stop: AtomicBool::new(true),
      wake: (Mutex::new(()), Condvar::new()),
      cfg,
      nvml,
      epoch_ns,
    }
  }

  pub fn rel_ns(&self, t: i64) -> f64 {
    (t - self.epoch_ns) as f64
  }

  /// Sends an event to the `onEvent` listener, or queues it for `drain()` when there is
  /// none or its queue is full, so an event is never lost.
  pub fn emit(&self, ev: GpuEvent) {
    let listener = self.listener.lock().unwrap().clone();
    self.stats.events_delivered.fetch_add(1, Relaxed);
    if let Some(l) = listener {
      if l.call(ev.clone(), ThreadsafeFunctionCallMode::NonBlocking) == Status::Ok {
        return;
      }
    }
    let mut q = self.events.lock().unwrap();
    if q.len() == MAX_QUEUED_EVENTS {
      q.pop_front();
    }
    q.push_back(ev);
  }

  /// Marks a device lost once, whichever thread saw it first, and reports it.
  pub fn mark_lost(&self, slot: usize, t: i64, what: &str) {
    if !self.lost[slot].swap(true, AcqRel) {
      let device = self.cfg.devices[slot];
      self.emit(GpuEvent {
        kind: GpuEventKind::GpuLost,
        device,
        timestamp_ns: self.rel_ns(t),
        xid: None,
        message: format!("GPU {device} has fallen off the bus ({what} returned NVML_ERROR_GPU_IS_LOST); the other GPUs are still sampled"),
      });
    }
  }

  pub fn push_slow(&self, s: SlowSample) {
    let mut q = self.slow.lock().unwrap();
    if q.len() == MAX_QUEUED_SLOW {
      q.pop_front();
    }
    q.push_back(s);
    self.stats.slow_taken.fetch_add(1, Relaxed);
  }

  pub fn stopping(&self) -> bool {
    self.stop.load(Relaxed)
  }

  /// Sleeps up to `ns`, returning early when `stop()` is called.
  pub fn sleep_interruptible(&self, ns: i64) {
    let (m, cv) = &self.wake;
    let guard = m.lock().unwrap();
    if self.stopping() {
      return;
    }
    let _ = cv.wait_timeout(guard, std::time::Duration::from_nanos(ns.max(0) as u64));
  }
}
