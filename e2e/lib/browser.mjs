// Launches Debian's Chromium headless with a WAV file as the fake microphone.
import { chromium } from 'playwright-core'

export const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium'

export async function launch(wav, { extraArgs = [] } = {}) {
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--use-fake-ui-for-media-stream',
      '--use-fake-device-for-media-stream',
      ...(wav ? [`--use-file-for-fake-audio-capture=${wav}`] : []),
      '--autoplay-policy=no-user-gesture-required',
      ...extraArgs,
    ],
  })
}
