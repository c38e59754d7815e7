// The local stack's table engine: dynalite, DynamoDB's API over LevelDB, on loopback only.
// dynalite's own CLI listens on every interface; this binds 127.0.0.1 and keeps the rest.
// Usage: node serve.js PORT DATA_DIR
'use strict'
const dynalite = require('dynalite')

const [port, path] = process.argv.slice(2)
if (!port || !path) {
  console.error('usage: node serve.js PORT DATA_DIR')
  process.exit(2)
}
// Tables become ACTIVE at once: the stack creates its table on every start.
const server = dynalite({ path, createTableMs: 0, deleteTableMs: 0, updateTableMs: 0 })
server.on('error', (err) => {
  console.error(`table engine: ${err.message}`)
  process.exit(1)
})
server.listen(Number(port), '127.0.0.1', () => {
  console.log(`dynalite ${require('dynalite/package.json').version} on 127.0.0.1:${port}, data in ${path}`)
})
// dynalite rethrows a request's stream error (index.js: req.on('error', ... throw err)): a
// client that dies mid-request (ingest killed while it sends a batch) took the whole engine
// down with it, and every other client's requests. That one error is the client's, and its
// request had not started: log it and keep serving. Anything else still ends the process.
process.on('uncaughtException', (err) => {
  if (err && err.code === 'ECONNRESET' && err.message === 'aborted') {
    console.error('table engine: a client went away mid-request; its request was dropped')
    return
  }
  console.error(err)
  process.exit(1)
})
for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => server.close(() => process.exit(0)))
}
