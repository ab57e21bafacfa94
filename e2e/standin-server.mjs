// A small stand-in for `micdrop serve` that speaks Micdrop's wire protocol exactly. It serves the
// page's assets and a `/call` WebSocket, and can be told to misbehave (close codes, drops), which
// the client-only tests use to check reconnection and error mapping without the real server.
//
//   node standin-server.mjs [--port 0] [--token secret] [--first "Hello"] [--transcript "…"]…
//
// Or from a test: `const s = await startStandin({ ... }); s.url; s.events; await s.close()`.
import { createServer } from 'node:http'
import { readFile } from 'node:fs/promises'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { WebSocketServer } from 'ws'

const here = dirname(fileURLToPath(import.meta.url))
const assetsDir = join(here, '..', 'crates', 'micdrop-server', 'assets')
const ASSETS = {
  '/': ['index.html', 'text/html; charset=utf-8'],
  '/index.html': ['index.html', 'text/html; charset=utf-8'],
  '/micdrop.js': ['micdrop.js', 'text/javascript; charset=utf-8'],
  '/demo.js': ['demo.js', 'text/javascript; charset=utf-8'],
  '/demo.css': ['demo.css', 'text/css; charset=utf-8'],
}

/** PCM16 16 kHz of a tone: `ms` milliseconds, as one Buffer. */
export function tone(ms, freq = 440, amplitude = 0.3) {
  const n = Math.round((ms / 1000) * 16000)
  const buf = Buffer.alloc(n * 2)
  for (let i = 0; i < n; i++) {
    buf.writeInt16LE(Math.round(Math.sin((2 * Math.PI * freq * i) / 16000) * amplitude * 0x7fff), i * 2)
  }
  return buf
}

/**
 * Starts the stand-in. Options:
 * - `tokens`: accepted bearer tokens (empty: no auth, params optional);
 * - `firstMessage`: spoken at call start (else `SkipAnswer`);
 * - `transcripts`: what the "STT" hears, turn by turn (then `answer(i)` answers);
 * - `msPerChar`: audio length of an answer per character (default 60 ms);
 * - `onConnection(ws, call)`: hook to script the socket (e.g. close it with a code).
 */
export async function startStandin(opts = {}) {
  const {
    tokens = [],
    firstMessage = 'Hello, how can I help you?',
    transcripts = ['I would like a table for two.'],
    answer = (i, text) => `You said: ${text} Let me check that for you, one moment please.`,
    msPerChar = 60,
    onConnection,
    port = 0,
  } = opts
  const events = []
  const log = (e) => events.push({ ...e, t: Date.now() })

  const http = createServer(async (req, res) => {
    const path = new URL(req.url, 'http://x').pathname
    if (path === '/healthz') {
      res.writeHead(200).end('ok')
      return
    }
    const asset = ASSETS[path]
    if (!asset) {
      res.writeHead(404).end('not found')
      return
    }
    try {
      const body = await readFile(join(assetsDir, asset[0]))
      res.writeHead(200, { 'content-type': asset[1], 'cache-control': 'no-cache' }).end(body)
    } catch {
      res.writeHead(500).end('asset missing')
    }
  })
  const wss = new WebSocketServer({ noServer: true })
  http.on('upgrade', (req, socket, head) => {
    if (new URL(req.url, 'http://x').pathname !== '/call') {
      socket.destroy()
      return
    }
    wss.handleUpgrade(req, socket, head, (ws) => handleCall(ws))
  })

  let callCount = 0
  function handleCall(ws) {
    const call = { id: ++callCount, turn: 0, speaking: false, chunks: 0, generation: 0, timers: new Set() }
    log({ type: 'connect', call: call.id })
    ws.on('close', (code) => {
      log({ type: 'close', call: call.id, code })
      cancel()
    })
    if (onConnection && onConnection(ws, call, log) === false) return

    const later = (ms, fn) => {
      const t = setTimeout(() => {
        call.timers.delete(t)
        fn()
      }, ms)
      call.timers.add(t)
    }
    function cancel() {
      call.generation++
      for (const t of call.timers) clearTimeout(t)
      call.timers.clear()
    }
    function send(data) {
      if (ws.readyState === 1) ws.send(data)
    }
    // Speaks `text`: partial messages, then audio (at twice real time), then the settled message.
    function speak(text) {
      const gen = call.generation
      const audio = tone(text.length * msPerChar)
      const chunk = 3200 // 100 ms
      let partial = ''
      const words = text.split(' ')
      words.forEach((w, i) => {
        later(10 * i, () => {
          partial = partial ? `${partial} ${w}` : w
          send(`PartialAssistantMessage ${JSON.stringify(partial)}`)
        })
      })
      const chunks = Math.ceil(audio.length / chunk)
      for (let i = 0; i < chunks; i++) {
        later(10 * words.length + 50 * i, () => {
          if (gen !== call.generation) return
          send(audio.subarray(i * chunk, (i + 1) * chunk))
          if (i === 0) log({ type: 'audio-start', call: call.id, text })
        })
      }
      later(10 * words.length + 5, () => {
        send(`Message ${JSON.stringify({ role: 'assistant', content: text })}`)
      })
    }

    let authed = tokens.length === 0
    let paramsTimer = null
    if (!authed) {
      paramsTimer = setTimeout(() => ws.close(4400, 'Missing params'), 3000)
    } else {
      later(0, start)
    }
    function start() {
      if (firstMessage) speak(firstMessage)
      else send('SkipAnswer')
    }

    ws.on('message', (data, isBinary) => {
      const buf = Buffer.isBuffer(data) ? data : Buffer.from(data)
      if (!authed) {
        clearTimeout(paramsTimer)
        let params
        try {
          params = JSON.parse(buf.toString('utf8'))
        } catch {
          ws.close(4400, 'Invalid params')
          return
        }
        log({ type: 'params', call: call.id, params })
        const auth = typeof params?.authorization === 'string' ? params.authorization : ''
        if (!tokens.some((t) => auth === `Bearer ${t}`)) {
          ws.close(4401, 'Unauthorized')
          return
        }
        authed = true
        start()
        return
      }
      if (buf.length === 0) return
      if (buf.length < 15) {
        const cmd = buf.toString('utf8')
        if (cmd.startsWith('{')) {
          log({ type: 'params', call: call.id, params: cmd })
          return
        }
        log({ type: 'command', call: call.id, command: cmd, binary: isBinary })
        if (cmd === 'StartSpeaking') {
          call.speaking = true
          call.chunks = 0
          cancel()
        } else if (cmd === 'StopSpeaking') {
          call.speaking = false
          if (call.chunks === 0) {
            send('SkipAnswer')
            return
          }
          const i = call.turn++
          const text = transcripts[Math.min(i, transcripts.length - 1)]
          cancel()
          later(50, () => {
            send(`Message ${JSON.stringify({ role: 'user', content: text })}`)
            speak(answer(i, text))
          })
        } else if (cmd === 'Mute') {
          call.speaking = false
          cancel()
        }
        return
      }
      if (!isBinary) {
        if (buf[0] === 0x7b) log({ type: 'params', call: call.id, params: buf.toString('utf8') })
        return
      }
      if (call.speaking) {
        call.chunks++
        log({ type: 'audio', call: call.id, bytes: buf.length })
      }
    })
  }

  await new Promise((resolve) => http.listen(port, '127.0.0.1', resolve))
  const { port: actual } = http.address()
  return {
    port: actual,
    url: `http://127.0.0.1:${actual}`,
    wsUrl: `ws://127.0.0.1:${actual}/call`,
    events,
    async close() {
      for (const c of wss.clients) c.terminate()
      await new Promise((resolve) => http.close(resolve))
    },
  }
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const args = process.argv.slice(2)
  const opt = (name, def) => {
    const i = args.indexOf(`--${name}`)
    return i === -1 ? def : args[i + 1]
  }
  const transcripts = args.flatMap((a, i) => (a === '--transcript' ? [args[i + 1]] : []))
  const s = await startStandin({
    port: Number(opt('port', 0)),
    tokens: opt('token') ? [opt('token')] : [],
    firstMessage: opt('first', 'Hello, how can I help you?'),
    ...(transcripts.length ? { transcripts } : {}),
  })
  console.log(`stand-in listening on ${s.url}`)
}
