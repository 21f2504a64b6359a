#!/usr/bin/env bash
# The GPU check, for a lent GPU machine (no Node there; see ../shared/device/README.md).
# Here, after `npm install`:
#   ../shared/device/pack-node.sh native/*.node native/binding.js bench/gpu-sampler.mjs bench/gpu-check.sh
# Then on the device (run tool, carry [".device-carry"]):  bash .device-carry/gpu-check.sh
set -euo pipefail
carry="$(cd "$(dirname "$0")" && pwd)"
out="${OUT:-/tmp/gpu-check}"
mkdir -p "$out"
if ! command -v node >/dev/null; then
  xz -dc "$carry/node.xz" > /tmp/node && chmod +x /tmp/node
  export PATH="/tmp:$PATH"
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/device.txt"
node "$carry/gpu-sampler.mjs" --real --alloc --seconds "${SECONDS_PER_RUN:-3}" --json "$out/gpu-sampler.json" 2>&1 | tee "$out/gpu-sampler.txt"
