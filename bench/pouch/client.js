// PouchDB peer client for bench/peers.py: local databases on the in-memory adapter, replicating
// with a remote database over HTTP (the remote URL points at the counting proxy).
// Usage: node client.js REMOTE_DB_URL DATA_JSON BATCH_SIZE
// Reads one command per line on stdin and answers each with one JSON line on stdout:
//   write  - device A saves every document locally (db.bulkDocs, in batches of BATCH_SIZE)
//   push   - A.replicate.to(remote)
//   pull   - device B (a fresh memory database) B.replicate.from(remote)
//   change [K] - A changes the listed documents locally (get + put each); in round K > 1 every
//            changed string gets " #K" appended, so that each round is a real change
//   incr   - A.replicate.to(remote), then B.replicate.from(remote): the change reaches B
//   quit
'use strict';
const fs = require('fs');
const readline = require('readline');
const PouchDB = require('pouchdb-core')
  .plugin(require('pouchdb-adapter-memory'))
  .plugin(require('pouchdb-adapter-http'))
  .plugin(require('pouchdb-replication'));

const [remoteUrl, dataFile, batchArg] = process.argv.slice(2);
const batchSize = Number(batchArg || 100);
const data = JSON.parse(fs.readFileSync(dataFile, 'utf8'));
const run = String(process.hrtime.bigint());
const localA = new PouchDB(`a-${run}`, { adapter: 'memory' });
const localB = new PouchDB(`b-${run}`, { adapter: 'memory' });
const remote = new PouchDB(remoteUrl);
const opts = { batch_size: batchSize };

function roundValue(v, k) {
  return typeof v === 'string' && k > 1 ? `${v} #${k}` : v;
}

function docs() {
  return data.docs.map((d) => ({ ...d.record, _id: d.id, type: d.collection }));
}

async function timed(fn, arg) {
  const cpu0 = process.cpuUsage();
  const t0 = process.hrtime.bigint();
  const extra = await fn(arg);
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  const cpu = process.cpuUsage(cpu0);
  return { seconds, client_cpu_s: (cpu.user + cpu.system) / 1e6, ...extra };
}

const commands = {
  async write() {
    const all = docs();
    let written = 0;
    for (let i = 0; i < all.length; i += batchSize) {
      const res = await localA.bulkDocs(all.slice(i, i + batchSize));
      written += res.filter((r) => r.ok).length;
    }
    return { records: written };
  },
  async push() {
    const r = await localA.replicate.to(remote, opts);
    return { records: r.docs_written, status: r.status };
  },
  async pull() {
    const r = await localB.replicate.from(remote, opts);
    return { records: r.docs_written, status: r.status };
  },
  async change(arg) {
    const k = Number(arg || 1);
    let n = 0;
    for (const c of data.changes) {
      const doc = await localA.get(c.id);
      const fields = Object.fromEntries(Object.entries(c.fields).map(([f, v]) => [f, roundValue(v, k)]));
      await localA.put({ ...doc, ...fields });
      n += 1;
    }
    return { records: n };
  },
  async incr() {
    const t0 = process.hrtime.bigint();
    const up = await localA.replicate.to(remote, opts);
    const pushS = Number(process.hrtime.bigint() - t0) / 1e9;
    const down = await localB.replicate.from(remote, opts);
    return { records: down.docs_written, pushed: up.docs_written, push_seconds: pushS };
  },
};

async function main() {
  process.stdout.write(JSON.stringify({ ok: true, cmd: 'ready' }) + '\n');
  const rl = readline.createInterface({ input: process.stdin });
  for await (const line of rl) {
    const [cmd, arg] = line.trim().split(/\s+/);
    if (cmd === 'quit') break;
    try {
      const out = await timed(commands[cmd], arg);
      process.stdout.write(JSON.stringify({ ok: true, cmd, ...out }) + '\n');
    } catch (err) {
      process.stdout.write(JSON.stringify({ ok: false, cmd, error: String(err && (err.stack || err)) }) + '\n');
    }
  }
  process.exit(0);
}

main();
