//! Error codes shared with the TypeScript facade (`src/errors.ts` maps each to a class).
//!
//! JS sees `err.code` equal to `Code::as_ref()`, so these strings are a stable API.

use nvml_wrapper::error::NvmlError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
  /// libnvidia-ml could not be loaded (no driver installed, wrong `libraryPath`).
  NvmlNotFound,
  /// The library loaded but the kernel driver is not running.
  DriverNotLoaded,
  /// NVML refused access to the driver.
  NoPermission,
  /// Any other failure of `nvmlInit`.
  InitFailed,
  /// A requested device index does not exist.
  DeviceNotFound,
  /// A device fell off the bus (NVML_ERROR_GPU_IS_LOST) while it was being opened.
  GpuLost,
  /// An option was missing, of the wrong type or out of range.
  InvalidArg,
  /// The sampler was closed and cannot be used again.
  Closed,
  /// An NVML call failed in a way none of the above covers.
  Nvml,
  /// Passed through from napi-rs (argument conversion and the like).
  Napi(napi::Status),
}

impl AsRef<str> for Code {
  fn as_ref(&self) -> &str {
    match self {
      Code::NvmlNotFound => "VLLM_MONITOR_NVML_NOT_FOUND",
      Code::DriverNotLoaded => "VLLM_MONITOR_NVML_DRIVER_NOT_LOADED",
      Code::NoPermission => "VLLM_MONITOR_NVML_NO_PERMISSION",
      Code::InitFailed => "VLLM_MONITOR_NVML_INIT_FAILED",
      Code::DeviceNotFound => "VLLM_MONITOR_NVML_DEVICE_NOT_FOUND",
      Code::GpuLost => "VLLM_MONITOR_NVML_GPU_LOST",
      Code::InvalidArg => "VLLM_MONITOR_INVALID_ARG",
      Code::Closed => "VLLM_MONITOR_SAMPLER_CLOSED",
      Code::Nvml => "VLLM_MONITOR_NVML_ERROR",
      Code::Napi(s) => s.as_ref(),
    }
  }
}

impl From<napi::Status> for Code {
  fn from(s: napi::Status) -> Self {
    Code::Napi(s)
  }
}

pub type Error = napi::Error<Code>;
pub type Result<T> = std::result::Result<T, Error>;

pub fn err(code: Code, reason: impl ToString) -> Error {
  napi::Error::new(code, reason)
}

/// Maps a failure of `nvmlInit` (library load included) to a code and a message naming the path.
pub fn init_error(e: NvmlError, path: &str) -> Error {
  match e {
    NvmlError::LibloadingError(inner) => err(
      Code::NvmlNotFound,
      format!("NVML library {path} could not be loaded ({inner}); is the NVIDIA driver installed?"),
    ),
    NvmlError::FailedToLoadSymbol(sym) => err(
      Code::NvmlNotFound,
      format!("NVML library {path} lacks a required symbol: {sym}"),
    ),
    NvmlError::DriverNotLoaded => err(
      Code::DriverNotLoaded,
      format!("NVML ({path}) loaded but the NVIDIA kernel driver is not running"),
    ),
    NvmlError::NoPermission => err(
      Code::NoPermission,
      format!("NVML ({path}) has no permission to talk to the NVIDIA driver"),
    ),
    NvmlError::LibraryNotFound => err(
      Code::NvmlNotFound,
      format!("NVML ({path}) could not find its own libraries"),
    ),
    other => err(Code::InitFailed, format!("nvmlInit failed ({path}): {other}")),
  }
}

pub fn device_error(e: NvmlError, index: u32, what: &str) -> Error {
  match e {
    NvmlError::InvalidArg | NvmlError::NotFound => err(
      Code::DeviceNotFound,
      format!("GPU {index} does not exist ({what}: {e})"),
    ),
    NvmlError::GpuLost => err(
      Code::GpuLost,
      format!("GPU {index} has fallen off the bus ({what})"),
    ),
    other => err(Code::Nvml, format!("GPU {index}: {what} failed: {other}")),
  }
}
