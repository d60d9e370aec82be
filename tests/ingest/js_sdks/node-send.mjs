// Sends the calls named on stdin with @segment/analytics-node, then prints what it sent and what the
// API answered (one JSON document on stdout). Input: {"host", "writeKey", "calls": [[method, args]]}.
import { readFileSync } from 'node:fs'
import { Analytics } from '@segment/analytics-node'

const input = JSON.parse(readFileSync(0, 'utf8'))
const analytics = new Analytics({
  writeKey: input.writeKey,
  host: input.host,
  maxEventsInBatch: input.calls.length,
  maxRetries: 2,
})
const sent = []
const answers = []
const failures = []
analytics.on('http_request', (request) => sent.push(JSON.parse(request.body)))
analytics.on('http_response', (response) => answers.push(response.status))
analytics.on('error', (err) => failures.push(String(err.reason ?? err.code ?? err)))
for (const [method, args] of input.calls) {
  analytics[method]({ ...args, timestamp: args.timestamp && new Date(args.timestamp) })
}
await analytics.closeAndFlush({ timeout: 10000 })
process.stdout.write(JSON.stringify({ sent, answers, failures }) + '\n')
