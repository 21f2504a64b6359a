#!/usr/bin/env bash
# The forecast tick measured on a lent device machine (a dedicated 16-core host; no Node and no
# registry there, see ../shared/device/README.md), where this VM's two vCPUs say little about
# the 10 Hz tail.
#
# Here, after `npm install` (or `npm run build`):
#   bash bench/device-forecast.sh pack
# bundles bench/forecast-speed.mjs and the forecast worker with their dependencies (esbuild; piscina
# stays a package beside them, so that its worker and ours share its `move`), copies tfjs's wasm
# binaries, and packs this machine's node: about 35 MiB under .device-carry/. Then, on the device
# (run tool, carry [".device-carry"], timeout_s 420):
#   bash .device-carry/forecast/device-forecast.sh run
# It runs the bench FORECAST_RUNS times (default 3; each run forecasts FORECAST_SECONDS, default 60,
# and idles as long again as one route: about 100 s in all) and writes forecast-speed.jsonl and
# nproc.txt to $OUT.
# The bundle finds models/forecaster and data/traces two levels up, in the repo's working tree.
set -euo pipefail
mode="${1:-}"
case "$mode" in
pack)
  top="$(git rev-parse --show-toplevel)"
  cd "$top"
  [ -f dist/index.js ] || { echo "dist/ is missing: run npm run build first" >&2; exit 1; }
  out=.device-carry/forecast
  rm -rf "$out"
  mkdir -p "$out/node_modules/piscina"
  # ESM bundles of CommonJS dependencies (tfjs) still ask for require, __filename and __dirname.
  banner="import { createRequire as __cr } from 'node:module'; import { fileURLToPath as __fu } from 'node:url'; import { dirname as __dn } from 'node:path'; const require = __cr(import.meta.url); const __filename = __fu(import.meta.url); const __dirname = __dn(__filename);"
  common=(--bundle --platform=node --format=esm --target=node20 --external:piscina --log-level=error)
  npx esbuild bench/forecast-speed.mjs "${common[@]}" --external:'*.node' --banner:js="$banner" --outfile="$out/forecast-speed.mjs"
  npx esbuild dist/forecast/worker.js "${common[@]}" --banner:js="$banner" --outfile="$out/worker.js"
  cp -r node_modules/piscina/package.json node_modules/piscina/dist "$out/node_modules/piscina/"
  cp node_modules/@tensorflow/tfjs-backend-wasm/dist/*.wasm "$out/"
  cp bench/device-forecast.sh "$out/"
  ../shared/device/pack-node.sh
  ;;
run)
  here="$(cd "$(dirname "$0")" && pwd)"
  res="${OUT:-/tmp/device-forecast}"
  mkdir -p "$res"
  if ! command -v node >/dev/null; then
    xz -dc "$here/../node.xz" > /tmp/node && chmod +x /tmp/node
    export PATH="/tmp:$PATH"
  fi
  nproc | tee "$res/nproc.txt"
  for _ in $(seq "${FORECAST_RUNS:-3}"); do
    node "$here/forecast-speed.mjs" --seconds "${FORECAST_SECONDS:-60}" --json | tee -a "$res/forecast-speed.jsonl"
  done
  ;;
*)
  echo "usage: bash bench/device-forecast.sh pack | run" >&2
  exit 2
  ;;
esac
