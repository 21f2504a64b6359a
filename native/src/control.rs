//! Thread lifecycle of one sampler: start spawns the fast, slow and event threads; stop joins them.

use crate::clock::monotonic_ns;
use crate::error::{err, Code, Result};
use crate::shared::Shared;
use std::sync::atomic::Ordering::*;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// Owns the threads. Reachable from an env cleanup hook so that a Node process (or worker) that
/// exits without `close()` still stops the threads before the environment goes away.
pub struct Control {
  pub shared: Arc<Shared>,
  pub threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Control {
  pub fn running(&self) -> bool {
    !self.threads.lock().unwrap().is_empty()
  }

  pub fn start(&self) -> Result<()> {
    let mut threads = self.threads.lock().unwrap();
    if !threads.is_empty() {
      return Ok(());
    }
    let sh = &self.shared;
    sh.stop.store(false, SeqCst);
    sh.stats.latency.reset();
    sh.stats.ticks.store(0, Relaxed);
    sh.stats.overruns.store(0, Relaxed);
    sh.stats.cpu_ns.store(0, Relaxed);
    sh.stats.run_end_ns.store(0, Relaxed);
    sh.stats.run_start_ns.store(monotonic_ns() as u64, Relaxed);
    let spawn = |name: &str, f: fn(&Shared)| {
      let sh = sh.clone();
      std::thread::Builder::new()
        .name(name.into())
        .spawn(move || f(&sh))
        .map_err(|e| err(Code::Nvml, format!("could not start the {name} thread: {e}")))
    };
    threads.push(spawn("vllm-mon-fast", crate::sampler::run)?);
    threads.push(spawn("vllm-mon-slow", crate::slow::run)?);
    if sh.cfg.events {
      threads.push(spawn("vllm-mon-events", crate::events::run)?);
    }
    Ok(())
  }

  pub fn stop(&self) {
    let mut threads = self.threads.lock().unwrap();
    if threads.is_empty() {
      return;
    }
    let sh = &self.shared;
    sh.stop.store(true, SeqCst);
    {
      let _g = sh.wake.0.lock().unwrap();
      sh.wake.1.notify_all();
    }
    for t in threads.drain(..) {
      let _ = t.join();
    }
    sh.stats.run_end_ns.store(monotonic_ns() as u64, Relaxed);
  }
}
