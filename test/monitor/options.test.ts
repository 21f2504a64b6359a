import { describe, expect, it } from 'vitest'
import { InvalidEnvError, InvalidOptionError } from '../../src/errors.js'
import { optionsFromEnv, resolveOptions } from '../../src/monitor/options.js'

describe('monitor options', () => {
  it('has defaults a user of vLLM would expect: loopback HTTP, 100 ms scrapes, prediction on, mitigation off', () => {
    const o = resolveOptions({}, {})
    expect(o.http).toEqual({ host: '127.0.0.1', port: 9490 })
    expect(o.scrapeIntervalMs).toBe(100)
    expect(o.predictive).toBe(true)
    expect(o.autoMitigate).toBe(false)
    // Unset: the orchestrator acts on the forecaster's alarms (per-type thresholds).
    expect(o.mitigationThreshold).toBeUndefined()
    expect(o.mitigation.dryRun).toBe(false)
    expect(o.mitigation.holdout).toBe(0)
  })

  it('reads the VLLM_* environment variables', () => {
    const o = resolveOptions(
      {},
      {
        VLLM_ENABLE_MONITORING: '0',
        VLLM_MONITOR_PREDICTIVE: 'false',
        VLLM_MONITOR_LEARNING: 'yes',
        VLLM_MONITOR_AUTO_MITIGATE: 'on',
        VLLM_MONITOR_MITIGATION_THRESHOLD: '0.6',
        VLLM_MONITOR_URLS: 'http://a:8000, http://b:8000',
        VLLM_MONITOR_HTTP_PORT: 'off',
        VLLM_MONITOR_GPU: 'none',
      },
    )
    expect(o).toMatchObject({
      enabled: false,
      predictive: false,
      learning: true,
      autoMitigate: true,
      mitigationThreshold: 0.6,
      replicas: ['http://a:8000', 'http://b:8000'],
      http: false,
      gpu: 'none',
    })
  })

  it('reads the mitigation variables and merges them with mitigation options given in code', () => {
    const o = resolveOptions(
      { mitigation: { holdout: 0.1 } },
      {
        VLLM_MONITOR_MITIGATION_DRY_RUN: 'true',
        VLLM_MONITOR_AUDIT_LOG: '/var/log/vllm-monitor/audit.jsonl',
        VLLM_MONITOR_LEARNER_STATE: '/var/lib/vllm-monitor/learner.json',
        VLLM_MONITOR_SCALE_WEBHOOK: 'http://autoscaler:8080/scale',
      },
    )
    expect(o.mitigation).toMatchObject({
      dryRun: true,
      holdout: 0.1,
      auditLog: '/var/log/vllm-monitor/audit.jsonl',
      learnerState: '/var/lib/vllm-monitor/learner.json',
      webhookUrl: 'http://autoscaler:8080/scale',
    })
    expect(() => optionsFromEnv({ VLLM_MONITOR_SCALE_WEBHOOK: 'autoscaler' })).toThrow(
      /VLLM_MONITOR_SCALE_WEBHOOK="autoscaler" is not a URL/,
    )
    expect(() => resolveOptions({ mitigation: { holdout: 2 } }, {})).toThrow(/options\.mitigation\.holdout/)
  })

  it('lets explicit options win over the environment', () => {
    const o = resolveOptions({ predictive: true }, { VLLM_MONITOR_PREDICTIVE: '0' })
    expect(o.predictive).toBe(true)
  })

  it('names the variable and the accepted values when an environment value is bad', () => {
    expect(() => optionsFromEnv({ VLLM_MONITOR_AUTO_MITIGATE: 'maybe' })).toThrow(InvalidEnvError)
    expect(() => optionsFromEnv({ VLLM_MONITOR_AUTO_MITIGATE: 'maybe' })).toThrow(
      /VLLM_MONITOR_AUTO_MITIGATE="maybe" is not a boolean; accepted: 1, true, yes, on, 0, false, no, off/,
    )
    expect(() => optionsFromEnv({ VLLM_MONITOR_MITIGATION_THRESHOLD: '1.5' })).toThrow(
      /VLLM_MONITOR_MITIGATION_THRESHOLD="1.5" is invalid; accepted: number in \[0, 1\]/,
    )
    expect(() => optionsFromEnv({ VLLM_MONITOR_GPU: 'cuda' })).toThrow(
      /accepted: auto \| nvml \| nvidia-smi \| none/,
    )
    expect(() => optionsFromEnv({ VLLM_MONITOR_URLS: 'not a url' })).toThrow(/VLLM_MONITOR_URLS/)
  })

  it('names an unknown option and lists the known ones', () => {
    expect(() => resolveOptions({ scrapeIntervalMS: 5 } as never, {})).toThrow(InvalidOptionError)
    expect(() => resolveOptions({ scrapeIntervalMS: 5 } as never, {})).toThrow(
      /unknown option options\.scrapeIntervalMS; known: .*scrapeIntervalMs/,
    )
  })

  it('names the option that is out of range', () => {
    expect(() => resolveOptions({ scrapeIntervalMs: 5 }, {})).toThrow(/options\.scrapeIntervalMs/)
    expect(() => resolveOptions({ replicas: ['nope'] }, {})).toThrow(/options\.replicas\.0/)
    expect(() => resolveOptions({ mitigationThreshold: 2 }, {})).toThrow(/options\.mitigationThreshold/)
  })
})
