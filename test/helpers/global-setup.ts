// Builds the fake libnvidia-ml from C before any test runs (CI has no GPU: every NVML test goes
// addon -> dlopen(fake) -> values in JS).
// @ts-expect-error plain ESM script without types
import { buildFakeNvml } from '../../scripts/build-fake-nvml.mjs'

export default function setup() {
  buildFakeNvml()
}
