// Unit tests of micdrop.js's pure parts, in Node (no browser).
import { test } from 'node:test'
import assert from 'node:assert/strict'
import {
  VolumeVad,
  resampleLinear,
  floatToPcm16,
  pcm16ToFloat,
  errorFromCloseCode,
  parseServerText,
  dbToLevel,
  MicdropClient,
  ErrorCode,
} from '../crates/micdrop-server/assets/micdrop.js'

const LOUD = -30
const QUIET = -80

function run(vad, levels) {
  return levels.map((db) => vad.feed(db))
}

test('VAD: defaults are Micdrop’s (history 5, threshold -55 dB)', () => {
  const vad = new VolumeVad()
  assert.deepEqual(vad.options, { history: 5, threshold: -55 })
  assert.equal(vad.history.length, 5)
})

test('VAD: speech is attempted on the 2nd loud tick, confirmed on the 3rd, stopped after a full quiet history', () => {
  const vad = new VolumeVad()
  const events = run(vad, [QUIET, LOUD, LOUD, LOUD, LOUD, QUIET, QUIET, QUIET, QUIET, QUIET, QUIET, QUIET])
  assert.deepEqual(events, [
    null,
    null,
    'StartSpeaking',
    'ConfirmSpeaking',
    null,
    null, // history still holds loud ticks
    null,
    null,
    null,
    null,
    'StopSpeaking', // 5 quiet ticks in history, then a 6th quiet tick
    null,
  ])
  assert.equal(vad.status, 'silence')
})

test('VAD: a single blip is attempted then cancelled, never confirmed', () => {
  const vad = new VolumeVad()
  const events = run(vad, [LOUD, LOUD, QUIET, QUIET, QUIET])
  assert.deepEqual(events, [null, 'StartSpeaking', null, 'CancelSpeaking', null])
  assert.equal(vad.status, 'silence')
})

test('VAD: short pauses inside speech do not stop it', () => {
  const vad = new VolumeVad()
  const events = run(vad, [LOUD, LOUD, LOUD, QUIET, QUIET, LOUD, QUIET, QUIET, QUIET, LOUD])
  assert.ok(events.includes('ConfirmSpeaking'))
  assert.ok(!events.includes('StopSpeaking'))
  assert.equal(vad.status, 'speaking')
})

test('VAD: the threshold is tunable and history must be at least 3', () => {
  const vad = new VolumeVad({ threshold: -20 })
  assert.deepEqual(run(vad, [LOUD, LOUD, LOUD, LOUD]), [null, null, null, null])
  vad.setOptions({ threshold: -40 })
  assert.ok(run(vad, [LOUD, LOUD, LOUD]).includes('ConfirmSpeaking'))
  assert.throws(() => vad.setOptions({ history: 2 }), /at least 3/)
  vad.setOptions({ history: 8 })
  assert.equal(vad.history.length, 8)
})

test('VAD: reset forgets speech', () => {
  const vad = new VolumeVad()
  run(vad, [LOUD, LOUD, LOUD])
  assert.equal(vad.status, 'speaking')
  vad.reset()
  assert.equal(vad.status, 'silence')
  assert.deepEqual(vad.history, [0, 0, 0, 0, 0])
})

test('resampling: 100 ms at usual rates gives 1600 samples at 16 kHz', () => {
  for (const rate of [8000, 16000, 22050, 44100, 48000, 96000]) {
    const input = new Float32Array(rate / 10)
    assert.equal(resampleLinear(input, rate, 16000).length, 1600, `rate ${rate}`)
  }
})

test('resampling: a tone keeps its frequency and amplitude', () => {
  const rate = 48000
  const input = new Float32Array(4800)
  for (let i = 0; i < input.length; i++) input[i] = 0.5 * Math.sin((2 * Math.PI * 440 * i) / rate)
  const out = resampleLinear(input, rate, 16000)
  for (let i = 0; i < out.length; i += 97) {
    const expected = 0.5 * Math.sin((2 * Math.PI * 440 * i) / 16000)
    assert.ok(Math.abs(out[i] - expected) < 0.01, `sample ${i}: ${out[i]} vs ${expected}`)
  }
})

test('PCM16: clamped, ×0x8000 for negatives and ×0x7fff for positives, little-endian on the wire', () => {
  const pcm = floatToPcm16(new Float32Array([0, 1, -1, 0.5, -0.5, 2, -2, NaN]))
  assert.deepEqual([...pcm], [0, 32767, -32768, 16383, -16384, 32767, -32768, 0])
  const bytes = new Uint8Array(pcm.buffer)
  assert.deepEqual([...bytes.slice(2, 6)], [0xff, 0x7f, 0x00, 0x80])
  const back = pcm16ToFloat(new Int16Array([-32768, 16384]))
  assert.deepEqual([...back], [-1, 0.5])
})

test('close codes map as Micdrop’s client (§A.8)', () => {
  const cases = [
    [1011, ErrorCode.InternalServer, true],
    [1006, ErrorCode.Connection, true],
    [1001, ErrorCode.Connection, true],
    [1009, ErrorCode.Connection, true],
    [4401, ErrorCode.Unauthorized, false],
    [4404, ErrorCode.NotFound, false],
    [4400, ErrorCode.BadRequest, false],
    [4500, ErrorCode.Unknown, true],
  ]
  for (const [code, expected, recoverable] of cases) {
    const err = errorFromCloseCode(code, '')
    assert.equal(err?.code, expected, `code ${code}`)
    assert.equal(err.recoverable, recoverable, `code ${code} recoverable`)
    assert.equal(err.closeCode, code)
  }
  for (const code of [1000, 1005, 1012, 3000, 3999]) assert.equal(errorFromCloseCode(code), null, `code ${code}`)
  assert.equal(errorFromCloseCode(4401, 'Bad token').message, 'Bad token')
})

test('server text frames parse as Micdrop’s client does', () => {
  assert.deepEqual(parseServerText('Message {"role":"user","content":"Hi"}'), {
    command: 'Message',
    payload: { role: 'user', content: 'Hi' },
  })
  assert.deepEqual(parseServerText('PartialAssistantMessage "Hello th"'), {
    command: 'PartialAssistantMessage',
    payload: 'Hello th',
  })
  assert.deepEqual(parseServerText('SkipAnswer'), { command: 'SkipAnswer' })
  assert.deepEqual(parseServerText('EndCall'), { command: 'EndCall' })
  assert.deepEqual(parseServerText('CancelLastUserMessage'), { command: 'CancelLastUserMessage' })
  assert.deepEqual(parseServerText('ToolCall {"name":"t","parameters":{},"output":1}'), {
    command: 'ToolCall',
    payload: { name: 't', parameters: {}, output: 1 },
  })
  assert.equal(parseServerText('SkipAnswerX'), null, 'exact commands are compared exactly')
  assert.equal(parseServerText('Hello'), null)
  assert.throws(() => parseServerText('Message {oops'))
})

test('dbToLevel maps dB to a 0..1 meter', () => {
  assert.equal(dbToLevel(-Infinity), 0)
  assert.equal(dbToLevel(-100), 0)
  assert.equal(dbToLevel(-20), 1)
  assert.equal(dbToLevel(-60), 0.5)
  assert.equal(dbToLevel(0), 1)
})

// A fake socket to drive the client's frame handling without a browser.
function clientWithFakeSocket() {
  const client = new MicdropClient({ url: 'ws://x' })
  const sent = []
  client.ws = { readyState: 1, send: (d) => sent.push(d), close() {} }
  client._isStarted = true
  client.micStream = {}
  client._isProcessing = true
  return { client, sent }
}

test('client: Message, PartialAssistantMessage, SkipAnswer and CancelLastUserMessage update the state', () => {
  const { client } = clientWithFakeSocket()
  const changes = []
  const messages = []
  client.on('StateChange', (s) => changes.push(s))
  client.on('Message', (m) => messages.push(m))
  client.onSocketMessage('Message {"role":"assistant","content":"Hello"}')
  client.onSocketMessage('Message {"role":"user","content":"Hi there"}')
  client.onSocketMessage('PartialAssistantMessage "How"')
  assert.equal(client.state.partialAssistantMessage, 'How')
  assert.equal(client.isProcessing, true)
  client.onSocketMessage('CancelLastUserMessage')
  assert.deepEqual(client.conversation, [{ role: 'assistant', content: 'Hello' }])
  assert.equal(client.isProcessing, false)
  client._isProcessing = true
  client.onSocketMessage('PartialAssistantMessage "How are"')
  client.onSocketMessage('SkipAnswer')
  assert.equal(client.isProcessing, false)
  assert.equal(client.partialAssistantMessage, undefined)
  assert.equal(messages.length, 2)
  assert.ok(changes.length >= 4)
  // Malformed frames are ignored, never thrown.
  client.onSocketMessage('Message {broken')
  client.onSocketMessage('Unknown thing')
  assert.equal(client.conversation.length, 1)
})

test('client: an assistant Message clears the partial message; EndCall and ToolCall are emitted', () => {
  const { client } = clientWithFakeSocket()
  let ended = 0
  const tools = []
  client.on('EndCall', () => ended++)
  client.on('ToolCall', (t) => tools.push(t))
  client.onSocketMessage('PartialAssistantMessage "Hel"')
  client.onSocketMessage('Message {"role":"assistant","content":"Hello"}')
  assert.equal(client.partialAssistantMessage, undefined)
  client.onSocketMessage('ToolCall {"name":"book","parameters":{"n":2},"output":"ok"}')
  client.onSocketMessage('EndCall')
  assert.equal(ended, 1)
  assert.deepEqual(tools, [{ name: 'book', parameters: { n: 2 }, output: 'ok' }])
  assert.equal(client.isStarted, true, 'EndCall does not close anything by itself')
})

test('client: assistant audio is dropped while the user speaks or while paused', () => {
  const { client, sent } = clientWithFakeSocket()
  client._isUserSpeaking = true
  client.onAssistantAudio(new ArrayBuffer(3200))
  assert.equal(client.stats.audioFramesDropped, 1)
  client._isUserSpeaking = false
  client.pause()
  assert.deepEqual(sent, ['Mute'], 'pause() sends Mute')
  client.onAssistantAudio(new ArrayBuffer(3200))
  assert.equal(client.stats.audioFramesDropped, 2)
  assert.equal(client.isProcessing, false)
})

test('client: mute() sends nothing, and ends a turn in progress with StopSpeaking', () => {
  const { client, sent } = clientWithFakeSocket()
  client.mute()
  assert.deepEqual(sent, [])
  assert.equal(client.isMuted, true)
  client.unmute()
  client._isUserSpeaking = true
  client.mute()
  assert.deepEqual(sent, ['StopSpeaking'])
})

test('client: start() without a URL fails with MissingUrl', async () => {
  const client = new MicdropClient()
  const errors = []
  client.on('Error', (e) => errors.push(e.code))
  await assert.rejects(client.start(), (e) => e.code === ErrorCode.MissingUrl)
  assert.deepEqual(errors, ['MissingUrl'])
  assert.equal(client.isStarting, false)
})

test('client: disableInterruption holds the VAD while the assistant speaks, and resumes 200 ms after', async () => {
  const { client } = clientWithFakeSocket()
  client.options.disableInterruption = true
  assert.equal(client.vadActive, true)
  client.onSpeakerPlayingChange(true)
  assert.equal(client.vadActive, false, 'no VAD while the assistant speaks')
  client.onSpeakerPlayingChange(false)
  assert.equal(client.vadActive, false, 'still held right after playback')
  await new Promise((r) => setTimeout(r, 260))
  assert.equal(client.vadActive, true, 'listening again 200 ms after playback')
  client.options.disableInterruption = false
  client.onSpeakerPlayingChange(true)
  assert.equal(client.vadActive, true, 'interruptions allowed: the VAD keeps running')
  client.stopSpeakerMeter()
})
