//! The `GpuSampler` class seen by JS: option validation, drains, watches and stats.

use crate::clock::monotonic_ns;
use crate::control::Control;
use crate::error::{err, Code, Result};
use crate::nvml::{self, bit, Support, CACHED_COLS};
use crate::shared::{AlertFn, Config, EventFn, Shared, WatchSpec, FAST_COLS};
use crate::types::*;
use napi::bindgen_prelude::{
  BigInt, Float64Array, Float64ArraySlice, ObjectFinalize, Uint32Array, Uint32ArraySlice,
};
use napi::{CleanupEnvHook, Env};
use napi_derive::napi;
use std::sync::atomic::Ordering::*;
use std::sync::{Arc, Mutex, Weak};

/// Samples NVML counters on background threads; see `SamplerOptions`.
#[napi(custom_finalize)]
pub struct GpuSampler {
  control: Option<Arc<Control>>,
  hook: Option<CleanupEnvHook<Weak<Control>>>,
  infos: Vec<DeviceInfo>,
  next_watch_id: u32,
}

fn validate(o: &SamplerOptions) -> Result<()> {
  let bad = |m: &str| Err(err(Code::InvalidArg, m));
  if o.interval_us > 10_000_000 {
    return bad("options.intervalUs must be between 0 (as fast as possible) and 10000000");
  }
  if let Some(c) = o.ring_capacity {
    if !(16..=1 << 24).contains(&c) {
      return bad("options.ringCapacity must be between 16 and 16777216");
    }
  }
  if o.cached_interval_ms == Some(0) {
    return bad("options.cachedIntervalMs must be a positive integer");
  }
  if o.slow_interval_ms == Some(0) {
    return bad("options.slowIntervalMs must be a positive integer");
  }
  if matches!(&o.library_path, Some(p) if p.is_empty()) {
    return bad("options.libraryPath must be a non-empty string");
  }
  Ok(())
}

#[napi]
impl GpuSampler {
  #[napi(constructor)]
  pub fn new(env: Env, options: SamplerOptions) -> Result<Self> {
    validate(&options)?;
    let nvml = Arc::new(nvml::load(options.library_path.as_deref())?);
    let count = nvml::device_count(&nvml)?;
    let devices: Vec<u32> = match &options.devices {
      Some(list) => {
        for &i in list {
          if i >= count {
            return Err(err(
              Code::DeviceNotFound,
              format!("options.devices: GPU {i} does not exist (NVML reports {count})"),
            ));
          }
        }
        let mut seen = std::collections::HashSet::new();
        list.iter().copied().filter(|i| seen.insert(*i)).collect()
      }
      None => (0..count).collect(),
    };
    let mut infos = Vec::with_capacity(devices.len());
    for &i in &devices {
      let dev = nvml::open_device(&nvml, i)?;
      infos.push(nvml::device_info(&nvml, &dev, i));
    }
    let cap = options.ring_capacity.unwrap_or(65_536) as usize;
    let cfg = Config {
      interval_ns: options.interval_us as i64 * 1_000,
      cached_interval_ns: options.cached_interval_ms.unwrap_or(50) as i64 * 1_000_000,
      slow_interval_ns: options.slow_interval_ms.unwrap_or(1_000) as i64 * 1_000_000,
      ring_capacity: cap,
      devices,
      events: options.events.unwrap_or(true),
    };
    let shared = Arc::new(Shared::new(cfg, nvml, monotonic_ns()));
    let control = Arc::new(Control {
      shared,
      threads: Mutex::new(Vec::new()),
    });
    let hook = env
      // Weak: napi keeps hook data until the environment ends, even after the hook is removed,
      // and a strong reference there would keep NVML initialised after close().
      .add_env_cleanup_hook(Arc::downgrade(&control), |c| {
        if let Some(c) = c.upgrade() {
          c.stop()
        }
      })
      .map_err(|e| err(Code::Nvml, format!("could not register the cleanup hook: {e}")))?;
    Ok(Self {
      control: Some(control),
      hook: Some(hook),
      infos,
      next_watch_id: 1,
    })
  }

  fn control(&self) -> Result<&Arc<Control>> {
    self
      .control
      .as_ref()
      .ok_or_else(|| err(Code::Closed, "this GpuSampler was closed"))
  }

  /// CLOCK_MONOTONIC nanoseconds that every `timestampNs` in this sampler counts from; the
  /// same clock as `process.hrtime.bigint()`.
  #[napi(getter)]
  pub fn epoch_ns(&self) -> Result<BigInt> {
    Ok(BigInt::from(self.control()?.shared.epoch_ns))
  }

  #[napi(getter)]
  pub fn running(&self) -> bool {
    self.control.as_ref().is_some_and(|c| c.running())
  }

  /// Starts the threads; a no-op when already running.
  #[napi]
  pub fn start(&self) -> Result<()> {
    self.control()?.start()
  }

  /// Stops and joins the threads; samples taken so far stay drainable.
  #[napi]
  pub fn stop(&self) -> Result<()> {
    self.control()?.stop();
    Ok(())
  }

  /// Stops the threads and releases NVML. Idempotent; every later call but `close()` throws.
  #[napi]
  pub fn close(&mut self, env: Env) -> Result<()> {
    if let Some(c) = self.control.take() {
      c.stop();
      *c.shared.listener.lock().unwrap() = None;
      c.shared.watches.lock().unwrap().clear();
    }
    if let Some(h) = self.hook.take() {
      let _ = env.remove_env_cleanup_hook(h);
    }
    Ok(())
  }

  /// Static facts about each sampled device, read once at construction.
  #[napi]
  pub fn devices(&self) -> Vec<DeviceInfo> {
    self.infos.iter().map(clone_info).collect()
  }

  /// Every row since the last drain, as one typed array per field.
  #[napi]
  pub fn drain(&self) -> Result<Drained> {
    let sh = &self.control()?.shared;
    let f = sh.fast.lock().unwrap().drain();
    let c = sh.cached.lock().unwrap().drain();
    let SlowDrained { slow, events } = self.drain_slow()?;
    let [used, free, reserved] = f.cols;
    let [gu, mu, temp, power, sm, mem, reasons, pstate] = c.cols;
    Ok(Drained {
      fast: FastBatch {
        timestamp_ns: Float64Array::new(f.t),
        device: Uint32Array::new(f.dev),
        memory_used_bytes: Float64Array::new(used),
        memory_free_bytes: Float64Array::new(free),
        memory_reserved_bytes: Float64Array::new(reserved),
      },
      cached: CachedBatch {
        timestamp_ns: Float64Array::new(c.t),
        device: Uint32Array::new(c.dev),
        gpu_utilization_percent: Float64Array::new(gu),
        memory_utilization_percent: Float64Array::new(mu),
        temperature_celsius: Float64Array::new(temp),
        power_milliwatts: Float64Array::new(power),
        sm_clock_mhz: Float64Array::new(sm),
        memory_clock_mhz: Float64Array::new(mem),
        clock_event_reasons: Float64Array::new(reasons),
        performance_state: Float64Array::new(pstate),
      },
      slow,
      events,
    })
  }

  /// Slow rows and undelivered events only (the part of `drain()` that `drainInto` leaves).
  #[napi]
  pub fn drain_slow(&self) -> Result<SlowDrained> {
    let sh = &self.control()?.shared;
    let slow: Vec<SlowSample> = sh.slow.lock().unwrap().drain(..).collect();
    let events: Vec<GpuEvent> = sh.events.lock().unwrap().drain(..).collect();
    Ok(SlowDrained { slow, events })
  }

  /// The allocation-free drain: moves the oldest fast and cached rows into caller-owned
  /// columns (`fastValues`: timestamp, used, free, reserved, each `fastDevices.length` long;
  /// `cachedValues`: timestamp then the eight `CachedBatch` fields, each `cachedDevices.length`
  /// long) and writes [fast rows, cached rows, queued slow rows + events] into `counts`.
  #[napi]
  pub fn drain_into(
    &self,
    mut fast_values: Float64ArraySlice,
    mut fast_devices: Uint32ArraySlice,
    mut cached_values: Float64ArraySlice,
    mut cached_devices: Uint32ArraySlice,
    mut counts: Uint32ArraySlice,
  ) -> Result<()> {
    let sh = &self.control()?.shared;
    // SAFETY: this runs synchronously on the JS thread, so no JS code touches these arrays
    // while they are borrowed here.
    let (fv, fd, cv, cd, n) = unsafe {
      (
        fast_values.as_mut(),
        fast_devices.as_mut(),
        cached_values.as_mut(),
        cached_devices.as_mut(),
        counts.as_mut(),
      )
    };
    if fv.len() < fd.len() * (1 + FAST_COLS) || cv.len() < cd.len() * (1 + CACHED_COLS) || n.len() < 3 {
      return Err(err(
        Code::InvalidArg,
        "drainInto: buffers are smaller than their device columns imply",
      ));
    }
    // Views of one ArrayBuffer would alias the mutable slices above.
    let spans = [span(fv), span(fd), span(cv), span(cd), span(n)];
    for (i, a) in spans.iter().enumerate() {
      if spans[i + 1..].iter().any(|b| a.0 < b.1 && b.0 < a.1) {
        return Err(err(
          Code::InvalidArg,
          "drainInto: the five buffers must not overlap",
        ));
      }
    }
    n[0] = sh.fast.lock().unwrap().drain_into(fv, fd) as u32;
    n[1] = sh.cached.lock().unwrap().drain_into(cv, cd) as u32;
    n[2] = (sh.slow.lock().unwrap().len() + sh.events.lock().unwrap().len()) as u32;
    Ok(())
  }

  #[napi]
  pub fn stats(&self) -> Result<SamplerStats> {
    let c = self.control()?;
    let sh = &c.shared;
    let st = &sh.stats;
    let start = st.run_start_ns.load(Relaxed);
    let end = match st.run_end_ns.load(Relaxed) {
      0 if c.running() => monotonic_ns() as u64,
      0 => start,
      e => e,
    };
    let run_s = (end.saturating_sub(start)) as f64 / 1e9;
    let ticks = st.ticks.load(Relaxed) as f64;
    let (fast_taken, fast_dropped) = {
      let r = sh.fast.lock().unwrap();
      (r.pushed as f64, r.dropped as f64)
    };
    let (cached_taken, cached_dropped) = {
      let r = sh.cached.lock().unwrap();
      (r.pushed as f64, r.dropped as f64)
    };
    Ok(SamplerStats {
      running: c.running(),
      ticks,
      samples_taken: fast_taken,
      samples_dropped: fast_dropped,
      cached_samples_taken: cached_taken,
      cached_samples_dropped: cached_dropped,
      slow_samples_taken: st.slow_taken.load(Relaxed) as f64,
      events_delivered: st.events_delivered.load(Relaxed) as f64,
      loop_overruns: st.overruns.load(Relaxed) as f64,
      read_errors: st.read_errors.load(Relaxed) as f64,
      requested_hz: (sh.cfg.interval_ns > 0).then(|| 1e9 / sh.cfg.interval_ns as f64),
      achieved_hz: if run_s > 0.0 { ticks / run_s } else { 0.0 },
      run_seconds: run_s,
      sampler_cpu_seconds: st.cpu_ns.load(Relaxed) as f64 / 1e9,
      nvml_latency_p50_ns: st.latency.quantile(0.5),
      nvml_latency_p99_ns: st.latency.quantile(0.99),
      lost_devices: sh
        .cfg
        .devices
        .iter()
        .zip(&sh.lost)
        .filter(|(_, l)| l.load(Relaxed))
        .map(|(d, _)| *d)
        .collect(),
    })
  }

  /// Calls `callback` from the sampler thread's tick that crosses the condition (edge
  /// triggered). Returns an id for `unwatch`.
  #[napi(ts_args_type = "options: WatchOptions, callback: (alert: WatchAlert) => void")]
  pub fn watch(&mut self, options: WatchOptions, callback: AlertFn) -> Result<u32> {
    let c = self.control()?.clone();
    let sh = &c.shared;
    if !sh.cfg.devices.contains(&options.device) {
      return Err(err(
        Code::InvalidArg,
        format!("watch: GPU {} is not sampled by this GpuSampler", options.device),
      ));
    }
    match (options.memory_used_fraction, options.growth_bytes_per_sec) {
      (None, None) => {
        return Err(err(
          Code::InvalidArg,
          "watch: give memoryUsedFraction and/or growthBytesPerSec",
        ));
      }
      (Some(f), _) if !(f > 0.0 && f <= 1.0) => {
        return Err(err(
          Code::InvalidArg,
          "watch: memoryUsedFraction must be in (0, 1]",
        ));
      }
      (_, Some(g)) if !(g.is_finite() && g > 0.0) => {
        return Err(err(
          Code::InvalidArg,
          "watch: growthBytesPerSec must be a positive number",
        ));
      }
      _ => {}
    }
    let window_ms = options.growth_window_ms.unwrap_or(100);
    if window_ms == 0 {
      return Err(err(
        Code::InvalidArg,
        "watch: growthWindowMs must be a positive integer",
      ));
    }
    let id = self.next_watch_id;
    self.next_watch_id += 1;
    sh.watches.lock().unwrap().push(WatchSpec {
      id,
      device: options.device,
      used_fraction: options.memory_used_fraction,
      growth_bytes_per_sec: options.growth_bytes_per_sec,
      growth_window_ns: window_ms as i64 * 1_000_000,
      callback: Arc::new(callback),
    });
    sh.watch_generation.fetch_add(1, Release);
    Ok(id)
  }

  /// Removes a watch; false when the id is unknown.
  #[napi]
  pub fn unwatch(&self, id: u32) -> Result<bool> {
    let sh = &self.control()?.shared;
    let mut w = sh.watches.lock().unwrap();
    let before = w.len();
    w.retain(|s| s.id != id);
    let removed = w.len() != before;
    drop(w);
    if removed {
      sh.watch_generation.fetch_add(1, Release);
    }
    Ok(removed)
  }

  /// Sets (or with null clears) the listener for Xid, ECC and GPU-lost events. Without a
  /// listener, events wait in `drain().events`.
  #[napi(ts_args_type = "callback: ((event: GpuEvent) => void) | null")]
  pub fn on_event(&self, callback: Option<EventFn>) -> Result<()> {
    *self.control()?.shared.listener.lock().unwrap() = callback.map(Arc::new);
    Ok(())
  }

  /// Calls the memory read alone in a tight loop on this thread for `durationMs`: the NVML
  /// ceiling a sampler can approach. Blocks the JS thread; meant for benchmarks.
  #[napi]
  pub fn measure_memory_read_rate(&self, device: u32, duration_ms: u32) -> Result<CeilingResult> {
    let sh = &self.control()?.shared;
    if !sh.cfg.devices.contains(&device) {
      return Err(err(
        Code::InvalidArg,
        format!("GPU {device} is not sampled by this GpuSampler"),
      ));
    }
    let dev = nvml::open_device(&sh.nvml, device)?;
    let mut s = Support::default();
    let start = monotonic_ns();
    let end = start + duration_ms as i64 * 1_000_000;
    let mut calls = 0u64;
    let mut now = start;
    while now < end {
      // Check the clock every 64 calls so the loop measures NVML, not clock_gettime.
      for _ in 0..64 {
        std::hint::black_box(s.read(bit::MEMORY, || dev.memory_info()));
      }
      calls += 64;
      now = monotonic_ns();
    }
    let elapsed = (now - start) as f64;
    Ok(CeilingResult {
      calls: calls as f64,
      elapsed_ns: elapsed,
      calls_per_sec: calls as f64 * 1e9 / elapsed,
    })
  }
}

impl ObjectFinalize for GpuSampler {
  fn finalize(mut self, env: Env) -> napi::Result<()> {
    if let Some(c) = self.control.take() {
      c.stop();
    }
    if let Some(h) = self.hook.take() {
      let _ = env.remove_env_cleanup_hook(h);
    }
    Ok(())
  }
}

fn span<T>(s: &[T]) -> (usize, usize) {
  let start = s.as_ptr() as usize;
  (start, start + std::mem::size_of_val(s))
}

fn clone_info(d: &DeviceInfo) -> DeviceInfo {
  DeviceInfo {
    index: d.index,
    uuid: d.uuid.clone(),
    name: d.name.clone(),
    memory_total_bytes: d.memory_total_bytes,
    driver_version: d.driver_version.clone(),
    cuda_driver_version: d.cuda_driver_version.clone(),
    pci_bus_id: d.pci_bus_id.clone(),
    compute_capability: d.compute_capability.clone(),
    mig_enabled: d.mig_enabled,
    ecc_enabled: d.ecc_enabled,
    power_limit_milliwatts: d.power_limit_milliwatts,
  }
}
