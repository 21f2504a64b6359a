#![deny(clippy::all)]
//! vllm-monitor's native core: an NVML sampler for Node.js. This file only declares exports.

mod baseline;
mod clock;
mod control;
mod error;
mod events;
mod gpu_sampler;
mod histogram;
mod nvml;
mod ring;
mod sampler;
mod shared;
mod slow;
mod types;
mod watch;

pub use gpu_sampler::GpuSampler;
use napi_derive::napi;

/// Outcome of trying to load and initialise NVML without sampling anything.
#[napi(object)]
pub struct NvmlProbe {
  pub available: bool,
  /// Stable error code when unavailable, e.g. VLLM_MONITOR_NVML_NOT_FOUND.
  pub code: Option<String>,
  pub message: Option<String>,
  pub device_count: Option<u32>,
  pub driver_version: Option<String>,
}

/// Loads NVML (from `libraryPath`, else libnvidia-ml.so.1), counts devices and shuts down.
/// Never throws: a machine without a GPU gets `available: false` and the reason.
#[napi]
pub fn probe_nvml(library_path: Option<String>) -> NvmlProbe {
  match nvml::load(library_path.as_deref()).and_then(|n| nvml::device_count(&n).map(|c| (c, n))) {
    Ok((count, n)) => NvmlProbe {
      available: true,
      code: None,
      message: None,
      device_count: Some(count),
      driver_version: n.sys_driver_version().ok(),
    },
    Err(e) => NvmlProbe {
      available: false,
      code: Some(e.status.as_ref().to_string()),
      message: Some(e.reason.clone()),
      device_count: None,
      driver_version: None,
    },
  }
}

/// True when NVML loads and initialises (see `probeNvml` for the reason when it does not).
#[napi]
pub fn available(library_path: Option<String>) -> bool {
  probe_nvml(library_path).available
}
