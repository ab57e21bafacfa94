// End-to-end: the demo page in headless Chromium, an espeak-ng phrase as the microphone, against
// `micdrop serve --sim` (started by e2e/run, which sets MICDROP_E2E_BASE). Without that variable
// the tests run against the stand-in server, which is only useful while developing the client.
import { test, before, after, describe } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtempSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { launch } from './lib/browser.mjs'
import { makeSpeechWav } from './lib/wav.mjs'
import { openDemo, clientState, waitClient, recordStates } from './lib/page.mjs'
import { TOKEN, FIRST_MESSAGE, TRANSCRIPTS, FIRST_REPLY, SPOKEN_PHRASE, LEAD_MS, TAIL_MS } from './scenario.mjs'

let browser
let base = process.env.MICDROP_E2E_BASE
let standin
let wavInfo

before(async () => {
  const wav = join(mkdtempSync(join(tmpdir(), 'micdrop-e2e-')), 'speech.wav')
  wavInfo = makeSpeechWav(SPOKEN_PHRASE, wav, { leadMs: LEAD_MS, tailMs: TAIL_MS })
  if (!base) {
    const { startStandin } = await import('./standin-server.mjs')
    standin = await startStandin({
      tokens: [TOKEN],
      firstMessage: FIRST_MESSAGE,
      transcripts: TRANSCRIPTS,
      answer: (i, text) => (i === 0 ? FIRST_REPLY : `You said: ${text}`),
    })
    base = standin.url
    console.log(`# MICDROP_E2E_BASE not set: running against the stand-in server at ${base}`)
  }
  browser = await launch(wav)
})

after(async () => {
  await browser?.close()
  await standin?.close()
})

const sent = (frames) => frames.filter((f) => f.dir === 'sent')

describe('a call from the demo page', () => {
  let page
  let frames
  let sockets
  let context

  before(async () => {
    ;({ page, frames, sockets, context } = await openDemo(browser, base, { token: TOKEN }))
    await recordStates(page)
    await page.click('#start')
  })

  after(() => context?.close())

  test('the page connects to the same origin’s /call and sends the token as params', async () => {
    await waitClient(page, (m) => m.isStarted)
    const expected = `${base.replace(/^http/, 'ws')}/call`
    assert.equal(sockets[0], expected)
    const first = sent(frames)[0]
    assert.equal(first?.text, JSON.stringify({ authorization: `Bearer ${TOKEN}` }))
  })

  test('the first message is shown and its audio reaches the output', async () => {
    await waitClient(page, (m, first) => m.conversation[0]?.content === first, { arg: FIRST_MESSAGE })
    const st = await clientState(page)
    assert.equal(st.conversation[0].role, 'assistant')
    await page.waitForSelector(`#conversation li[data-role="assistant"]`)
    assert.equal(await page.locator('#conversation li').first().innerText(), FIRST_MESSAGE)
    // Audio frames arrived, were scheduled, and the speaker analyser measured a real level.
    await waitClient(page, (m) => m.stats.audioSamplesPlayed > 1600 && m.stats.maxSpeakerVolume > -60)
    const states = await page.evaluate(() => window.__states)
    assert.ok(
      states.some((s) => s.assistant && s.items >= 1),
      'isAssistantSpeaking was true while the first message played',
    )
  })

  test('the user’s speech produces StartSpeaking, 100 ms PCM frames, then StopSpeaking', async () => {
    await waitClient(page, (m) => m.stats.commandsSent.some((c) => c.command === 'StopSpeaking'), {
      timeout: LEAD_MS + wavInfo.speechMs + 5000,
    })
    const out = sent(frames).filter((f) => f.socket === 0)
    const start = out.findIndex((f) => f.text === 'StartSpeaking')
    const stop = out.findIndex((f) => f.text === 'StopSpeaking')
    assert.ok(start > 0 && stop > start, `StartSpeaking (${start}) before StopSpeaking (${stop})`)
    assert.ok(
      out.slice(0, start).every((f) => f.text !== undefined),
      'no audio is sent before StartSpeaking',
    )
    const audio = out.slice(start + 1, stop)
    assert.ok(audio.every((f) => f.bytes === 3200), 'every audio frame is 100 ms of PCM16 at 16 kHz (3200 bytes)')
    // The whole phrase is sent (with the pre-roll and the silence that ends the turn).
    const sentMs = audio.length * 100
    assert.ok(sentMs >= wavInfo.speechMs, `sent ${sentMs} ms of audio for ${wavInfo.speechMs} ms of speech`)
    assert.ok(sentMs <= wavInfo.speechMs + 2000, `sent ${sentMs} ms: the turn ended soon after the speech`)
    // StartSpeaking came about when the phrase starts in the WAV (after its leading silence).
    const startT = out[start].t - out[0].t
    assert.ok(startT >= LEAD_MS - 1500, `StartSpeaking at ${startT} ms`)
  })

  test('the scripted transcript and the answer appear in the conversation', async () => {
    await waitClient(
      page,
      (m, text) => m.conversation.some((i) => i.role === 'user' && i.content === text),
      { arg: TRANSCRIPTS[0] },
    )
    await waitClient(page, (m) => {
      const u = m.conversation.findIndex((i) => i.role === 'user')
      return u >= 0 && m.conversation.slice(u + 1).some((i) => i.role === 'assistant')
    })
    const st = await clientState(page)
    const u = st.conversation.findIndex((i) => i.role === 'user')
    const answer = st.conversation.slice(u + 1).find((i) => i.role === 'assistant')
    assert.equal(answer.content.trim(), FIRST_REPLY)
    assert.equal(await page.locator('#conversation li[data-role="user"]').first().innerText(), TRANSCRIPTS[0])
    await page.waitForFunction(
      (reply) => [...document.querySelectorAll('#conversation li[data-role="assistant"]')].some((li) => li.innerText.trim() === reply),
      FIRST_REPLY,
    )
    // The answer was shown as it was being written (partial messages), then settled.
    const states = await page.evaluate(() => window.__states)
    const partials = states.filter((s) => s.items === u + 1 && s.partialShown).map((s) => s.partialShown)
    assert.ok(partials.length >= 2, `the partial answer grew on the page: ${JSON.stringify(partials)}`)
    for (const p of partials) assert.ok(FIRST_REPLY.startsWith(p.trim()), `partial ${JSON.stringify(p)} is a prefix of the answer`)
    assert.equal(await page.locator('#partial').isHidden(), true, 'the partial answer is gone once settled')
  })

  test('the answer audio plays', async () => {
    await waitClient(page, () => window.__states.some((s) => s.assistant && s.items >= 2), { timeout: 10000 })
    const st = await clientState(page)
    assert.ok(st.stats.maxSpeakerVolume > -60, `speaker level ${st.stats.maxSpeakerVolume} dB`)
  })

  test('speaking during the answer stops playback at once (barge-in)', async () => {
    // The fake microphone loops: its next phrase starts while the long answer is still playing.
    await waitClient(page, (m) => m.stats.commandsSent.filter((c) => c.command === 'StartSpeaking').length >= 2, {
      timeout: LEAD_MS + TAIL_MS + wavInfo.speechMs + 8000,
    })
    const states = await page.evaluate(() => window.__states)
    const i = states.findIndex((s, k) => k > 0 && s.user && !states[k - 1].user && states[k - 1].assistant && s.items >= 3)
    assert.ok(i > 0, `a user turn started while the answer played: ${JSON.stringify(states.slice(-12))}`)
    assert.equal(states[i].assistant, false, 'isAssistantSpeaking drops in the same state change as StartSpeaking')
    const st = await clientState(page)
    assert.ok(st.stats.interruptions >= 1)
    // While the user speaks, nothing plays (assistant audio is dropped until StopSpeaking).
    await page.waitForTimeout(500)
    const after = (await page.evaluate(() => window.__states)).slice(i)
    const end = after.findIndex((s) => !s.user)
    const during = end === -1 ? after : after.slice(0, end)
    assert.ok(during.length > 0)
    assert.ok(
      during.every((s) => !s.assistant),
      `no playback while the user speaks: ${JSON.stringify(during)}`,
    )
  })

  test('stop ends the call cleanly', async () => {
    await page.click('#start')
    await waitClient(page, (m) => !m.isStarted && !m.isStarting)
    const st = await clientState(page)
    assert.equal(st.error, null)
    assert.equal(st.isMicStarted, false)
    assert.equal(await page.getAttribute('#status', 'data-state'), 'idle')
  })
})

test('a wrong token shows the unauthorized error and does not retry', async () => {
  const { page, sockets, context } = await openDemo(browser, base, { token: 'wrong-token' })
  await page.click('#start')
  await page.waitForSelector('#error[data-code="Unauthorized"]', { state: 'visible', timeout: 10000 })
  assert.match(await page.locator('#error').innerText(), /Unauthorized[\s\S]*refused the token/)
  await page.waitForTimeout(2500)
  assert.equal(sockets.length, 1, 'no reconnection after 4401')
  const st = await clientState(page)
  assert.equal(st.isReconnecting, false)
  assert.equal(st.isStarted, false)
  assert.equal(await page.getAttribute('#status', 'data-state'), 'error')
  await context.close()
})

test('the page fits a phone screen (no horizontal scrolling)', async () => {
  const { page, context } = await openDemo(browser, base, {}, { viewport: { width: 360, height: 740 } })
  await page.click('#settings summary')
  const { scroll, client } = await page.evaluate(() => ({
    scroll: document.documentElement.scrollWidth,
    client: document.documentElement.clientWidth,
  }))
  assert.ok(scroll <= client, `scrollWidth ${scroll} <= ${client}`)
  const box = await page.locator('#start').boundingBox()
  assert.ok(box.height >= 44, 'the main button is large enough to tap')
  await context.close()
})

describe('the demo page and ?url=', () => {
  test('a ?url= of another host is ignored: the page keeps its own server and says so', async () => {
    const { page, context, sockets } = await openDemo(browser, base, { url: 'ws://127.0.0.2:9/call' })
    try {
      assert.equal(await page.inputValue('#url'), `${base.replace(/^http/, 'ws')}/call`)
      await page.waitForSelector('#error:not([hidden])')
      assert.match(await page.locator('#error').innerText(), /Server address ignored/)
      assert.equal(sockets.length, 0)
    } finally {
      await context.close()
    }
  })

  test('a ?url= of the same host is used', async () => {
    const own = `${base.replace(/^http/, 'ws')}/call?x=1`
    const { page, context } = await openDemo(browser, base, { url: own })
    try {
      assert.equal(await page.inputValue('#url'), own)
    } finally {
      await context.close()
    }
  })
})

