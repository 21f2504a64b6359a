//! Objects that cross into JS. Field docs become the generated `binding.d.ts`.

use napi::bindgen_prelude::{Float64Array, Uint32Array};
use napi_derive::napi;

#[napi(object)]
pub struct SamplerOptions {
  /// Microseconds between fast ticks (memory read on every device); 0 = as fast as possible.
  pub interval_us: u32,
  /// NVML device indices to sample; all devices when absent.
  pub devices: Option<Vec<u32>>,
  /// Path of libnvidia-ml to load instead of `libnvidia-ml.so.1` (a fake one in tests).
  pub library_path: Option<String>,
  /// Rows kept in each ring before the oldest are overwritten (counted as dropped). Default 65536.
  pub ring_capacity: Option<u32>,
  /// Milliseconds between reads of the driver-cached counters. Default 50.
  pub cached_interval_ms: Option<u32>,
  /// Milliseconds between reads of the slow counters (PCIe, ECC, pages, processes). Default 1000.
  pub slow_interval_ms: Option<u32>,
  /// Wait for Xid / ECC events on a thread of their own. Default true.
  pub events: Option<bool>,
}

#[napi(object)]
pub struct DeviceInfo {
  pub index: u32,
  pub uuid: Option<String>,
  pub name: Option<String>,
  pub memory_total_bytes: Option<f64>,
  pub driver_version: Option<String>,
  /// e.g. "13.0", from nvmlSystemGetCudaDriverVersion_v2.
  pub cuda_driver_version: Option<String>,
  pub pci_bus_id: Option<String>,
  /// e.g. "9.0" for Hopper.
  pub compute_capability: Option<String>,
  pub mig_enabled: Option<bool>,
  pub ecc_enabled: Option<bool>,
  pub power_limit_milliwatts: Option<f64>,
}

/// Fast rows: one per device per tick. Values are NaN where the reading failed.
#[napi(object)]
pub struct FastBatch {
  /// Nanoseconds since the sampler's `epochNs` (CLOCK_MONOTONIC), midpoint of the NVML call.
  pub timestamp_ns: Float64Array,
  pub device: Uint32Array,
  pub memory_used_bytes: Float64Array,
  pub memory_free_bytes: Float64Array,
  pub memory_reserved_bytes: Float64Array,
}

/// Driver-cached counters, one row per device per cached interval. NaN = not supported.
#[napi(object)]
pub struct CachedBatch {
  pub timestamp_ns: Float64Array,
  pub device: Uint32Array,
  pub gpu_utilization_percent: Float64Array,
  pub memory_utilization_percent: Float64Array,
  pub temperature_celsius: Float64Array,
  pub power_milliwatts: Float64Array,
  pub sm_clock_mhz: Float64Array,
  pub memory_clock_mhz: Float64Array,
  /// nvmlClocksEventReasons bitmask (GPU_IDLE 0x1, SW_POWER_CAP 0x4, HW_SLOWDOWN 0x8, SW_THERMAL 0x20, HW_THERMAL 0x40, HW_POWER_BRAKE 0x80).
  pub clock_event_reasons: Float64Array,
  /// P-state 0 (max) to 15; 32 = unknown.
  pub performance_state: Float64Array,
}

#[napi(object)]
#[derive(Clone)]
pub struct ProcessMemory {
  pub pid: u32,
  pub used_memory_bytes: Option<f64>,
}

#[napi(object)]
#[derive(Clone)]
pub struct SlowSample {
  pub device: u32,
  pub timestamp_ns: f64,
  pub pcie_tx_bytes_per_sec: Option<f64>,
  pub pcie_rx_bytes_per_sec: Option<f64>,
  pub ecc_corrected_volatile: Option<f64>,
  pub ecc_uncorrected_volatile: Option<f64>,
  pub remapped_rows_correctable: Option<u32>,
  pub remapped_rows_uncorrectable: Option<u32>,
  pub remapped_rows_pending: Option<bool>,
  pub remapped_rows_failure: Option<bool>,
  pub retired_pages_single_bit: Option<u32>,
  pub retired_pages_double_bit: Option<u32>,
  pub energy_millijoules: Option<f64>,
  /// null when the device cannot list processes.
  pub processes: Option<Vec<ProcessMemory>>,
}

#[napi(string_enum = "camelCase")]
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum GpuEventKind {
  Xid,
  EccSingleBit,
  EccDoubleBit,
  GpuLost,
  /// The event thread could not wait for events (message says why); sampling goes on.
  EventError,
}

#[napi(object)]
#[derive(Clone)]
pub struct GpuEvent {
  pub kind: GpuEventKind,
  pub device: u32,
  pub timestamp_ns: f64,
  /// The Xid code for `xid` events.
  pub xid: Option<u32>,
  pub message: String,
}

#[napi(object)]
pub struct Drained {
  pub fast: FastBatch,
  pub cached: CachedBatch,
  pub slow: Vec<SlowSample>,
  /// Events not already delivered to an `onEvent` listener.
  pub events: Vec<GpuEvent>,
}

#[napi(object)]
pub struct WatchOptions {
  pub device: u32,
  /// Fire when (total - free) / total reaches this fraction (0..1].
  pub memory_used_fraction: Option<f64>,
  /// Fire when used memory grows at least this fast, measured over `growthWindowMs`.
  pub growth_bytes_per_sec: Option<f64>,
  /// Window of the growth estimate. Default 100 ms.
  pub growth_window_ms: Option<u32>,
}

#[napi(string_enum = "camelCase")]
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum WatchReason {
  MemoryUsedFraction,
  GrowthBytesPerSec,
}

#[napi(object)]
pub struct WatchAlert {
  pub watch_id: u32,
  pub device: u32,
  pub reason: WatchReason,
  /// Time of the tick that crossed, ns since `epochNs`.
  pub timestamp_ns: f64,
  pub memory_used_bytes: f64,
  pub memory_total_bytes: f64,
  pub used_fraction: f64,
  /// null until the growth window has filled.
  pub growth_bytes_per_sec: Option<f64>,
}

#[napi(object)]
pub struct SamplerStats {
  pub running: bool,
  /// Fast ticks since the last start.
  pub ticks: f64,
  /// Fast rows ever taken (ticks x devices).
  pub samples_taken: f64,
  /// Fast rows overwritten before a drain.
  pub samples_dropped: f64,
  pub cached_samples_taken: f64,
  pub cached_samples_dropped: f64,
  pub slow_samples_taken: f64,
  pub events_delivered: f64,
  /// Ticks that started more than one interval late.
  pub loop_overruns: f64,
  /// NVML reads that failed for a reason other than "not supported" or "GPU lost".
  pub read_errors: f64,
  pub requested_hz: Option<f64>,
  /// Ticks per second over the current (or last) run.
  pub achieved_hz: f64,
  /// Wall time of the current (or last) run.
  pub run_seconds: f64,
  /// CPU time of the sampler thread over the current (or last) run.
  pub sampler_cpu_seconds: f64,
  pub nvml_latency_p50_ns: Option<f64>,
  pub nvml_latency_p99_ns: Option<f64>,
  pub lost_devices: Vec<u32>,
}

#[napi(object)]
pub struct CeilingResult {
  pub calls: f64,
  pub elapsed_ns: f64,
  pub calls_per_sec: f64,
}

#[napi(object)]
pub struct SlowDrained {
  pub slow: Vec<SlowSample>,
  pub events: Vec<GpuEvent>,
}
