// The demo page of `micdrop serve`: one call with the assistant, using micdrop.js.
// The client instance is kept on `window.micdrop` so the page can be driven and inspected.
import { MicdropClient, dbToLevel } from './micdrop.js'

const $ = (id) => document.getElementById(id)
const query = new URLSearchParams(location.search)

function defaultUrl() {
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:'
  return `${scheme}//${location.host}/call`
}

const micdrop = new MicdropClient({ debugLog: query.has('debug') })
window.micdrop = micdrop

// `?url=` may only point at this page's own host, or at a server that `micdrop serve` lists in
// `[server] demo_allowed_urls` (given to the page in a meta tag): a link must not be able to send
// the visitor's voice and token to another host.
const allowedUrls = (() => {
  try {
    return JSON.parse(document.querySelector('meta[name="micdrop-demo-allowed-urls"]')?.content || '[]')
  } catch {
    return []
  }
})()

function isAllowedUrl(text) {
  let url
  try {
    url = new URL(text)
  } catch {
    return false
  }
  if (url.protocol !== 'ws:' && url.protocol !== 'wss:') return false
  if (url.host === location.host) return true
  return allowedUrls.some((a) => {
    try {
      const allowed = new URL(a)
      return allowed.protocol === url.protocol && allowed.host === url.host
    } catch {
      return false
    }
  })
}

const urlInput = $('url')
const tokenInput = $('token')
const requestedUrl = query.get('url')
const refusedUrl = requestedUrl && !isAllowedUrl(requestedUrl)
urlInput.value = requestedUrl && !refusedUrl ? requestedUrl : defaultUrl()
tokenInput.value = query.get('token') || ''
$('threshold').value = String(micdrop.vad.options.threshold)
$('threshold-value').textContent = `${micdrop.vad.options.threshold} dB`

let endedByAssistant = false

// ---- controls ----

$('settings-form').addEventListener('submit', (e) => e.preventDefault())

$('start').addEventListener('click', async () => {
  const s = micdrop.state
  if (s.isStarted || s.isStarting || s.isReconnecting) {
    await micdrop.stop()
    return
  }
  endedByAssistant = false
  const token = tokenInput.value.trim()
  const url = urlInput.value.trim()
  try {
    await micdrop.start({
      url,
      params: token ? { authorization: `Bearer ${token}` } : undefined,
      disableInterruption: $('no-interrupt').checked,
    })
  } catch {
    // The error is in the state and shown by render().
  }
})

$('pause').addEventListener('click', () => {
  if (micdrop.isPaused) micdrop.resume()
  else micdrop.pause()
})

$('mute').addEventListener('click', () => {
  if (micdrop.isMuted) micdrop.unmute()
  else micdrop.mute()
})

$('mic-select').addEventListener('change', (e) => {
  micdrop.changeMicDevice(e.target.value).catch(() => {})
})

$('speaker-select').addEventListener('change', (e) => {
  micdrop.changeSpeakerDevice(e.target.value).catch((err) => showError('Speaker', err.message))
})

$('threshold').addEventListener('input', (e) => {
  const threshold = Number(e.target.value)
  micdrop.setVadOptions({ threshold })
  $('threshold-value').textContent = `${threshold} dB`
})

$('no-interrupt').addEventListener('change', (e) => {
  micdrop.options.disableInterruption = e.target.checked
})

micdrop.on('EndCall', () => {
  endedByAssistant = true
  micdrop.stop()
})

micdrop.on('StateChange', render)

// ---- rendering ----

function callStatus(s) {
  if (s.isReconnecting) return ['reconnecting', 'Reconnecting…']
  if (s.isStarting) return ['connecting', 'Connecting…']
  if (!s.isStarted) {
    if (s.error) return ['error', 'Call failed']
    return ['idle', endedByAssistant ? 'Call ended' : 'Ready']
  }
  if (s.isPaused) return ['paused', 'Paused']
  if (s.isUserSpeaking) return ['user-speaking', 'You are speaking']
  if (s.isAssistantSpeaking) return ['assistant-speaking', 'Assistant speaking']
  if (s.isProcessing) return ['processing', 'Thinking…']
  if (s.isMuted) return ['muted', 'Muted']
  return ['listening', 'Listening']
}

function explainError(error, s) {
  const url = urlInput.value.trim()
  switch (error.code) {
    case 'Mic':
      return [
        'Microphone unavailable',
        'The browser refused access to the microphone, or there is none. Allow the microphone for this page, then start again.',
      ]
    case 'Connection':
      return s.isReconnecting
        ? ['Server unreachable', `Cannot reach ${url}. Retrying every second…`]
        : ['Server unreachable', `Cannot reach ${url}. Check the server address and that the server is running.`]
    case 'Unauthorized':
      return ['Unauthorized', 'The server refused the token. Check the token in Settings, then start again.']
    case 'BadRequest':
      return ['Rejected', `The server rejected the call: ${error.message}.`]
    case 'NotFound':
      return ['Not found', `The server has no call here: ${error.message}.`]
    case 'InternalServer':
      return ['Server error', `The server hit an internal error.${s.isReconnecting ? ' Reconnecting…' : ''}`]
    case 'MissingUrl':
      return ['No server address', 'Enter the server WebSocket address in Settings.']
    default:
      return ['Error', error.message || String(error.code)]
  }
}

function showError(title, text) {
  $('error-title').textContent = title
  $('error-text').textContent = text
  $('error').hidden = false
}

let renderedItems = 0

function render(s) {
  const [state, label] = callStatus(s)
  const status = $('status')
  status.dataset.state = state
  $('status-text').textContent = label

  const active = s.isStarted || s.isStarting || s.isReconnecting
  const start = $('start')
  start.textContent = active ? 'Stop call' : 'Start call'
  start.classList.toggle('stop', active)
  $('pause').disabled = !s.isStarted
  $('pause').textContent = s.isPaused ? 'Resume' : 'Pause'
  $('pause').setAttribute('aria-pressed', String(s.isPaused))
  $('mute').disabled = !s.isStarted
  $('mute').textContent = s.isMuted ? 'Unmute' : 'Mute'
  $('mute').setAttribute('aria-pressed', String(s.isMuted))
  urlInput.disabled = active
  tokenInput.disabled = active

  const err = $('error')
  if (s.error) {
    const [title, text] = explainError(s.error, s)
    err.dataset.code = s.error.code
    showError(title, text)
  } else {
    err.hidden = true
    delete err.dataset.code
  }

  renderConversation(s)
  renderDevices($('mic-select'), s.micDevices, s.micDeviceId, 'Default microphone')
  renderDevices($('speaker-select'), s.speakerDevices, s.speakerDeviceId, 'Default speaker')
}

function renderConversation(s) {
  const list = $('conversation')
  if (s.conversation.length < renderedItems) {
    list.replaceChildren()
    renderedItems = 0
  }
  for (const item of s.conversation.slice(renderedItems)) {
    const li = document.createElement('li')
    li.dataset.role = item.role
    if (item.role === 'user' || item.role === 'assistant') {
      li.className = `bubble ${item.role}`
      li.textContent = item.content
    } else if (item.role === 'tool_call') {
      li.className = 'bubble tool'
      li.textContent = `⚙ ${item.toolName}(${item.parameters})`
    } else if (item.role === 'tool_result') {
      li.className = 'bubble tool'
      li.textContent = `↳ ${item.toolName}: ${item.output}`
    } else {
      continue
    }
    list.append(li)
  }
  renderedItems = s.conversation.length
  const partial = $('partial')
  partial.hidden = !s.partialAssistantMessage
  partial.textContent = s.partialAssistantMessage || ''
  $('empty').hidden = s.conversation.length > 0 || !!s.partialAssistantMessage
  const last = partial.hidden ? list.lastElementChild : partial
  last?.scrollIntoView?.({ block: 'nearest' })
}

function renderDevices(select, devices, selected, defaultLabel) {
  const wanted = ['', ...devices.map((d) => d.id)].join('\n')
  if (select.dataset.ids !== wanted) {
    select.replaceChildren(new Option(defaultLabel, ''), ...devices.map((d) => new Option(d.label, d.id)))
    select.dataset.ids = wanted
  }
  select.value = selected && devices.some((d) => d.id === selected) ? selected : ''
}

// Level meters, refreshed every animation frame.
function meters() {
  $('mic-level').style.width = `${Math.round(dbToLevel(micdrop.getMicVolume()) * 100)}%`
  $('speaker-level').style.width = `${Math.round(dbToLevel(micdrop.getSpeakerVolume()) * 100)}%`
  requestAnimationFrame(meters)
}

render(micdrop.state)
requestAnimationFrame(meters)
micdrop.updateDevices().catch(() => {})

if (refusedUrl) {
  showError(
    'Server address ignored',
    `This page only connects to its own server (or to servers its configuration allows), not to ${requestedUrl}.`,
  )
}
