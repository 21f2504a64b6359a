//! Loading libnvidia-ml at run time and reading counters with "unsupported is null" semantics.

use crate::error::{device_error, err, init_error, Code, Result};
use crate::types::DeviceInfo;
use nvml_wrapper::enum_wrappers::device::{Clock, TemperatureSensor};
use nvml_wrapper::error::{nvml_sym, nvml_try, NvmlError};
use nvml_wrapper::{Device, Nvml};
use nvml_wrapper_sys::bindings::nvmlMemory_t;
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
        self.note(bit, &e);
        None
      }
    }
  }

  pub fn note(&mut self, bit: u32, e: &NvmlError) {
    match classify(e) {
      Failure::Unsupported => self.unsupported |= bit,
      Failure::Lost => self.lost = true,
      Failure::Transient => self.transient_errors += 1,
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

/// Framebuffer memory. `reserved` is None where only the v1 call exists (its `used` then
/// includes the reserved part).
pub struct Memory {
  pub total: u64,
  pub free: u64,
  pub used: u64,
  pub reserved: Option<u64>,
}

/// nvmlDeviceGetMemoryInfo_v2 (nvml-wrapper's `memory_info`) needs a driver from the R510 era
/// or later; older ones lack the symbol or reject the struct version (NVML_ERROR_ARGUMENT_
/// VERSION_MISMATCH, 25). `v1` flips to true on the first such failure, then v1 is used.
#[inline]
pub fn read_memory(nvml: &Nvml, dev: &Device, v1: &mut bool, s: &mut Support) -> Option<Memory> {
  if !*v1 {
    if s.lost {
      return None;
    }
    match dev.memory_info() {
      Ok(m) => {
        return Some(Memory {
          total: m.total,
          free: m.free,
          used: m.used,
          reserved: Some(m.reserved),
        })
      }
      Err(e) if classify(&e) == Failure::Unsupported || matches!(e, NvmlError::UnexpectedVariant(25)) => {
        *v1 = true
      }
      Err(e) => {
        s.note(bit::MEMORY, &e);
        return None;
      }
    }
  }
  s.read(bit::MEMORY, || {
    let sym = nvml_sym(nvml.lib().nvmlDeviceGetMemoryInfo.as_ref())?;
    let mut m = nvmlMemory_t {
      total: 0,
      free: 0,
      used: 0,
    };
    // SAFETY: the handle belongs to this NVML instance; `m` outlives the call.
    unsafe { nvml_try(sym(dev.handle(), &mut m))? };
    Ok(Memory {
      total: m.total,
      free: m.free,
      used: m.used,
      reserved: None,
    })
  })
}

/// Clock-event reasons as the raw mask: nvml-wrapper's `current_throttle_reasons` truncates
/// bits it does not know, and newer drivers add reasons.
fn clock_event_reasons(nvml: &Nvml, dev: &Device) -> std::result::Result<u64, NvmlError> {
  let sym = nvml_sym(nvml.lib().nvmlDeviceGetCurrentClocksThrottleReasons.as_ref())?;
  let mut reasons: u64 = 0;
  // SAFETY: as above.
  unsafe { nvml_try(sym(dev.handle(), &mut reasons))? };
  Ok(reasons)
}

/// Cached-tier values in the column order of `CachedBatch`; NaN where unsupported.
pub const CACHED_COLS: usize = 8;

#[inline]
pub fn read_cached(nvml: &Nvml, dev: &Device, s: &mut Support) -> [f64; CACHED_COLS] {
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
    s.read(bit::CLOCK_EVENTS, || clock_event_reasons(nvml, dev))
      .map_or(nan, |v| v as f64),
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
