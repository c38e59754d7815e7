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
for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => server.close(() => process.exit(0)))
}
