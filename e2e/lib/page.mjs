// Opens the demo page and records every WebSocket frame the page sends and receives.

/**
 * Opens `${base}/` with the given query parameters in a new context. Returns
 * `{ page, context, frames, sockets }`: `frames` holds `{ dir, t, text }` or `{ dir, t, bytes }`
 * for each frame (`dir` is `sent` or `received`), `sockets` the URLs of the sockets opened.
 */
export async function openDemo(browser, base, query = {}, { viewport } = {}) {
  const context = await browser.newContext(viewport ? { viewport } : {})
  const page = await context.newPage()
  const frames = []
  const sockets = []
  const t0 = Date.now()
  const errors = []
  page.on('pageerror', (e) => errors.push(String(e)))
  page.on('websocket', (ws) => {
    const socket = sockets.length
    sockets.push(ws.url())
    const rec = (dir) => (f) => {
      const entry = { dir, socket, t: Date.now() - t0 }
      if (typeof f.payload === 'string') entry.text = f.payload
      else entry.bytes = f.payload.length
      frames.push(entry)
    }
    ws.on('framesent', rec('sent'))
    ws.on('framereceived', rec('received'))
  })
  const qs = new URLSearchParams(query).toString()
  await page.goto(`${base}/${qs ? `?${qs}` : ''}`)
  await page.waitForFunction(() => !!window.micdrop, null, { timeout: 10000 }).catch(() => {
    throw new Error(`the demo page at ${base}/ did not load (no window.micdrop); page errors: ${errors.join('; ')}`)
  })
  return { page, context, frames, sockets, errors }
}

/** The client's state, without device lists. */
export function clientState(page) {
  return page.evaluate(() => {
    const s = window.micdrop.state
    return {
      ...s,
      micDevices: undefined,
      speakerDevices: undefined,
      error: s.error ? { code: s.error.code, message: s.error.message } : null,
      stats: window.micdrop.stats,
    }
  })
}

/** Waits until `fn(micdrop)` (run in the page) is truthy. */
export function waitClient(page, fn, { timeout = 15000, arg } = {}) {
  return page.waitForFunction(
    ([src, a]) => {
      // eslint-disable-next-line no-new-func
      const f = new Function('micdrop', 'arg', `return (${src})(micdrop, arg)`)
      return f(window.micdrop, a)
    },
    [fn.toString(), arg],
    { timeout, polling: 50 },
  )
}

/** Records every StateChange of the client in `window.__states` (compact flags). */
export async function recordStates(page) {
  await page.evaluate(() => {
    window.__states = []
    const t0 = performance.now()
    window.micdrop.on('StateChange', (s) => {
      window.__states.push({
        t: Math.round(performance.now() - t0),
        user: s.isUserSpeaking,
        assistant: s.isAssistantSpeaking,
        processing: s.isProcessing,
        items: s.conversation.length,
        partial: s.partialAssistantMessage,
        // The demo renders before this listener runs: what the page shows of the partial answer.
        partialShown: document.getElementById('partial')?.hidden === false ? document.getElementById('partial').textContent : null,
      })
    })
  })
}
