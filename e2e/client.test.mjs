// Client-only browser tests of micdrop.js against the stand-in server (e2e/standin-server.mjs):
// close codes, reconnection, params, pause/mute, microphone refusal. The stand-in lets each test
// script the server's misbehaviour exactly, which the real server cannot be asked to do.
import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { writeFileSync, mkdtempSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { startStandin } from './standin-server.mjs'
import { launch } from './lib/browser.mjs'
import { encodeWav } from './lib/wav.mjs'
import { openDemo, clientState, waitClient } from './lib/page.mjs'

let browser
const servers = []

before(async () => {
  // A silent microphone: the VAD never fires, so only the server's behaviour matters here.
  const wav = join(mkdtempSync(join(tmpdir(), 'micdrop-e2e-')), 'silence.wav')
  writeFileSync(wav, encodeWav(16000, new Int16Array(16000)))
  browser = await launch(wav)
})

after(async () => {
  await browser?.close()
  for (const s of servers) await s.close()
})

async function standin(opts) {
  const s = await startStandin(opts)
  servers.push(s)
  return s
}

const sentTexts = (frames, socket) =>
  frames.filter((f) => f.dir === 'sent' && f.text !== undefined && (socket === undefined || f.socket === socket)).map((f) => f.text)

test('params are the first frame and are re-sent on reconnection after 1011', async () => {
  const s = await standin({
    tokens: ['t0k'],
    firstMessage: 'Hi.',
    onConnection: (ws, call) => {
      if (call.id !== 1) return true
      ws.once('message', () => setTimeout(() => ws.close(1011, 'boom'), 100))
      return false
    },
  })
  const { page, frames, sockets, context } = await openDemo(browser, s.url, { url: s.wsUrl, token: 't0k' })
  await page.click('#start')
  await waitClient(page, (m) => m.isReconnecting && m.error?.code === 'InternalServer')
  await page.waitForSelector('#status[data-state="reconnecting"]')
  const t = Date.now()
  await waitClient(page, (m) => m.isStarted && !m.isReconnecting && !m.error)
  const waited = Date.now() - t
  assert.ok(waited > 500 && waited < 2500, `reconnected after ~1 s (waited ${waited} ms)`)
  await waitClient(page, (m) => m.conversation.some((i) => i.content === 'Hi.'))
  assert.equal(sockets.length, 2)
  for (const socket of [0, 1]) {
    const first = frames.find((f) => f.dir === 'sent' && f.socket === socket)
    assert.equal(first?.text, '{"authorization":"Bearer t0k"}', `socket ${socket} starts with the params`)
  }
  assert.equal(await page.locator('#error').isHidden(), true, 'the error is cleared once reconnected')
  await context.close()
})

for (const [code, expected, words] of [
  [4400, 'BadRequest', 'rejected the call'],
  [4404, 'NotFound', 'no call here'],
  [4401, 'Unauthorized', 'refused the token'],
]) {
  test(`close ${code} → ${expected} error, shown in plain words, no retry`, async () => {
    const s = await standin({
      onConnection: (ws) => {
        setTimeout(() => ws.close(code, 'nope'), 100)
        return false
      },
    })
    const { page, sockets, context } = await openDemo(browser, s.url, { url: s.wsUrl })
    await page.click('#start')
    await page.waitForSelector(`#error[data-code="${expected}"]`, { state: 'visible' })
    assert.match(await page.locator('#error').innerText(), new RegExp(words))
    await page.waitForTimeout(2500)
    const st = await clientState(page)
    assert.equal(sockets.length, 1, 'no reconnection attempt')
    assert.equal(st.isStarted, false)
    assert.equal(st.isReconnecting, false)
    assert.equal(st.isMicStarted, false, 'the microphone is released')
    assert.equal(await page.getAttribute('#status', 'data-state'), 'error')
    assert.equal(await page.innerText('#start'), 'Start call')
    await context.close()
  })
}

test('close 1000 ends the call without an error and without retry', async () => {
  const s = await standin({
    onConnection: (ws) => {
      setTimeout(() => ws.close(1000), 200)
      return false
    },
  })
  const { page, sockets, context } = await openDemo(browser, s.url, { url: s.wsUrl })
  await page.click('#start')
  await waitClient(page, (m) => m.stats.connections === 1 && !m.isStarted && !m.isStarting)
  await page.waitForTimeout(1500)
  const st = await clientState(page)
  assert.equal(st.error, null)
  assert.equal(sockets.length, 1)
  assert.equal(await page.getAttribute('#status', 'data-state'), 'idle')
  await context.close()
})

test('an unknown 4xxx code is recoverable: the client retries every second', async () => {
  const s = await standin({
    onConnection: (ws) => {
      setTimeout(() => ws.close(4500, 'weird'), 50)
      return false
    },
  })
  const { page, sockets, context } = await openDemo(browser, s.url, { url: s.wsUrl })
  await page.click('#start')
  await waitClient(page, (m) => m.error?.code === 'Unknown' && m.isReconnecting)
  await page.waitForTimeout(2600)
  assert.ok(sockets.length >= 3 && sockets.length <= 4, `retried about once a second (${sockets.length} sockets)`)
  await page.click('#start') // Stop call
  const n = sockets.length
  await page.waitForTimeout(1300)
  assert.equal(sockets.length, n, 'stop() cancels the retries')
  assert.equal((await clientState(page)).isReconnecting, false)
  await context.close()
})

test('server unreachable → Connection error in plain words, retried every second', async () => {
  const s = await standin({})
  const deadUrl = s.wsUrl.replace(`:${s.port}`, ':9') // port 9 (discard): connection refused
  const { page, sockets, context } = await openDemo(browser, s.url, { url: deadUrl })
  await page.click('#start')
  await page.waitForSelector('#error[data-code="Connection"]', { state: 'visible' })
  assert.match(await page.locator('#error').innerText(), /Cannot reach .*Retrying/)
  assert.equal(await page.getAttribute('#status', 'data-state'), 'reconnecting')
  await page.waitForTimeout(2600)
  assert.ok(sockets.length >= 3, `several attempts (${sockets.length})`)
  await context.close()
})

test('pause() sends Mute and stops playback; resume() listens again; mute() sends nothing', async () => {
  const s = await standin({ firstMessage: 'Hello there, this is a rather long first message to keep the speaker busy for a while.' })
  const { page, frames, context } = await openDemo(browser, s.url, { url: s.wsUrl })
  await page.click('#start')
  await waitClient(page, (m) => m.isAssistantSpeaking)
  await page.click('#pause')
  let st = await clientState(page)
  assert.equal(st.isPaused, true)
  assert.equal(st.isAssistantSpeaking, false, 'playback stops at once')
  assert.equal(await page.getAttribute('#status', 'data-state'), 'paused')
  await page.waitForTimeout(300)
  assert.deepEqual(sentTexts(frames).slice(-1), ['Mute'])
  await page.click('#pause') // Resume
  st = await clientState(page)
  assert.equal(st.isPaused, false)
  const before = sentTexts(frames).length
  await page.click('#mute')
  await page.waitForTimeout(300)
  st = await clientState(page)
  assert.equal(st.isMuted, true)
  assert.equal(sentTexts(frames).length, before, 'mute() is local')
  assert.equal(await page.innerText('#mute'), 'Unmute')
  await context.close()
})

test('a refused microphone shows the Mic error in plain words', async () => {
  const s = await standin({})
  const context = await browser.newContext()
  await context.addInitScript(() => {
    navigator.mediaDevices.getUserMedia = () => Promise.reject(new DOMException('Permission denied', 'NotAllowedError'))
  })
  const page = await context.newPage()
  await page.goto(`${s.url}/?url=${encodeURIComponent(s.wsUrl)}`)
  await page.click('#start')
  await page.waitForSelector('#error[data-code="Mic"]', { state: 'visible' })
  assert.match(await page.locator('#error').innerText(), /refused access to the microphone/)
  const st = await page.evaluate(() => ({ started: window.micdrop.isStarted, conns: window.micdrop.stats.connections }))
  assert.deepEqual(st, { started: false, conns: 0 }, 'no socket is opened without a microphone')
  await context.close()
})

test('microphone and speaker pickers list the devices and switch them during a call', async () => {
  const s = await standin({ firstMessage: null })
  const { page, sockets, context } = await openDemo(browser, s.url, { url: s.wsUrl })
  await page.click('#start')
  await waitClient(page, (m) => m.isStarted && m.micDevices.length > 0)
  await page.click('#settings summary')
  const mics = await page.$$eval('#mic-select option', (os) => os.map((o) => ({ value: o.value, label: o.textContent })))
  const speakers = await page.$$eval('#speaker-select option', (os) => os.map((o) => ({ value: o.value, label: o.textContent })))
  assert.equal(mics[0].value, '', 'the first choice is the system default')
  assert.ok(mics.length >= 3, `Chromium's fake microphones are listed: ${JSON.stringify(mics)}`)
  assert.ok(!mics.some((o) => o.value === 'default'), 'no duplicate "default" entry')
  assert.ok(speakers.length >= 3, `speakers are listed: ${JSON.stringify(speakers)}`)
  await page.selectOption('#mic-select', mics[2].value)
  // The new microphone is captured (the switch is asynchronous: wait for the new track).
  await waitClient(
    page,
    (m, id) => m.micDeviceId === id && m.micStream?.getAudioTracks()[0]?.getSettings().deviceId === id,
    { arg: mics[2].value, timeout: 5000 },
  )
  assert.equal((await clientState(page)).isMicStarted, true)
  await page.selectOption('#speaker-select', speakers[1].value)
  await waitClient(page, (m, id) => m.speakerDeviceId === id, { arg: speakers[1].value })
  assert.equal(await page.evaluate(() => window.micdrop.ctx.sinkId), speakers[1].value, 'playback goes to the chosen speaker')
  const st = await clientState(page)
  assert.equal(st.isStarted, true, 'the call goes on')
  assert.equal(st.error, null)
  assert.equal(sockets.length, 1)
  const stored = await page.evaluate(() => [localStorage.getItem('micdrop.micDeviceId'), localStorage.getItem('micdrop.speakerDeviceId')])
  assert.deepEqual(stored, [mics[2].value, speakers[1].value], 'the choices are remembered')
  await context.close()
})
