//! The slow thread: counters whose reads block for milliseconds (PCIe throughput holds the
//! caller ~20 ms, energy ~3 ms on an H200) or allocate (process lists), kept off the fast loop.

use crate::clock::monotonic_ns;
use crate::nvml::{bit, Support};
use crate::shared::Shared;
use crate::types::{ProcessMemory, SlowSample};
use nvml_wrapper::enum_wrappers::device::{EccCounter, MemoryError, PcieUtilCounter, RetirementCause};
use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::error::{nvml_sym, nvml_try, NvmlError};
use nvml_wrapper::{Device, Nvml};

pub fn run(sh: &Shared) {
  let nvml = &*sh.nvml;
  let mut slots: Vec<(usize, u32, Option<Device>, Support)> = sh
    .cfg
    .devices
    .iter()
    .enumerate()
    .map(|(slot, &i)| (slot, i, nvml.device_by_index(i).ok(), Support::default()))
    .collect();
  while !sh.stopping() {
    let started = monotonic_ns();
    for (slot, index, dev, support) in slots.iter_mut() {
      if sh.stopping() {
        return;
      }
      let Some(dev) = dev.as_ref() else { continue };
      if support.lost || sh.lost[*slot].load(std::sync::atomic::Ordering::Relaxed) {
        continue;
      }
      let t = monotonic_ns();
      let sample = read_slow(nvml, dev, support, *index, sh.rel_ns(t));
      if support.lost {
        sh.mark_lost(*slot, t, "a slow-counter read");
      } else {
        sh.push_slow(sample);
      }
    }
    sh.sleep_interruptible(started + sh.cfg.slow_interval_ns - monotonic_ns());
  }
}

fn read_slow(nvml: &Nvml, dev: &Device, s: &mut Support, device: u32, timestamp_ns: f64) -> SlowSample {
  // NVML reports PCIe throughput in KB/s.
  let tx = s
    .read(bit::PCIE, || dev.pcie_throughput(PcieUtilCounter::Send))
    .map(|v| v as f64 * 1024.0);
  let rx = s
    .read(bit::PCIE, || dev.pcie_throughput(PcieUtilCounter::Receive))
    .map(|v| v as f64 * 1024.0);
  let ecc_c = s.read(bit::ECC, || {
    dev.total_ecc_errors(MemoryError::Corrected, EccCounter::Volatile)
  });
  let ecc_u = s.read(bit::ECC, || {
    dev.total_ecc_errors(MemoryError::Uncorrected, EccCounter::Volatile)
  });
  let rows = s.read(bit::REMAPPED, || remapped_rows(nvml, dev));
  let sbe = s.read(bit::RETIRED, || {
    dev.retired_pages(RetirementCause::MultipleSingleBitEccErrors)
  });
  let dbe = s.read(bit::RETIRED, || {
    dev.retired_pages(RetirementCause::DoubleBitEccError)
  });
  let energy = s.read(bit::ENERGY, || dev.total_energy_consumption());
  let processes = s
    .read(bit::PROCESSES, || dev.running_compute_processes())
    .map(|ps| {
      ps.into_iter()
        .map(|p| ProcessMemory {
          pid: p.pid,
          used_memory_bytes: match p.used_gpu_memory {
            UsedGpuMemory::Used(b) => Some(b as f64),
            UsedGpuMemory::Unavailable => None,
          },
        })
        .collect()
    });
  SlowSample {
    device,
    timestamp_ns,
    pcie_tx_bytes_per_sec: tx,
    pcie_rx_bytes_per_sec: rx,
    ecc_corrected_volatile: ecc_c.map(|v| v as f64),
    ecc_uncorrected_volatile: ecc_u.map(|v| v as f64),
    remapped_rows_correctable: rows.map(|r| r.0),
    remapped_rows_uncorrectable: rows.map(|r| r.1),
    remapped_rows_pending: rows.map(|r| r.2),
    remapped_rows_failure: rows.map(|r| r.3),
    retired_pages_single_bit: sbe.map(|v| v.len() as u32),
    retired_pages_double_bit: dbe.map(|v| v.len() as u32),
    energy_millijoules: energy.map(|v| v as f64),
    processes,
  }
}

/// nvml-wrapper does not wrap nvmlDeviceGetRemappedRows (Ampere+), so call it through the
/// library's function table; a driver without the symbol reads as unsupported.
fn remapped_rows(nvml: &Nvml, dev: &Device) -> Result<(u32, u32, bool, bool), NvmlError> {
  let sym = nvml_sym(nvml.lib().nvmlDeviceGetRemappedRows.as_ref())?;
  let (mut corr, mut unc, mut pending, mut failure) = (0u32, 0u32, 0u32, 0u32);
  // SAFETY: the handle belongs to this NVML instance; the out-pointers outlive the call.
  unsafe { nvml_try(sym(dev.handle(), &mut corr, &mut unc, &mut pending, &mut failure))? };
  Ok((corr, unc, pending != 0, failure != 0))
}
