// A web shop's tracking, as a platform writes it for Segment: @segment/analytics-next, unchanged,
// pointed at the collector's Segment door. Bundle it (no CDN is involved; the settings are inline):
//   node_modules/.bin/esbuild examples/web-shop/shop.js --bundle --outfile=examples/web-shop/shop.bundle.js
import { AnalyticsBrowser } from '@segment/analytics-next'

const params = new URLSearchParams(window.location.search)
const collector = new URL(params.get('collector') || 'http://127.0.0.1:8080')
const writeKey = params.get('writeKey') || ''

// The settings analytics.js would fetch from Segment's CDN, given here: only the Segment.io
// destination, whose API host is the collector.
const analytics = AnalyticsBrowser.load({
  writeKey,
  cdnSettings: {
    integrations: {
      'Segment.io': {
        apiKey: writeKey,
        apiHost: `${collector.host}/v1`,
        protocol: collector.protocol.replace(':', ''),
      },
    },
  },
})
window.analytics = analytics

let anonymousId = null
analytics.user().then((user) => {
  anonymousId = user.anonymousId()
})

const product = { product_id: 'sku-1001', name: 'Trail shoe', price: 89.9, currency: 'EUR' }

analytics.page()
analytics.track('Product Viewed', product)

document.getElementById('add').addEventListener('click', () => {
  analytics.track('Product Added', { ...product, quantity: 1 })
  document.getElementById('status').textContent = 'added to the cart'
})

// Leaving the page: sendBeacon survives the unload; it sends text/plain with the key in the body.
window.addEventListener('pagehide', () => {
  navigator.sendBeacon(
    `${collector.origin}/v1/t`,
    JSON.stringify({
      writeKey,
      type: 'track',
      event: 'Page Left',
      anonymousId,
      // randomUUID needs a secure context (https, or localhost); any unique text will do otherwise.
      messageId: window.crypto.randomUUID?.() ?? `beacon-${Date.now()}-${Math.random()}`,
      timestamp: new Date().toISOString(),
      properties: { product_id: product.product_id },
      context: { userAgent: navigator.userAgent, page: { url: window.location.href } },
    }),
  )
})
