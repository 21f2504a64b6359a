// Samples every GPU's memory at 1 kHz, prints a line every 100 ms drain, and reports Xid events
// and a 97 % memory watch as they happen. Runs for 3 s.
//   node examples/gpu-sampler.mjs
// Without a GPU, against the fake NVML the tests use:
//   npm run build:fake-nvml
//   LD_LIBRARY_PATH=build/fake-nvml FAKE_NVML_SCENARIO=test/fixtures/fake-nvml/multi-gpu.scenario node examples/gpu-sampler.mjs
import { createGpuSampler, SampleBuffer } from 'vllm-monitor'

const sampler = createGpuSampler({ intervalUs: 1000 })
sampler.on('xid', (e) => console.log(e.message))
sampler.on('gpuLost', (e) => console.log(e.message))
for (const d of sampler.devices()) {
  sampler.watch({ device: d.index, memoryUsedFraction: 0.97 }, (a) => {
    console.log(`GPU ${a.device} memory at ${(a.usedFraction * 100).toFixed(1)} %`)
  })
}
sampler.start()

const buf = new SampleBuffer(65_536)
const timer = setInterval(() => {
  sampler.drainInto(buf)
  const line = sampler
    .snapshot()
    .map(
      (s) =>
        `GPU ${s.index}: ${((s.memoryUsedBytes ?? 0) / 2 ** 30).toFixed(2)} GiB, ${s.temperatureCelsius ?? 'n/a'} C`,
    )
  console.log(`${buf.fastRows} rows | ${line.join(' | ')}`)
}, 100)

setTimeout(() => {
  clearInterval(timer)
  const st = sampler.stats()
  console.log(
    `${st.achievedHz.toFixed(0)} Hz, ${st.samplesDropped} dropped, NVML p99 ${st.nvmlLatencyP99Ns} ns`,
  )
  sampler.close()
}, 3000)
