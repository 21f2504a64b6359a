import { defineConfig } from 'vitest/config'

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    globalSetup: ['test/helpers/global-setup.ts'],
    // Each file in its own process: the fake NVML reads its scenario from the environment when
    // NVML is initialised, so files must not share a process.
    pool: 'forks',
    poolOptions: { forks: { maxForks: 2, minForks: 1 } },
    testTimeout: 20_000,
    // Monitors in tests forecast with the baselines unless a test names a model: a forecast worker
    // (a thread loading TensorFlow.js) per monitor would slow every suite for nothing it checks.
    // The forecasting tests pass \`forecast: { model }\` explicitly.
    env: { VLLM_MONITOR_MODEL: 'none' },
  },
})
