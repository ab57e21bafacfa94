// micdrop.js — a dependency-free browser client for Micdrop's wire protocol.
//
// Served by `micdrop serve` at /micdrop.js. Import it as an ES module:
//
//   import { MicdropClient } from '/micdrop.js'
//   const micdrop = new MicdropClient({ url: 'wss://host/call', params: { authorization: 'Bearer …' } })
//   micdrop.on('StateChange', (state) => render(state))
//   await micdrop.start()
//
// Wire protocol (Micdrop's, to the byte): the optional params JSON as the first text frame on every
// open; text commands `StartSpeaking`, `StopSpeaking`, `Mute`; user audio as binary frames of raw
// PCM s16le mono 16 kHz, 100 ms each; from the server, text commands (`Message {json}`,
// `PartialAssistantMessage "…"`, `CancelLastUserMessage`, `SkipAnswer`, `EndCall`, `ToolCall {json}`,
// `Classification {json}`) and binary PCM s16le mono 16 kHz to play. See docs/browser-client.md.
//
// Nothing here touches browser APIs at import time, so the pure helpers (VAD, resampling, frame
// parsing, close-code mapping) can be imported and unit-tested in Node.

/** Sample rate of every PCM frame on the wire, both ways. */
export const SAMPLE_RATE = 16000

/** Duration of one user audio frame, in milliseconds. */
export const FRAME_MS = 100

/** Client → server commands, exact wire text. */
export const ClientCommands = Object.freeze({
  StartSpeaking: 'StartSpeaking',
  StopSpeaking: 'StopSpeaking',
  Mute: 'Mute',
})

/** Server → client commands, in the order Micdrop's client matches them. */
export const ServerCommands = Object.freeze({
  Message: 'Message',
  PartialAssistantMessage: 'PartialAssistantMessage',
  EndCall: 'EndCall',
  SkipAnswer: 'SkipAnswer',
  CancelLastUserMessage: 'CancelLastUserMessage',
  ToolCall: 'ToolCall',
  Classification: 'Classification',
})

/** Error codes, as Micdrop's `MicdropClientErrorCode`. */
export const ErrorCode = Object.freeze({
  MissingUrl: 'MissingUrl',
  Mic: 'Mic',
  Connection: 'Connection',
  InternalServer: 'InternalServer',
  BadRequest: 'BadRequest',
  Unauthorized: 'Unauthorized',
  NotFound: 'NotFound',
  Unknown: 'Unknown',
})

/** An error of the client: `code` is one of `ErrorCode`. */
export class MicdropClientError extends Error {
  constructor(code, message, { closeCode, recoverable = false } = {}) {
    super(message || code)
    this.name = 'MicdropClientError'
    this.code = code
    this.closeCode = closeCode
    this.recoverable = recoverable
  }
}

/**
 * Maps a WebSocket close code to a client error, as Micdrop does (reference §A.8).
 * Returns `null` when the close is not an error (1000, 1005, 1012–3999): the client then stops.
 * `error.recoverable` tells whether the client reconnects.
 */
export function errorFromCloseCode(code, reason = '') {
  const opts = (recoverable) => ({ closeCode: code, recoverable })
  if (code === 1011) return new MicdropClientError(ErrorCode.InternalServer, reason || 'Internal server error', opts(true))
  if (code >= 1001 && code <= 1010 && code !== 1005) {
    return new MicdropClientError(ErrorCode.Connection, reason || `Connection lost (${code})`, opts(true))
  }
  if (code === 4401) return new MicdropClientError(ErrorCode.Unauthorized, reason || 'Unauthorized', opts(false))
  if (code === 4404) return new MicdropClientError(ErrorCode.NotFound, reason || 'Not found', opts(false))
  if (code === 4400) return new MicdropClientError(ErrorCode.BadRequest, reason || 'Bad request', opts(false))
  if (code >= 4000) return new MicdropClientError(ErrorCode.Unknown, reason || `Closed with code ${code}`, opts(true))
  return null
}

/**
 * Parses a server text frame. Returns `{ command, payload }` (payload already JSON-parsed for
 * commands that carry one), or `null` for unknown text. Throws on malformed JSON.
 */
export function parseServerText(text) {
  const C = ServerCommands
  const withPayload = (name) => JSON.parse(text.substring(name.length + 1))
  // Order matters: `PartialAssistantMessage` does not start with `Message`, but keep Micdrop's order.
  if (text.startsWith(C.Message)) return { command: C.Message, payload: withPayload(C.Message) }
  if (text.startsWith(C.PartialAssistantMessage)) {
    return { command: C.PartialAssistantMessage, payload: withPayload(C.PartialAssistantMessage) }
  }
  if (text === C.EndCall) return { command: C.EndCall }
  if (text === C.SkipAnswer) return { command: C.SkipAnswer }
  if (text === C.CancelLastUserMessage) return { command: C.CancelLastUserMessage }
  if (text.startsWith(C.ToolCall)) return { command: C.ToolCall, payload: withPayload(C.ToolCall) }
  if (text.startsWith(C.Classification)) return { command: C.Classification, payload: withPayload(C.Classification) }
  return null
}

/**
 * Resamples one window of mono float samples by linear interpolation. The output length is
 * `round(input.length * toRate / fromRate)`, so a 100 ms window at any usual rate gives 1600
 * samples at 16 kHz.
 */
export function resampleLinear(input, fromRate, toRate) {
  if (fromRate === toRate) return Float32Array.from(input)
  const outLength = Math.round((input.length * toRate) / fromRate)
  const out = new Float32Array(outLength)
  const step = fromRate / toRate
  const last = input.length - 1
  for (let i = 0; i < outLength; i++) {
    const pos = i * step
    const j = Math.floor(pos)
    if (j >= last) {
      out[i] = input[last] ?? 0
    } else {
      const frac = pos - j
      out[i] = input[j] + (input[j + 1] - input[j]) * frac
    }
  }
  return out
}

/** Float [-1, 1] → PCM16 (clamped; ×0x8000 for negatives, ×0x7fff for positives). */
export function floatToPcm16(input) {
  const out = new Int16Array(input.length)
  for (let i = 0; i < input.length; i++) {
    const s = Math.max(-1, Math.min(1, input[i] || 0))
    out[i] = s < 0 ? s * 0x8000 : s * 0x7fff
  }
  return out
}

/** PCM16 → float [-1, 1). */
export function pcm16ToFloat(input) {
  const out = new Float32Array(input.length)
  for (let i = 0; i < input.length; i++) out[i] = input[i] / 0x8000
  return out
}

/** Maps a level in dB to 0..1 for a meter (`minDb` → 0, `maxDb` → 1). */
export function dbToLevel(db, minDb = -100, maxDb = -20) {
  if (!Number.isFinite(db)) return 0
  return Math.max(0, Math.min(1, (db - minDb) / (maxDb - minDb)))
}

/** Micdrop's volume VAD defaults. */
export const defaultVadOptions = Object.freeze({ history: 5, threshold: -55 })

/**
 * Micdrop's volume VAD as a pure state machine (the hark-like algorithm): feed it one level in
 * dB per tick (one tick per 100 ms frame) and it returns the event of that tick, if any:
 * `'StartSpeaking'` (an unconfirmed attempt), `'ConfirmSpeaking'`, `'CancelSpeaking'` or
 * `'StopSpeaking'`.
 *
 * - loud tick while not speaking: 2+ loud ticks among the last 3 → confirm; exactly 1 → attempt;
 * - quiet tick while speaking: no loud tick in the whole history → stop;
 * - quiet tick during an attempt: last tick quiet → cancel.
 */
export class VolumeVad {
  constructor(options = {}) {
    this.options = { ...defaultVadOptions }
    this.history = []
    this.speaking = false
    this.attempting = false
    this.setOptions(options)
  }

  setOptions(options = {}) {
    const next = { ...this.options, ...options }
    if (!(Number.isFinite(next.history) && next.history >= 3)) throw new Error('VAD history must be at least 3')
    if (!Number.isFinite(next.threshold)) throw new Error('VAD threshold must be a number (dB)')
    this.options = next
    while (this.history.length > next.history) this.history.shift()
    while (this.history.length < next.history) this.history.unshift(0)
  }

  /** `'speaking'`, `'maybe'` (an attempt) or `'silence'`. */
  get status() {
    return this.speaking ? 'speaking' : this.attempting ? 'maybe' : 'silence'
  }

  reset() {
    this.speaking = false
    this.attempting = false
    this.history.fill(0)
  }

  /** Feeds one level (dB) and returns the event it causes, or `null`. */
  feed(db) {
    const loud = db > this.options.threshold
    const h = this.history
    let event = null
    if (loud) {
      if (!this.speaking) {
        let recent = 0
        for (let i = Math.max(0, h.length - 3); i < h.length; i++) recent += h[i]
        if (recent >= 2) {
          this.speaking = true
          this.attempting = false
          event = 'ConfirmSpeaking'
        } else if (recent === 1 && !this.attempting) {
          this.attempting = true
          event = 'StartSpeaking'
        }
      }
    } else if (this.speaking) {
      if (h.every((x) => x === 0)) {
        this.speaking = false
        event = 'StopSpeaking'
      }
    } else if (this.attempting && h[h.length - 1] === 0) {
      this.attempting = false
      event = 'CancelSpeaking'
    }
    h.shift()
    h.push(loud ? 1 : 0)
    return event
  }
}

// The capture worklet, inlined so micdrop.js stays one file. It cuts the microphone signal into
// windows of `frameSize` samples (100 ms at the context's rate) and posts them to the main thread.
const CAPTURE_WORKLET = `
class MicdropCapture extends AudioWorkletProcessor {
  constructor(options) {
    super()
    this.size = options.processorOptions.frameSize
    this.buf = new Float32Array(this.size)
    this.n = 0
  }
  process(inputs) {
    const ch = inputs[0] && inputs[0][0]
    if (ch) {
      let i = 0
      while (i < ch.length) {
        const k = Math.min(ch.length - i, this.size - this.n)
        this.buf.set(ch.subarray(i, i + k), this.n)
        this.n += k
        i += k
        if (this.n === this.size) {
          this.port.postMessage(this.buf, [this.buf.buffer])
          this.buf = new Float32Array(this.size)
          this.n = 0
        }
      }
    }
    return true
  }
}
registerProcessor('micdrop-capture', MicdropCapture)
`

const STORAGE_KEYS = Object.freeze({
  micDeviceId: 'micdrop.micDeviceId',
  speakerDeviceId: 'micdrop.speakerDeviceId',
  vad: 'micdrop.vadOptions',
})

function storageGet(key) {
  try {
    return globalThis.localStorage?.getItem(key) ?? undefined
  } catch {
    return undefined
  }
}

function storageSet(key, value) {
  try {
    if (value === undefined || value === null) globalThis.localStorage?.removeItem(key)
    else globalThis.localStorage?.setItem(key, value)
  } catch {
    // storage disabled: selections are simply not persisted
  }
}

/** Max dB of an analyser's frequency bins (skipping the lowest bins), Micdrop's level measure. */
function analyserMaxDb(analyser, bins) {
  if (!analyser) return -Infinity
  analyser.getFloatFrequencyData(bins)
  let max = -Infinity
  for (let i = 4; i < bins.length; i++) {
    if (bins[i] > max && bins[i] < 0) max = bins[i]
  }
  return max
}

function makeAnalyser(ctx) {
  const analyser = ctx.createAnalyser()
  analyser.fftSize = 512
  analyser.smoothingTimeConstant = 0.1
  return { analyser, bins: new Float32Array(analyser.frequencyBinCount) }
}

/** Plays PCM16 16 kHz chunks back to back, with a short prebuffer. */
class Speaker {
  constructor({ prebufferMs = 100, prebufferTimeoutMs = 150, onPlayingChange = () => {} } = {}) {
    this.prebufferSamples = Math.round((prebufferMs / 1000) * SAMPLE_RATE)
    this.prebufferTimeoutMs = prebufferTimeoutMs
    this.onPlayingChange = onPlayingChange
    this.ctx = null
    this.output = null
    this.analyser = null
    this.bins = null
    this.pending = []
    this.pendingSamples = 0
    this.timer = null
    this.sources = new Set()
    this.nextTime = 0
    this.isPlaying = false
    this.samplesScheduled = 0
    this.fallbackAudio = null
  }

  attach(ctx) {
    if (this.ctx === ctx) return
    this.ctx = ctx
    this.output = ctx.createGain()
    const { analyser, bins } = makeAnalyser(ctx)
    this.analyser = analyser
    this.bins = bins
    this.output.connect(analyser)
    this.output.connect(ctx.destination)
  }

  /** Queues one chunk (Int16Array). */
  push(samples) {
    if (!this.ctx || samples.length === 0) return
    if (this.isPlaying) {
      this.schedule(samples)
      return
    }
    this.pending.push(samples)
    this.pendingSamples += samples.length
    if (this.pendingSamples >= this.prebufferSamples) {
      this.flush()
    } else if (!this.timer) {
      this.timer = setTimeout(() => this.flush(), this.prebufferTimeoutMs)
    }
  }

  flush() {
    clearTimeout(this.timer)
    this.timer = null
    const chunks = this.pending
    this.pending = []
    this.pendingSamples = 0
    for (const c of chunks) this.schedule(c)
  }

  schedule(samples) {
    const ctx = this.ctx
    const buffer = ctx.createBuffer(1, samples.length, SAMPLE_RATE)
    buffer.getChannelData(0).set(pcm16ToFloat(samples))
    const source = ctx.createBufferSource()
    source.buffer = buffer
    source.connect(this.output)
    // Back to back; after an underrun, restart slightly ahead of the clock.
    const start = Math.max(this.nextTime, ctx.currentTime + 0.03)
    source.start(start)
    this.nextTime = start + buffer.duration
    this.samplesScheduled += samples.length
    this.sources.add(source)
    source.onended = () => {
      this.sources.delete(source)
      if (this.sources.size === 0 && this.pending.length === 0) this.setPlaying(false)
    }
    this.setPlaying(true)
  }

  /** Stops playback at once and drops everything queued. */
  stop() {
    clearTimeout(this.timer)
    this.timer = null
    this.pending = []
    this.pendingSamples = 0
    for (const s of this.sources) {
      s.onended = null
      try {
        s.stop()
      } catch {
        // already stopped
      }
      s.disconnect()
    }
    this.sources.clear()
    this.nextTime = 0
    this.setPlaying(false)
  }

  setPlaying(playing) {
    if (this.isPlaying === playing) return
    this.isPlaying = playing
    this.onPlayingChange(playing)
  }

  volume() {
    return analyserMaxDb(this.analyser, this.bins)
  }

  /** Routes the output to a device; returns false when the browser cannot choose outputs. */
  async setSinkId(deviceId) {
    const ctx = this.ctx
    if (!ctx) return false
    const id = deviceId === 'default' ? '' : deviceId || ''
    if (typeof ctx.setSinkId === 'function') {
      await ctx.setSinkId(id)
      return true
    }
    if (typeof HTMLMediaElement !== 'undefined' && typeof HTMLMediaElement.prototype.setSinkId === 'function') {
      // Fallback: play through an <audio> element whose output can be chosen.
      if (!this.fallbackAudio) {
        const dest = ctx.createMediaStreamDestination()
        this.output.disconnect(ctx.destination)
        this.output.connect(dest)
        this.fallbackAudio = new Audio()
        this.fallbackAudio.srcObject = dest.stream
        await this.fallbackAudio.play().catch(() => {})
      }
      await this.fallbackAudio.setSinkId(id)
      return true
    }
    return false
  }
}

const defaultOptions = Object.freeze({
  url: undefined,
  params: undefined,
  vad: undefined,
  preRollMs: 500,
  disableInterruption: false,
  debugLog: false,
  prebufferMs: 100,
  reconnect: { maxAttempts: Infinity, delayMs: 1000, connectionTimeout: 5000 },
})

/**
 * The call client. Mirrors Micdrop's `MicdropClient`: options, state, events and methods.
 *
 * Events: `StateChange(state, prev)`, `Message(item)`, `PartialAssistantMessage(text)`,
 * `ToolCall(toolCall)`, `Classification(c)`, `EndCall()`, `Error(error)`.
 */
export class MicdropClient {
  constructor(options = {}) {
    this.options = { ...defaultOptions, ...options, reconnect: { ...defaultOptions.reconnect, ...options.reconnect } }
    this.listeners = new Map()
    this.conversation = []
    this.partialAssistantMessage = undefined
    this.error = undefined
    this.micDevices = []
    this.speakerDevices = []
    this.micDeviceId = storageGet(STORAGE_KEYS.micDeviceId)
    this.speakerDeviceId = storageGet(STORAGE_KEYS.speakerDeviceId)
    let savedVad
    try {
      savedVad = JSON.parse(storageGet(STORAGE_KEYS.vad) || 'null')
    } catch {
      savedVad = null
    }
    this.vad = new VolumeVad({ ...(savedVad || {}), ...(this.options.vad || {}) })

    this.ws = null
    this.ctx = null
    this.micStream = null
    this.micSource = null
    this.captureNode = null
    this.micAnalyser = null
    this.micBins = null
    this.micVolume = -Infinity
    this.speaker = new Speaker({
      prebufferMs: this.options.prebufferMs,
      onPlayingChange: (playing) => this.onSpeakerPlayingChange(playing),
    })

    this._isStarting = false
    this._isStarted = false
    this._isMuted = false
    this._isPaused = false
    this._isProcessing = false
    this._isUserSpeaking = false
    this._isReconnecting = false
    this._vadHeld = false // VAD held during assistant audio (disableInterruption)
    this.preRoll = []
    this.reconnectAttempts = 0
    this.reconnectTimer = null
    this.resumeVadTimer = null
    this.connectTimer = null
    this.speakerMeterTimer = null
    this.startTime = 0
    this.startSeq = 0
    this.devicesListener = null

    this.stats = {
      commandsSent: [],
      audioFramesSent: 0,
      audioBytesSent: 0,
      audioFramesReceived: 0,
      audioFramesDropped: 0,
      audioSamplesPlayed: 0,
      interruptions: 0,
      maxSpeakerVolume: -Infinity,
      maxMicVolume: -Infinity,
      connections: 0,
    }
    this.lastState = this.state
  }

  // ---- events ----

  /** Adds a listener; returns a function that removes it. */
  on(event, fn) {
    if (!this.listeners.has(event)) this.listeners.set(event, new Set())
    this.listeners.get(event).add(fn)
    return () => this.off(event, fn)
  }

  off(event, fn) {
    this.listeners.get(event)?.delete(fn)
  }

  once(event, fn) {
    const off = this.on(event, (...args) => {
      off()
      fn(...args)
    })
    return off
  }

  emit(event, ...args) {
    for (const fn of [...(this.listeners.get(event) || [])]) {
      try {
        fn(...args)
      } catch (err) {
        console.error(`[micdrop] ${event} listener failed`, err)
      }
    }
  }

  // ---- state ----

  get isStarting() {
    return this._isStarting || this.ws?.readyState === 0
  }
  get isStarted() {
    return this._isStarted && this.ws?.readyState === 1 && !!this.micStream
  }
  get isMuted() {
    return this._isMuted
  }
  get isPaused() {
    return this._isPaused
  }
  get isReconnecting() {
    return this._isReconnecting
  }
  get isProcessing() {
    return this._isProcessing && !this._isPaused
  }
  get isUserSpeaking() {
    return this._isUserSpeaking
  }
  get isAssistantSpeaking() {
    return this.speaker.isPlaying
  }
  get isMicStarted() {
    return !!this.micStream
  }
  get isInterruptionDisabled() {
    return !!this.options.disableInterruption
  }
  get isListening() {
    return (
      this.isStarted &&
      !this._isPaused &&
      !this._isMuted &&
      !this.isProcessing &&
      !this._isUserSpeaking &&
      !this.isAssistantSpeaking
    )
  }

  /** A snapshot of the state (a new object each time). */
  get state() {
    return {
      isStarting: this.isStarting,
      isStarted: this.isStarted,
      isMuted: this.isMuted,
      isPaused: this.isPaused,
      isReconnecting: this.isReconnecting,
      isListening: this.isListening,
      isProcessing: this.isProcessing,
      isUserSpeaking: this.isUserSpeaking,
      isAssistantSpeaking: this.isAssistantSpeaking,
      isMicStarted: this.isMicStarted,
      isMicMuted: this._isMuted || this._isPaused,
      isInterruptionDisabled: this.isInterruptionDisabled,
      micDeviceId: this.micDeviceId,
      speakerDeviceId: this.speakerDeviceId,
      micDevices: this.micDevices,
      speakerDevices: this.speakerDevices,
      conversation: this.conversation,
      partialAssistantMessage: this.partialAssistantMessage,
      error: this.error,
    }
  }

  notify() {
    const state = this.state
    const prev = this.lastState
    const changed = Object.keys(state).some((k) => state[k] !== prev[k])
    if (!changed) return
    this.lastState = state
    this.emit('StateChange', state, prev)
  }

  log(...args) {
    if (this.options.debugLog) console.log(`[MicdropClient ${Date.now() - this.startTime}]`, ...args)
  }

  // ---- levels ----

  /** Current microphone level in dB (max frequency bin; -Infinity when silent or stopped). */
  getMicVolume() {
    return analyserMaxDb(this.micAnalyser, this.micBins)
  }

  /** Current speaker (assistant audio) level in dB. */
  getSpeakerVolume() {
    return this.speaker.volume()
  }

  // ---- VAD options ----

  /** Changes VAD options (`history` ≥ 3, `threshold` in dB); persisted in localStorage. */
  setVadOptions(options) {
    this.vad.setOptions(options)
    storageSet(STORAGE_KEYS.vad, JSON.stringify(this.vad.options))
  }

  resetVadOptions() {
    this.vad.setOptions(defaultVadOptions)
    storageSet(STORAGE_KEYS.vad, undefined)
  }

  // ---- lifecycle ----

  /** Starts a call: microphone, then the WebSocket. Options given here are merged in. */
  async start(options = {}) {
    if (this._isStarted || this._isStarting) return
    this.options = {
      ...this.options,
      ...options,
      reconnect: { ...this.options.reconnect, ...options.reconnect },
    }
    if (options.vad) this.vad.setOptions(options.vad)
    this.startTime = Date.now()
    this.error = undefined
    this.conversation = []
    this.partialAssistantMessage = undefined
    this._isProcessing = true
    this._isMuted = false
    this._isPaused = false
    this._isUserSpeaking = false
    this._isReconnecting = false
    this.reconnectAttempts = 0
    this._isStarting = true
    this.notify()

    if (!this.options.url) {
      this._isStarting = false
      this._isProcessing = false
      this.setError(new MicdropClientError(ErrorCode.MissingUrl, 'No WebSocket URL given'))
      throw this.error
    }
    const seq = ++this.startSeq
    try {
      await this.startMic()
    } catch (err) {
      this._isStarting = false
      this._isProcessing = false
      this.notify()
      throw err
    }
    if (seq !== this.startSeq) return // stop() was called while the microphone was starting
    this._isStarted = true
    this._isStarting = false
    this.openSocket()
    this.notify()
  }

  /** Ends the call: closes the socket (1000), stops the microphone and the speaker. */
  async stop() {
    this.startSeq++
    this._isStarted = false
    this._isStarting = false
    this._isProcessing = false
    this._isMuted = false
    this._isPaused = false
    this._isReconnecting = false
    this._isUserSpeaking = false
    this._vadHeld = false
    clearTimeout(this.reconnectTimer)
    clearTimeout(this.resumeVadTimer)
    this.closeSocket()
    this.stopMic()
    this.speaker.stop()
    this.partialAssistantMessage = undefined
    this.notify()
  }

  /** Mutes the microphone locally: nothing is sent, the assistant keeps talking. */
  mute() {
    if (this._isUserSpeaking) this.endUserTurn(true)
    this.resetVad()
    this._isMuted = true
    this.notify()
  }

  unmute() {
    this._isMuted = false
    this.resetVad()
    this.notify()
  }

  /** Pauses the call: stops the VAD and playback, and sends `Mute` (the server drops the turn). */
  pause() {
    if (this._isPaused) return
    this._isPaused = true
    this._isProcessing = false
    this._isUserSpeaking = false
    this.resetVad()
    this.speaker.stop()
    this.partialAssistantMessage = undefined
    this.sendCommand(ClientCommands.Mute)
    this.notify()
  }

  resume() {
    if (!this._isPaused) return
    this._isPaused = false
    this.resetVad()
    this.notify()
  }

  // ---- microphone ----

  async ensureContext() {
    if (!this.ctx) {
      const Ctx = globalThis.AudioContext || globalThis.webkitAudioContext
      this.ctx = new Ctx({ latencyHint: 'interactive' })
      this.speaker.attach(this.ctx)
      if (this.speakerDeviceId) await this.speaker.setSinkId(this.speakerDeviceId).catch(() => {})
      const url = URL.createObjectURL(new Blob([CAPTURE_WORKLET], { type: 'application/javascript' }))
      try {
        await this.ctx.audioWorklet.addModule(url)
      } finally {
        URL.revokeObjectURL(url)
      }
    }
    if (this.ctx.state === 'suspended') await this.ctx.resume().catch(() => {})
    return this.ctx
  }

  /**
   * Starts the microphone (also usable before a call, e.g. to show a level meter).
   * Rejects with a `Mic` error when permission is refused or no microphone exists.
   */
  async startMic({ deviceId } = {}) {
    if (deviceId !== undefined) {
      this.micDeviceId = deviceId || undefined
      storageSet(STORAGE_KEYS.micDeviceId, this.micDeviceId)
    }
    try {
      const ctx = await this.ensureContext()
      const constraints = {
        audio: {
          echoCancellation: true,
          noiseSuppression: true,
          autoGainControl: true,
          channelCount: 1,
          ...(this.micDeviceId ? { deviceId: { exact: this.micDeviceId } } : {}),
        },
      }
      let stream
      try {
        stream = await navigator.mediaDevices.getUserMedia(constraints)
      } catch (err) {
        // A remembered device that disappeared: fall back to the default one.
        if (this.micDeviceId && err?.name === 'OverconstrainedError') {
          this.micDeviceId = undefined
          storageSet(STORAGE_KEYS.micDeviceId, undefined)
          delete constraints.audio.deviceId
          stream = await navigator.mediaDevices.getUserMedia(constraints)
        } else {
          throw err
        }
      }
      this.stopMic()
      this.micStream = stream
      this.micSource = ctx.createMediaStreamSource(stream)
      const { analyser, bins } = makeAnalyser(ctx)
      this.micAnalyser = analyser
      this.micBins = bins
      this.micSource.connect(analyser)
      this.captureNode = new AudioWorkletNode(ctx, 'micdrop-capture', {
        numberOfInputs: 1,
        numberOfOutputs: 1,
        channelCount: 1,
        channelCountMode: 'explicit',
        processorOptions: { frameSize: Math.round((ctx.sampleRate * FRAME_MS) / 1000) },
      })
      this.captureNode.port.onmessage = (e) => this.onMicFrame(e.data)
      // A silent sink keeps the worklet pulled by the graph.
      const sink = ctx.createGain()
      sink.gain.value = 0
      this.micSource.connect(this.captureNode)
      this.captureNode.connect(sink)
      sink.connect(ctx.destination)
      this.captureSink = sink
      this.resetVad()
      const track = stream.getAudioTracks()[0]
      const settings = track?.getSettings?.() || {}
      if (settings.deviceId && !this.micDeviceId) this.currentMicDeviceId = settings.deviceId
      if (settings.echoCancellation === false && !this.options.disableInterruption) {
        // Without echo cancellation the assistant would interrupt itself (Micdrop does the same).
        this.log('echo cancellation is off: interruption disabled')
        this.options.disableInterruption = true
      }
      await this.updateDevices()
      this.watchDevices()
      this.notify()
    } catch (err) {
      const error = err instanceof MicdropClientError ? err : new MicdropClientError(ErrorCode.Mic, micErrorMessage(err))
      this.stopMic()
      this.setError(error)
      throw error
    }
  }

  stopMic() {
    if (this.captureNode) {
      this.captureNode.port.onmessage = null
      this.captureNode.disconnect()
      this.captureNode = null
    }
    this.captureSink?.disconnect()
    this.captureSink = null
    this.micSource?.disconnect()
    this.micSource = null
    this.micAnalyser = null
    if (this.micStream) {
      for (const t of this.micStream.getTracks()) t.stop()
      this.micStream = null
    }
    this.micVolume = -Infinity
  }

  /** Switches the microphone (persisted). During a call the turn in progress ends first. */
  async changeMicDevice(deviceId) {
    if (!this.micStream) {
      this.micDeviceId = deviceId || undefined
      storageSet(STORAGE_KEYS.micDeviceId, this.micDeviceId)
      this.notify()
      return
    }
    if (this._isUserSpeaking) this.endUserTurn(true)
    await this.startMic({ deviceId })
  }

  /** Switches the speaker (persisted). Rejects if the browser cannot choose outputs. */
  async changeSpeakerDevice(deviceId) {
    this.speakerDeviceId = deviceId || undefined
    storageSet(STORAGE_KEYS.speakerDeviceId, this.speakerDeviceId)
    if (this.ctx) {
      const ok = await this.speaker.setSinkId(deviceId)
      if (!ok) throw new Error('This browser cannot choose the audio output device')
    }
    this.notify()
  }

  /** Refreshes `micDevices` / `speakerDevices` (`{ id, label, kind }`, default first). */
  async updateDevices() {
    if (!globalThis.navigator?.mediaDevices?.enumerateDevices) return
    const raw = await navigator.mediaDevices.enumerateDevices()
    // The browser's 'default' / 'communications' aliases are dropped (choosing no device means
    // the system default); the real device behind 'default' comes first.
    const list = (kind) => {
      const all = raw.filter((d) => d.kind === kind && d.deviceId)
      const def = all.find((d) => d.deviceId === 'default')
      const rest = all.filter((d) => d.deviceId !== 'default' && d.deviceId !== 'communications')
      if (def) {
        const i = rest.findIndex((d) => d.groupId && d.groupId === def.groupId)
        if (i > 0) rest.unshift(rest.splice(i, 1)[0])
      }
      return rest.map((d, n) => ({
        id: d.deviceId,
        label: d.label || `${kind === 'audioinput' ? 'Microphone' : 'Speaker'} ${n + 1}`,
        kind,
      }))
    }
    this.micDevices = list('audioinput')
    this.speakerDevices = list('audiooutput')
    this.notify()
  }

  watchDevices() {
    if (this.devicesListener || !navigator.mediaDevices?.addEventListener) return
    this.devicesListener = () => this.updateDevices().catch(() => {})
    navigator.mediaDevices.addEventListener('devicechange', this.devicesListener)
  }

  // ---- capture path: VAD, pre-roll, frames ----

  resetVad() {
    this.vad.reset()
    this.preRoll = []
  }

  get vadActive() {
    return (
      this._isStarted &&
      this.ws?.readyState === 1 &&
      !this._isMuted &&
      !this._isPaused &&
      !this._isReconnecting &&
      !this._vadHeld
    )
  }

  onMicFrame(samples) {
    const db = this.getMicVolume()
    this.micVolume = db
    if (db > this.stats.maxMicVolume) this.stats.maxMicVolume = db
    if (!this.vadActive || !this.ctx) return
    const pcm = floatToPcm16(resampleLinear(samples, this.ctx.sampleRate, SAMPLE_RATE))
    const event = this.vad.feed(db)
    if (this._isUserSpeaking) {
      this.sendAudio(pcm)
      if (event === 'StopSpeaking') this.endUserTurn(false)
      return
    }
    // Not in a turn: keep a pre-roll so the first syllable is sent once speech is confirmed.
    this.preRoll.push(pcm)
    const keep = Math.max(1, Math.ceil(this.options.preRollMs / FRAME_MS))
    while (this.preRoll.length > keep) this.preRoll.shift()
    if (event === 'ConfirmSpeaking') this.startUserTurn()
  }

  startUserTurn() {
    this.log('user starts speaking')
    this._isUserSpeaking = true
    this.sendCommand(ClientCommands.StartSpeaking)
    for (const pcm of this.preRoll) this.sendAudio(pcm)
    this.preRoll = []
    // Interruption: stop the assistant at once.
    if (this.speaker.isPlaying || this.speaker.pending.length) this.stats.interruptions++
    this.speaker.stop()
    this._isProcessing = false
    this.partialAssistantMessage = undefined
    this.notify()
  }

  endUserTurn(fromMute) {
    this.log('user stops speaking', fromMute ? '(mute)' : '')
    this._isUserSpeaking = false
    this.sendCommand(ClientCommands.StopSpeaking)
    if (this.ws?.readyState === 1) this._isProcessing = true
    this.preRoll = []
    this.notify()
  }

  sendCommand(cmd) {
    if (this.ws?.readyState !== 1) return false
    this.ws.send(cmd)
    this.stats.commandsSent.push({ command: cmd, at: Date.now() - this.startTime })
    if (this.stats.commandsSent.length > 200) this.stats.commandsSent.shift()
    return true
  }

  sendAudio(pcm) {
    if (this.ws?.readyState !== 1 || pcm.length === 0) return
    this.ws.send(pcm.buffer)
    this.stats.audioFramesSent++
    this.stats.audioBytesSent += pcm.byteLength
  }

  // ---- socket ----

  openSocket() {
    const url = this.options.url
    let ws
    try {
      ws = new WebSocket(url)
    } catch (err) {
      this.stop()
      this.setError(new MicdropClientError(ErrorCode.Connection, `Invalid WebSocket URL: ${err?.message || url}`))
      return
    }
    ws.binaryType = 'arraybuffer'
    this.ws = ws
    this.stats.connections++
    clearTimeout(this.connectTimer)
    this.connectTimer = setTimeout(() => {
      if (ws.readyState === 0) ws.close()
    }, this.options.reconnect.connectionTimeout)
    ws.onopen = () => {
      if (this.ws !== ws) return
      clearTimeout(this.connectTimer)
      this.log('socket open')
      if (this.options.params) ws.send(JSON.stringify(this.options.params))
      if (this._isReconnecting) {
        this._isReconnecting = false
        this.reconnectAttempts = 0
        this.error = undefined
        this.resetVad()
      }
      this.notify()
    }
    ws.onmessage = (e) => {
      if (this.ws === ws) this.onSocketMessage(e.data)
    }
    ws.onclose = (e) => {
      if (this.ws !== ws) return
      clearTimeout(this.connectTimer)
      this.ws = null
      this.onSocketClose(e.code, e.reason)
    }
    ws.onerror = () => {
      // A close event always follows; the close code decides what happens.
      this.log('socket error')
    }
    this.notify()
  }

  closeSocket() {
    clearTimeout(this.connectTimer)
    const ws = this.ws
    this.ws = null
    if (ws && (ws.readyState === 0 || ws.readyState === 1)) ws.close(1000)
  }

  onSocketClose(code, reason) {
    this.log('socket closed', code, reason)
    if (!this._isStarted) return
    const error = errorFromCloseCode(code, reason)
    if (!error) {
      this.stop()
      return
    }
    const { maxAttempts, delayMs } = this.options.reconnect
    if (error.recoverable && this.reconnectAttempts < maxAttempts) {
      this.reconnectAttempts++
      this._isReconnecting = true
      this._isUserSpeaking = false
      this.resetVad()
      this.speaker.stop()
      this.partialAssistantMessage = undefined
      this.error = error
      this.notify()
      this.emit('Error', error)
      clearTimeout(this.reconnectTimer)
      this.reconnectTimer = setTimeout(() => {
        if (this._isStarted && this._isReconnecting) this.openSocket()
      }, delayMs)
      return
    }
    this.stop()
    if (error.recoverable) {
      this.setError(new MicdropClientError(ErrorCode.Connection, `Gave up reconnecting: ${error.message}`, { closeCode: code }))
    } else {
      this.setError(error)
    }
  }

  onSocketMessage(data) {
    if (data instanceof ArrayBuffer) {
      this.onAssistantAudio(data)
      return
    }
    if (typeof data !== 'string') return
    let frame
    try {
      frame = parseServerText(data)
    } catch (err) {
      console.warn('[micdrop] malformed server frame', data.slice(0, 200), err)
      return
    }
    if (!frame) return
    const C = ServerCommands
    switch (frame.command) {
      case C.Message: {
        const item = frame.payload
        if (!item || typeof item !== 'object') return
        this.conversation = [...this.conversation, item]
        if (item.role === 'assistant') this.partialAssistantMessage = undefined
        this.notify()
        this.emit('Message', item)
        break
      }
      case C.PartialAssistantMessage:
        if (typeof frame.payload !== 'string') return
        this.partialAssistantMessage = frame.payload
        this.notify()
        this.emit('PartialAssistantMessage', frame.payload)
        break
      case C.EndCall:
        this.emit('EndCall')
        break
      case C.SkipAnswer:
        this._isProcessing = false
        this.partialAssistantMessage = undefined
        this.notify()
        break
      case C.CancelLastUserMessage: {
        let idx = -1
        for (let i = this.conversation.length - 1; i >= 0; i--) {
          if (this.conversation[i].role === 'user') {
            idx = i
            break
          }
        }
        if (idx !== -1) {
          this.conversation = this.conversation.filter((_, i) => i !== idx)
          this._isProcessing = false
          this.notify()
        }
        break
      }
      case C.ToolCall:
        this.emit('ToolCall', frame.payload)
        break
      case C.Classification:
        this.emit('Classification', frame.payload)
        break
    }
  }

  onAssistantAudio(buffer) {
    this.stats.audioFramesReceived++
    // Barge-in: assistant audio is dropped while the user speaks or while paused.
    if (this._isPaused || this._isUserSpeaking || !this._isStarted) {
      this.stats.audioFramesDropped++
      return
    }
    const usable = buffer.byteLength - (buffer.byteLength % 2)
    if (usable === 0) return
    const samples = new Int16Array(buffer, 0, usable / 2)
    this.stats.audioSamplesPlayed += samples.length
    this.speaker.push(samples)
    if (this._isProcessing) {
      this._isProcessing = false
      this.notify()
    }
  }

  onSpeakerPlayingChange(playing) {
    if (playing) {
      this.startSpeakerMeter()
      if (this.options.disableInterruption) {
        clearTimeout(this.resumeVadTimer)
        this._vadHeld = true
        this.resetVad()
      }
    } else {
      this.stopSpeakerMeter()
      if (this._vadHeld) {
        clearTimeout(this.resumeVadTimer)
        this.resumeVadTimer = setTimeout(() => {
          this._vadHeld = false
          this.resetVad()
          this.notify()
        }, 200)
      }
    }
    this.notify()
  }

  startSpeakerMeter() {
    if (this.speakerMeterTimer) return
    this.speakerMeterTimer = setInterval(() => {
      const db = this.speaker.volume()
      if (db > this.stats.maxSpeakerVolume) this.stats.maxSpeakerVolume = db
    }, 50)
  }

  stopSpeakerMeter() {
    clearInterval(this.speakerMeterTimer)
    this.speakerMeterTimer = null
  }

  setError(error) {
    console.error('[micdrop]', error.code, error.message)
    this.error = error
    this.notify()
    this.emit('Error', error)
  }
}

function micErrorMessage(err) {
  const name = err?.name
  if (name === 'NotAllowedError' || name === 'SecurityError') return 'Microphone access was refused'
  if (name === 'NotFoundError' || name === 'OverconstrainedError') return 'No microphone found'
  if (name === 'NotReadableError') return 'The microphone is in use by another application'
  if (!globalThis.navigator?.mediaDevices) return 'Microphone access needs a secure page (https or localhost)'
  return err?.message || 'Microphone error'
}

/** A shared client instance, as Micdrop's `Micdrop` singleton. */
export const Micdrop = new MicdropClient()

export default MicdropClient
