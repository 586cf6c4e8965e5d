// The fuzz suite of `npm test` (test/fuzz/) for as long as asked, with a random seed: every
// target replays its corpus, then its properties share the time. Prints the runs per property,
// any counterexample with the seed and path that replay it, and exits non-zero on a failure. A
// failing raw input is also written to test/fuzz/corpus/<target>/crash-<sha256> (commit it with
// the fix: from then on `npm test` replays it). See docs/fuzzing.md.
//
//   node bench/fuzz.mjs [--seconds=60] [--target=name[,name]] [--seed=S] [--property=N --path=P]
//
// --target: lines, control, handshake, throttle, connect, socks5, proxy-v2, admin, config.
// --seed --target --property --path: replays one failure exactly (as printed).
// Needs no build: the property definitions (TypeScript) are bundled with esbuild, a devDependency,
// into node_modules/.cache/, with the packages left external.
import { createHash, randomInt } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { build } from 'esbuild';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..');
const arg = (name) => new RegExp(`(?:^| )--${name}=(\\S+)`).exec(process.argv.slice(2).join(' '))?.[1];
const SECONDS = Number(arg('seconds') ?? 60);
const SEED = arg('seed') === undefined ? randomInt(0, 2 ** 31) : Number(arg('seed'));
const PATH = arg('path');
const ONLY = arg('target')?.split(',');
const PROPERTY = arg('property');
if (!Number.isFinite(SECONDS) || SECONDS <= 0 || !Number.isInteger(SEED)) {
  console.error('usage: node bench/fuzz.mjs [--seconds=60] [--target=name[,name]] [--seed=S] [--property=N --path=P]');
  process.exit(2);
}
if (PATH !== undefined && (ONLY?.length !== 1 || PROPERTY === undefined || arg('seed') === undefined)) {
  console.error('--path replays one failure: give --seed, one --target and --property too, as printed with the failure');
  process.exit(2);
}

const outfile = join(ROOT, 'node_modules', '.cache', 'mtaproxy-fuzz', 'targets.mjs');
await build({
  entryPoints: [join(ROOT, 'test', 'fuzz', 'targets', 'index.ts')],
  outfile,
  bundle: true,
  packages: 'external',
  platform: 'node',
  format: 'esm',
  target: 'node20',
  sourcemap: 'inline',
  logLevel: 'warning',
});
const { TARGETS, readCorpus } = await import(pathToFileURL(outfile).href);

const targets = TARGETS.filter((t) => ONLY === undefined || ONLY.includes(t.name));
if (targets.length === 0) {
  console.error(`no target ${ONLY?.join(',')}; targets: ${TARGETS.map((t) => t.name).join(', ')}`);
  process.exit(2);
}
const jobs = targets.flatMap((t) => t.properties.map((p, i) => ({ target: t, property: p, index: i })).filter((j) => PROPERTY === undefined || String(j.index) === PROPERTY));
const sliceMs = Math.max(50, Math.floor((SECONDS * 1000) / jobs.length));

console.log(`fuzz: seed ${SEED}, ${SECONDS} s over ${jobs.length} properties of ${targets.length} targets (${sliceMs} ms each), fast-check, node ${process.version}`);
let failures = 0;

for (const t of targets) {
  const corpus = readCorpus(ROOT, t.name);
  for (const { name, bytes } of corpus) {
    try {
      t.check(bytes);
    } catch (err) {
      failures++;
      console.log(`FAIL ${t.name}: corpus file test/fuzz/corpus/${t.name}/${name}: ${err.message}`);
    }
  }
  console.log(`${t.name}: corpus of ${corpus.length} inputs replayed`);
}

const setupRssMb = process.memoryUsage().rss / 2 ** 20;
const rows = [];
for (const { target, property, index } of jobs) {
  const started = performance.now();
  const r = property.run({ seed: SEED, numRuns: PATH === undefined ? Number.MAX_SAFE_INTEGER : 1, timeLimitMs: PATH === undefined ? sliceMs : undefined, path: PATH });
  const ms = performance.now() - started;
  rows.push([target.name, `${index} ${property.name}`, String(r.numRuns), (r.numRuns / (ms / 1000)).toFixed(0), r.failed ? 'FAIL' : 'ok']);
  if (!r.failed) continue;
  failures++;
  console.log(`\nFAIL ${target.name} / ${property.name}\n${r.report}`);
  if (r.corpusBytes !== null) {
    const file = join(ROOT, 'test', 'fuzz', 'corpus', target.name, `crash-${createHash('sha256').update(r.corpusBytes).digest('hex').slice(0, 16)}`);
    mkdirSync(dirname(file), { recursive: true });
    writeFileSync(file, r.corpusBytes);
    console.log(`input written to ${relative(ROOT, file)}: fix the parser and commit it, npm test replays it`);
  }
  console.log(`replay: node bench/fuzz.mjs --target=${target.name} --property=${index} --seed=${r.seed} --path=${r.path}\n`);
}

const widths = [0, 1, 2, 3, 4].map((c) => Math.max(...[['target', 'property', 'runs', 'runs/s', ''], ...rows].map((r) => r[c].length)));
const line = (r) => r.map((cell, c) => (c >= 2 && c <= 3 ? cell.padStart(widths[c]) : cell.padEnd(widths[c]))).join('  ');
console.log(`\n${line(['target', 'property', 'runs', 'runs/s', ''])}`);
for (const r of rows) console.log(line(r));
const total = rows.reduce((n, r) => n + Number(r[2]), 0);
const maxRssMb = process.resourceUsage().maxRSS / 1024;
console.log(`\n${total} runs; RSS ${setupRssMb.toFixed(0)} MB after the corpus, peak ${maxRssMb.toFixed(0)} MB; seed ${SEED}: ${failures === 0 ? 'no failure' : `${failures} failure(s)`}`);
process.exit(failures === 0 ? 0 : 1);
