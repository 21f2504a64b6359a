//! Loading libnvidia-ml at run time and reading counters with "unsupported is null" semantics.

use crate::error::{device_error, err, init_error, Code, Result};
use crate::types::DeviceInfo;
use nvml_wrapper::enum_wrappers::device::{Clock, TemperatureSensor};
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::{Device, Nvml};
use std::ffi::OsStr;

pub const DEFAULT_LIBRARY: &str = "libnvidia-ml.so.1";

/// Loads and initialises NVML. nvml-wrapper resolves every symbol it knows at load time but
/// only fails when a missing one is called, so a partial (or fake) library is fine.
pub fn load(path: Option<&str>) -> Result<Nvml> {
  let p = path.unwrap_or(DEFAULT_LIBRARY);
  Nvml::builder()
    .lib_path(OsStr::new(p))
    .init()
    .map_err(|e| init_error(e, p))
}

pub fn device_count(nvml: &Nvml) -> Result<u32> {
  nvml
    .device_count()
    .map_err(|e| err(Code::Nvml, format!("nvmlDeviceGetCount failed: {e}")))
}

pub fn open_device(nvml: &Nvml, index: u32) -> Result<Device<'_>> {
  nvml
    .device_by_index(index)
    .map_err(|e| device_error(e, index, "nvmlDeviceGetHandleByIndex"))
}

/// What a failed read means for the caller.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Failure {
  /// The device or driver cannot give this counter: stop asking, report null.
  Unsupported,
  /// NVML_ERROR_GPU_IS_LOST.
  Lost,
  /// Anything else: null this time, ask again next time.
  Transient,
}

pub fn classify(e: &NvmlError) -> Failure {
  match e {
    NvmlError::NotSupported
    | NvmlError::NoPermission
    | NvmlError::FailedToLoadSymbol(_)
    | NvmlError::FunctionNotFound
    | NvmlError::InvalidArg => Failure::Unsupported,
    NvmlError::GpuLost => Failure::Lost,
    _ => Failure::Transient,
  }
}

/// Per-device memory of which counters turned out unsupported, one bit per counter, so the
/// hot loops stop paying for calls that can only fail.
#[derive(Default, Clone, Copy)]
pub struct Support {
  unsupported: u32,
  pub lost: bool,
  pub transient_errors: u32,
}

impl Support {
  #[inline]
  pub fn read<T>(&mut self, bit: u32, f: impl FnOnce() -> std::result::Result<T, NvmlError>) -> Option<T> {
    if self.lost || self.unsupported & bit != 0 {
      return None;
    }
    match f() {
      Ok(v) => Some(v),
      Err(e) => {
        match classify(&e) {
          Failure::Unsupported => self.unsupported |= bit,
          Failure::Lost => self.lost = true,
          Failure::Transient => self.transient_errors += 1,
        }
        None
      }
    }
  }
}

pub mod bit {
  pub const MEMORY: u32 = 1 << 0;
  pub const UTILIZATION: u32 = 1 << 1;
  pub const TEMPERATURE: u32 = 1 << 2;
  pub const POWER: u32 = 1 << 3;
  pub const SM_CLOCK: u32 = 1 << 4;
  pub const MEM_CLOCK: u32 = 1 << 5;
  pub const CLOCK_EVENTS: u32 = 1 << 6;
  pub const PSTATE: u32 = 1 << 7;
  pub const PCIE: u32 = 1 << 8;
  pub const ECC: u32 = 1 << 9;
  pub const REMAPPED: u32 = 1 << 10;
  pub const RETIRED: u32 = 1 << 11;
  pub const ENERGY: u32 = 1 << 12;
  pub const PROCESSES: u32 = 1 << 13;
}

/// Cached-tier values in the column order of `CachedBatch`; NaN where unsupported.
pub const CACHED_COLS: usize = 8;

#[inline]
pub fn read_cached(dev: &Device, s: &mut Support) -> [f64; CACHED_COLS] {
  let nan = f64::NAN;
  let util = s.read(bit::UTILIZATION, || dev.utilization_rates());
  [
    util.as_ref().map_or(nan, |u| u.gpu as f64),
    util.as_ref().map_or(nan, |u| u.memory as f64),
    s.read(bit::TEMPERATURE, || dev.temperature(TemperatureSensor::Gpu))
      .map_or(nan, |v| v as f64),
    s.read(bit::POWER, || dev.power_usage()).map_or(nan, |v| v as f64),
    s.read(bit::SM_CLOCK, || dev.clock_info(Clock::SM))
      .map_or(nan, |v| v as f64),
    s.read(bit::MEM_CLOCK, || dev.clock_info(Clock::Memory))
      .map_or(nan, |v| v as f64),
    s.read(bit::CLOCK_EVENTS, || dev.current_throttle_reasons())
      .map_or(nan, |v| v.bits() as f64),
    s.read(bit::PSTATE, || dev.performance_state())
      .map_or(nan, |v| v.as_c() as f64),
  ]
}

fn opt<T>(r: std::result::Result<T, NvmlError>) -> Option<T> {
  r.ok()
}

pub fn device_info(nvml: &Nvml, dev: &Device, index: u32) -> DeviceInfo {
  let cuda = opt(nvml.sys_cuda_driver_version()).map(|v| {
    format!(
      "{}.{}",
      nvml_wrapper::cuda_driver_version_major(v),
      nvml_wrapper::cuda_driver_version_minor(v)
    )
  });
  DeviceInfo {
    index,
    uuid: opt(dev.uuid()),
    name: opt(dev.name()),
    memory_total_bytes: opt(dev.memory_info()).map(|m| m.total as f64),
    driver_version: opt(nvml.sys_driver_version()),
    cuda_driver_version: cuda,
    pci_bus_id: opt(dev.pci_info()).map(|p| p.bus_id),
    compute_capability: opt(dev.cuda_compute_capability()).map(|c| format!("{}.{}", c.major, c.minor)),
    mig_enabled: opt(dev.mig_mode()).map(|m| m.current != 0),
    ecc_enabled: opt(dev.is_ecc_enabled()).map(|e| e.currently_enabled),
    power_limit_milliwatts: opt(dev.enforced_power_limit())
      .or_else(|| opt(dev.power_management_limit()))
      .map(|v| v as f64),
  }
}
