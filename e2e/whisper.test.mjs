// End-to-end with real speech recognition: the demo page in headless Chromium, French spoken by
// espeak-ng as the fake microphone, against `micdrop serve --sim` without scripted transcripts, so
// that Whisper (in-process, the model `base` of the models cache) transcribes it. e2e/run starts
// that server and sets MICDROP_E2E_WHISPER_BASE; it fails beforehand when the model is missing
// (scripts/pull-models).
import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtempSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { launch } from './lib/browser.mjs'
import { makeSpeechWav } from './lib/wav.mjs'
import { openDemo, clientState, waitClient } from './lib/page.mjs'
import { TOKEN, WHISPER_PHRASE, WHISPER_WORDS, WHISPER_FIRST_MESSAGE } from './scenario.mjs'

const base = process.env.MICDROP_E2E_WHISPER_BASE
const skip = base ? false : 'MICDROP_E2E_WHISPER_BASE is not set: run e2e/run, which starts the Whisper server'

let browser
let wavInfo

/** Lowercase, without accents. */
const fold = (s) => s.toLowerCase().normalize('NFD').replace(/[\u0300-\u036f]/g, '')

before(async () => {
  if (skip) return
  const wav = join(mkdtempSync(join(tmpdir(), 'micdrop-e2e-whisper-')), 'speech-fr.wav')
  wavInfo = makeSpeechWav(WHISPER_PHRASE, wav, { voice: 'fr', speed: 130, leadMs: 2000, tailMs: 4000 })
  browser = await launch(wav)
})

after(async () => {
  await browser?.close()
})

test('French spoken into the microphone is transcribed by Whisper into the user message', { skip }, async () => {
  const { page, context } = await openDemo(browser, base, { token: TOKEN })
  try {
    await page.click('#start')
    await waitClient(page, (m, first) => m.conversation[0]?.content === first, { arg: WHISPER_FIRST_MESSAGE })
    // The phrase starts after the lead silence; Whisper transcribes each turn at its end (the
    // comma's pause may end a first turn): wait until the user messages hold the key words.
    const heardAll = (m, words) => {
      const fold = (s) => s.toLowerCase().normalize('NFD').replace(/[\u0300-\u036f]/g, '')
      const said = fold(m.conversation.filter((i) => i.role === 'user').map((i) => i.content).join(' '))
      return words.filter((w) => said.includes(w)).length >= 4
    }
    await waitClient(page, heardAll, { arg: WHISPER_WORDS, timeout: 2000 + wavInfo.speechMs + 60000 }).catch(async (e) => {
      const st = await clientState(page)
      throw new Error(`Whisper did not hear the phrase: user messages ${JSON.stringify(st.conversation.filter((i) => i.role === 'user'))} (${e.message})`)
    })
    const st = await clientState(page)
    const user = st.conversation.filter((i) => i.role === 'user').map((i) => i.content).join(' ')
    const heard = WHISPER_WORDS.filter((w) => fold(user).includes(w))
    assert.ok(heard.length >= 4, `Whisper heard ${JSON.stringify(user)}: key words ${JSON.stringify(heard)}`)
    // The page shows it, and the (simulated) model answers it.
    assert.equal(await page.locator('#conversation li[data-role="user"]').first().innerText(), st.conversation.find((i) => i.role === 'user').content)
    await waitClient(page, (m) => {
      const u = m.conversation.findIndex((i) => i.role === 'user')
      return u >= 0 && m.conversation.slice(u + 1).some((i) => i.role === 'assistant')
    })
    await page.click('#start')
    await waitClient(page, (m) => !m.isStarted && !m.isStarting)
  } finally {
    await context.close()
  }
})
