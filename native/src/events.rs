//! The event thread: blocks in nvmlEventSetWait_v2 for Xid and ECC events. An EventSet is not
//! thread-safe ("operations on a set are not thread-safe", nvml.h), so it lives and dies here.

use crate::clock::monotonic_ns;
use crate::shared::Shared;
use crate::types::{GpuEvent, GpuEventKind};
use nvml_wrapper::bitmasks::event::EventTypes;
use nvml_wrapper::enums::event::XidError;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::EventSet;
use std::sync::atomic::Ordering::Relaxed;

/// How long one wait blocks: also how long `stop()` may wait for this thread.
const WAIT_MS: u32 = 50;

fn wanted() -> EventTypes {
  EventTypes::CRITICAL_XID_ERROR | EventTypes::DOUBLE_BIT_ECC_ERROR | EventTypes::SINGLE_BIT_ECC_ERROR
}

fn error_event(sh: &Shared, device: u32, message: String) {
  sh.emit(GpuEvent {
    kind: GpuEventKind::EventError,
    device,
    timestamp_ns: sh.rel_ns(monotonic_ns()),
    xid: None,
    message,
  });
}

/// Registers every sampled device that is not lost and supports a wanted event type. A device
/// whose registration fails is left out (nvmlDeviceRegisterEvents frees the set on failure, so
/// the set is rebuilt without it). None when no device can be registered.
fn register(sh: &Shared) -> Option<EventSet<'_>> {
  let nvml = &*sh.nvml;
  let mut skip: Vec<u32> = Vec::new();
  'attempt: loop {
    let mut set = match nvml.create_event_set() {
      Ok(s) => s,
      Err(e) => {
        error_event(
          sh,
          0,
          format!("nvmlEventSetCreate failed: {e}; Xid events will not be reported"),
        );
        return None;
      }
    };
    let mut registered = 0;
    for (slot, &index) in sh.cfg.devices.iter().enumerate() {
      if skip.contains(&index) || sh.lost[slot].load(Relaxed) {
        continue;
      }
      let Ok(dev) = nvml.device_by_index(index) else {
        continue;
      };
      let types = match dev.supported_event_types() {
        Ok(t) => t & wanted(),
        Err(NvmlError::FailedToLoadSymbol(_)) => wanted(),
        Err(_) => continue,
      };
      if types.is_empty() {
        continue;
      }
      match dev.register_events(types, set) {
        Ok(s) => {
          set = s;
          registered += 1;
        }
        Err(e) => {
          if !matches!(e.error, NvmlError::NotSupported) {
            error_event(
              sh,
              index,
              format!("nvmlDeviceRegisterEvents failed on GPU {index}: {}", e.error),
            );
          }
          skip.push(index);
          continue 'attempt;
        }
      }
    }
    return (registered > 0).then_some(set);
  }
}

pub fn run(sh: &Shared) {
  let Some(mut set) = register(sh) else { return };
  while !sh.stopping() {
    match set.wait(WAIT_MS) {
      Ok(data) => emit(sh, data),
      Err(NvmlError::Timeout) => {}
      Err(NvmlError::GpuLost) => {
        // The set cannot say which device fell off. Give the sampler thread (which reads every
        // device each tick) time to mark it, then wait on the remaining devices only.
        drop(set);
        sh.sleep_interruptible(WAIT_MS as i64 * 1_000_000);
        match register(sh) {
          Some(s) => set = s,
          None => return,
        }
      }
      Err(e) => {
        error_event(sh, 0, format!("nvmlEventSetWait failed: {e}; retrying in 1 s"));
        sh.sleep_interruptible(1_000_000_000);
      }
    }
  }
}

fn emit(sh: &Shared, data: nvml_wrapper::struct_wrappers::event::EventData) {
  let t = sh.rel_ns(monotonic_ns());
  let device = data.device.index().unwrap_or(u32::MAX);
  let (kind, xid) = if data.event_type.contains(EventTypes::CRITICAL_XID_ERROR) {
    let code = match data.event_data {
      Some(XidError::Value(v)) => Some(v as u32),
      _ => None,
    };
    (GpuEventKind::Xid, code)
  } else if data.event_type.contains(EventTypes::DOUBLE_BIT_ECC_ERROR) {
    (GpuEventKind::EccDoubleBit, None)
  } else {
    (GpuEventKind::EccSingleBit, None)
  };
  let message = match (kind, xid) {
    (GpuEventKind::Xid, Some(x)) => format!("Xid {x} on GPU {device}: {}", xid_meaning(x)),
    (GpuEventKind::Xid, None) => format!("Xid (code unavailable) on GPU {device}"),
    (GpuEventKind::EccDoubleBit, _) => format!("double-bit (uncorrectable) ECC error on GPU {device}"),
    _ => format!("single-bit (corrected) ECC error on GPU {device}"),
  };
  sh.emit(GpuEvent {
    kind,
    device,
    timestamp_ns: t,
    xid,
    message,
  });
}

/// Short meanings of the Xid codes that matter for inference servers (NVIDIA's Xid catalogue).
pub fn xid_meaning(x: u32) -> &'static str {
  match x {
    13 => "graphics engine exception (often an illegal memory access in a kernel)",
    31 => "GPU memory page fault (illegal address in a kernel)",
    43 => "GPU stopped processing (a user application fault)",
    45 => "preemptive cleanup after a previous fault",
    48 => "double-bit ECC error (uncorrectable memory error)",
    61 | 62 => "internal micro-controller error",
    63 | 64 => "ECC page retirement or row remapping event",
    74 => "NVLink error",
    79 => "GPU has fallen off the bus",
    92 => "high single-bit ECC error rate",
    94 => "contained ECC error (the affected application must restart)",
    95 => "uncontained ECC error (reset the GPU)",
    119 | 120 => "GSP firmware error or timeout",
    _ => "see NVIDIA's Xid catalogue",
  }
}
