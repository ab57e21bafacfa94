// Builds the fake microphone: a phrase spoken by espeak-ng, padded with silence so the VAD sees
// a start and an end. Chromium loops the file.
import { execFileSync } from 'node:child_process'
import { readFileSync, writeFileSync, mkdtempSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

/** Parses a PCM16 mono WAV; returns { rate, samples: Int16Array }. */
export function readWav(buf) {
  if (buf.toString('ascii', 0, 4) !== 'RIFF' || buf.toString('ascii', 8, 12) !== 'WAVE') throw new Error('not a WAV')
  let off = 12
  let rate = 0
  let channels = 1
  let bits = 16
  while (off + 8 <= buf.length) {
    const id = buf.toString('ascii', off, off + 4)
    let size = buf.readUInt32LE(off + 4)
    const body = off + 8
    if (id === 'fmt ') {
      channels = buf.readUInt16LE(body + 2)
      rate = buf.readUInt32LE(body + 4)
      bits = buf.readUInt16LE(body + 14)
    } else if (id === 'data') {
      // espeak-ng writing to a file may leave the size at 0x7fffffff: clamp to the file.
      size = Math.min(size, buf.length - body)
      if (channels !== 1 || bits !== 16) throw new Error(`unsupported WAV: ${channels} ch, ${bits} bits`)
      const samples = new Int16Array(size >> 1)
      for (let i = 0; i < samples.length; i++) samples[i] = buf.readInt16LE(body + 2 * i)
      return { rate, samples }
    }
    off = body + size + (size & 1)
  }
  throw new Error('WAV without data chunk')
}

/** Encodes PCM16 mono samples as a WAV file. */
export function encodeWav(rate, samples) {
  const buf = Buffer.alloc(44 + samples.length * 2)
  buf.write('RIFF', 0, 'ascii')
  buf.writeUInt32LE(36 + samples.length * 2, 4)
  buf.write('WAVEfmt ', 8, 'ascii')
  buf.writeUInt32LE(16, 16)
  buf.writeUInt16LE(1, 20)
  buf.writeUInt16LE(1, 22)
  buf.writeUInt32LE(rate, 24)
  buf.writeUInt32LE(rate * 2, 28)
  buf.writeUInt16LE(2, 32)
  buf.writeUInt16LE(16, 34)
  buf.write('data', 36, 'ascii')
  buf.writeUInt32LE(samples.length * 2, 40)
  for (let i = 0; i < samples.length; i++) buf.writeInt16LE(samples[i], 44 + 2 * i)
  return buf
}

/**
 * Speaks `text` with espeak-ng and writes `out`: `leadMs` of silence, the speech, `tailMs` of
 * silence. Returns { rate, speechMs, totalMs }.
 */
export function makeSpeechWav(text, out, { leadMs = 1500, tailMs = 3000, voice = 'en', speed = 160 } = {}) {
  const dir = mkdtempSync(join(tmpdir(), 'micdrop-e2e-'))
  const raw = join(dir, 'speech.wav')
  execFileSync('espeak-ng', ['-v', voice, '-s', String(speed), '-w', raw, text])
  const { rate, samples } = readWav(readFileSync(raw))
  const lead = Math.round((leadMs / 1000) * rate)
  const tail = Math.round((tailMs / 1000) * rate)
  const all = new Int16Array(lead + samples.length + tail)
  all.set(samples, lead)
  writeFileSync(out, encodeWav(rate, all))
  return { rate, speechMs: Math.round((samples.length / rate) * 1000), totalMs: Math.round((all.length / rate) * 1000) }
}
