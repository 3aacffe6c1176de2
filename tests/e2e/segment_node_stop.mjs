// Segment's Node.js SDK sending while its collector stops:
//   node segment_node_stop.mjs <collector base URL> <write key> <flag file>
// Sends Product Viewed calls until <flag file> exists (the collector is stopped then), 200 more, flushes,
// and prints {"sent": [message ids], "delivered": [the ids whose callback reported no error]} as JSON.
import { existsSync } from 'node:fs'
import { randomUUID } from 'node:crypto'
import { Analytics } from '@segment/analytics-node'

const [host, writeKey, flag] = process.argv.slice(2)
const analytics = new Analytics({ writeKey, host, flushAt: 100, maxRetries: 1, httpRequestTimeout: 5000 })
analytics.on('error', () => {}) // failures are read from the callbacks
const sent = []
const delivered = []
let after = 0
while (after < 200 && sent.length < 300000) {
  const messageId = randomUUID()
  sent.push(messageId)
  analytics.track(
    { anonymousId: `a-${sent.length % 50}`, event: 'Product Viewed', properties: { product_id: `p-${sent.length}` }, messageId },
    (error) => {
      if (!error) delivered.push(messageId)
    },
  )
  if (existsSync(flag)) after += 1
  if (sent.length % 100 === 0) await new Promise((resolve) => setTimeout(resolve, 5))
}
await analytics.closeAndFlush({ timeout: 60000 })
console.log(JSON.stringify({ sent, delivered }))
