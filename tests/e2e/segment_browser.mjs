// Drives the example web shop in headless Chromium (the system's browser, through playwright-core):
//   node segment_browser.mjs <chromium> <page URL>
// Loads the page, clicks "Add to cart", leaves the page (its sendBeacon fires on pagehide), prints
// {"userAgent", "anonymousId", "pageUrl"} as JSON, and keeps the browser open (requests in flight
// finish) until its standard input closes.
import { chromium } from 'playwright-core'

const [executablePath, pageUrl] = process.argv.slice(2)
const browser = await chromium.launch({ executablePath, args: ['--no-sandbox'] })
try {
  const page = await browser.newPage()
  page.on('console', (message) => console.error(`page: ${message.text()}`))
  await page.goto(pageUrl)
  await page.waitForFunction(() => window.analytics !== undefined)
  const anonymousId = await page.evaluate(async () => (await window.analytics.user()).anonymousId())
  const userAgent = await page.evaluate(() => navigator.userAgent)
  await page.click('#add')
  await page.waitForFunction(() => document.getElementById('status').textContent !== '')
  // Leaving fires pagehide: the sendBeacon call.
  await page.goto('about:blank')
  console.log(JSON.stringify({ userAgent, anonymousId, pageUrl }))
  process.stdin.resume()
  await new Promise((resolve) => process.stdin.on('end', resolve))
} finally {
  await browser.close()
}
