// Segment's own Node.js SDK (@segment/analytics-node), unchanged, pointed at a collector:
//   node segment_node.mjs <collector base URL> <write key> <tag>
// Sends one call of every kind, waits for the flush and prints {"errors": [...]} as JSON.
import { Analytics } from '@segment/analytics-node'

const [host, writeKey, tag] = process.argv.slice(2)
const analytics = new Analytics({ writeKey, host, flushAt: 50, maxRetries: 2 })
const errors = []
analytics.on('error', (error) => errors.push(String(error?.reason ?? error?.code ?? error)))

const userId = `node-user-${tag}`
const anonymousId = `node-anon-${tag}`
const context = {
  userAgent: 'Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 Version/17.0 Safari/605.1.15',
  locale: 'fr-FR',
  page: { url: 'https://shop.example/p/1', referrer: 'https://search.example/' },
  campaign: { name: 'spring', source: 'newsletter' },
}

analytics.identify({ userId, anonymousId, traits: { plan: 'pro' } })
analytics.track({
  anonymousId,
  event: 'Product Viewed',
  properties: { product_id: 'p-1', price: 19.99, currency: 'EUR', source_id: 'r-1' },
  context,
  timestamp: new Date('2026-11-02T10:15:00.000Z'),
})
analytics.track({
  anonymousId,
  event: 'Order Completed',
  properties: {
    order_id: 'o-1',
    currency: 'JPY',
    products: [
      { product_id: 'p-1', price: 1500, quantity: 2 },
      { sku: 's-2', price: 300 },
    ],
  },
})
analytics.track({ anonymousId, event: 'Coupon Applied', properties: { coupon: 'WINTER', amount: 5 } })
analytics.page({ anonymousId, name: 'Home', properties: { path: '/', url: 'https://shop.example/' } })
analytics.screen({ userId, name: 'Cart' })
analytics.alias({ userId, previousId: `node-old-${tag}` })
analytics.group({ userId, groupId: 'acme' })
await analytics.closeAndFlush({ timeout: 20000 })
console.log(JSON.stringify({ errors }))
