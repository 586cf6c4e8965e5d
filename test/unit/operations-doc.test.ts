// docs/operations.md keeps up with what the daemon logs. The event kinds come from the one table
// (src/log/message-ids.ts, which test/unit/message-ids.test.ts keeps equal to what src/ logs); the
// fields of each kind are read from src/'s syntax tree (test/helpers/log-fields.ts: the object
// literals carrying `mtaproxy_event`); the status lines' fields from the pure formatter itself.
// Each must be in the doc: a kind as a row of the "Other events" table (status in its own table),
// each field, upper-cased as journald gets it, in that row; and the row must not name fields the
// code does not log.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { EVENTS } from '../../src/log/message-ids.js';
import { poolJson, statusRecords } from '../../src/status/format.js';
import { throttlesJson } from '../../src/status/throttles.js';
import { ThrottleManager } from '../../src/throttle/manager.js';
import { ROOT } from '../helpers/daemon.js';
import { loggedRecords } from '../helpers/log-fields.js';

const DOC = readFileSync(join(ROOT, 'docs/operations.md'), 'utf8');

/** The rows of the markdown table that follows `heading`, keyed by the first cell's `code`. */
function tableRows(heading: string): Map<string, string[]> {
  const start = DOC.indexOf(`\n${heading}\n`);
  if (start === -1) throw new Error(`docs/operations.md has no "${heading}"`);
  const lines = DOC.slice(start).split('\n');
  const first = lines.findIndex((l) => l.startsWith('|'));
  const rows = new Map<string, string[]>();
  for (const line of lines.slice(first + 2)) {
    if (!line.startsWith('|')) break;
    const cells = line.split(/(?<!\\)\|/).slice(1, -1).map((c) => c.trim());
    for (const name of (cells[0] ?? '').matchAll(/`([^`]+)`/g)) rows.set(name[1] ?? '', cells);
  }
  return rows;
}

/** `FIELD` tokens (upper-case, backticked) of a cell; `REASON=handshake_cap` counts as REASON. */
const fieldTokens = (cell: string): string[] => [...cell.matchAll(/`([A-Z][A-Z0-9_]*)(?:=[^`]*)?`/g)].map((m) => m[1] ?? '');
/** Values written in capitals in the field column (not fields): */
const VALUES = new Set(['EMFILE', 'DATA', 'BDAT', 'RSET']);

const records = loggedRecords(join(ROOT, 'src'));
const fieldsByEvent = new Map<string, Set<string>>();
for (const r of records) {
  const set = fieldsByEvent.get(r.event) ?? new Set<string>();
  for (const f of r.fields) set.add(f);
  fieldsByEvent.set(r.event, set);
}

describe('docs/operations.md and what the daemon logs', () => {
  it('the source reader sees every record (no field hidden behind a spread it cannot follow, except the status formatter checked below)', () => {
    expect(records.length).toBeGreaterThan(50);
    expect([...fieldsByEvent.keys()].sort()).toEqual(Object.keys(EVENTS).sort());
    const opaque = records.filter((r) => r.fields.includes('?')).map((r) => `${r.file.slice(ROOT.length)}:${r.line} (${r.event})`);
    expect(opaque.every((o) => o.startsWith('src/status/format.ts:')), opaque.join(', ')).toBe(true);
  });

  it('every event kind has a row in "Other events" with its level; every field it logs is in the row, and no other', () => {
    const rows = tableRows('### Other events');
    const missing: string[] = [];
    for (const [event, info] of Object.entries(EVENTS)) {
      if (event === 'status') continue;
      const row = rows.get(event);
      if (row === undefined) {
        missing.push(`${event}: no row`);
        continue;
      }
      expect(row[1], `${event}: level`).toBe(info.level);
      const text = row.slice(2).join(' | ');
      const documented = new Set(fieldTokens(text).filter((t) => !VALUES.has(t)));
      const logged = [...(fieldsByEvent.get(event) ?? [])].filter((f) => f !== '?').map((f) => f.toUpperCase());
      for (const f of logged) if (!documented.has(f)) missing.push(`${event}: ${f}`);
      // the last column lists the fields (the meaning column also names protocol words: AUTH, BIND)
      for (const f of fieldTokens(row.at(-1) ?? '')) if (!VALUES.has(f) && !logged.includes(f)) missing.push(`${event}: documents ${f}, which it does not log`);
    }
    expect(missing).toEqual([]);
    // and no row for a kind that does not exist
    expect([...rows.keys()].filter((k) => !(k in EVENTS))).toEqual([]);
  });

  it('every field of every status line is in "Journal fields of the status lines", with the lines that carry it', () => {
    const rows = tableRows('### Journal fields of the status lines');
    const flow = { in: 1, out: 2, buf: 3 };
    const lines = statusRecords({
      managerId: '0543b19c', openConnections: 1, handshaking: 0, refusedHandshakeCap: 0, acceptErrors: 0, refusedFds: 0, throttles: 1, window: 16,
      sessions: [{ name: 'server-a', connectedMs: 5000, pingRttMs: 0.25, pingAgeMs: 400, backlog: { ram: 1, bounce: 2, disk: 3 }, forward: flow, back: flow }],
      remote: { active: 1, cached: 1 },
      relay: { connections: 2, inTransaction: 1, transactions: 7 },
    });
    const missing: string[] = [];
    for (const line of lines) {
      const which = String(line.fields.status_line);
      for (const f of Object.keys(line.fields)) {
        const row = rows.get(f.toUpperCase());
        if (row === undefined) missing.push(`${which}: ${f.toUpperCase()}`);
        else if (!/^all$/.test(row[1] ?? '') && !(row[1] ?? '').split(/[ ,()]+/).includes(which)) missing.push(`${f.toUpperCase()}: not marked as a field of the ${which} line`);
      }
    }
    expect(missing).toEqual([]);
    const statusLines = (rows.get('STATUS_LINE')?.[2] ?? '').match(/`[a-z_]+`/g)?.map((v) => v.slice(1, -1)) ?? [];
    expect(statusLines.sort()).toEqual([...new Set(lines.map((l) => String(l.fields.status_line)))].sort());
  });

  it('the JSON examples of status --json and status --throttles --json have the keys the code produces, and only those', () => {
    /** every key path of a JSON value, arrays folded: "throttles[].sessions[].weight" */
    const paths = (v: unknown, at = ''): string[] =>
      Array.isArray(v) ? v.flatMap((x) => paths(x, `${at}[]`))
      : v !== null && typeof v === 'object' ? Object.entries(v).flatMap(([k, x]) => [`${at}${at ? '.' : ''}${k}`, ...paths(x, `${at}${at ? '.' : ''}${k}`)])
      : [];
    const example = (after: string): unknown => {
      const i = DOC.indexOf(after);
      const block = /```json\n([\s\S]*?)```/.exec(DOC.slice(i));
      return JSON.parse(block?.[1] ?? 'null') as unknown;
    };

    const m = new ThrottleManager();
    m.declare('server-a#1', { key: 'gmail@127.0.0.2', sourceIp: '127.0.0.2', maxConnections: 2, maxMessagesPerHour: 600, mode: 'sum' }, 0);
    const throttles = throttlesJson(m.throttleSnapshot(0, { limit: 100 }), { key: '', limit: 100 }, () => ({ name: 'server-a', backlog: { ram: 5, bounce: 1, disk: 7 } }));
    expect([...new Set(paths(example('`--throttles --json` prints the same as one object')))].sort()).toEqual([...new Set(paths(throttles))].sort());

    const flow = { in: 0, out: 0, buf: 0 };
    const records = statusRecords({
      managerId: '5cc4ae36', openConnections: 1, handshaking: 0, refusedHandshakeCap: 0, acceptErrors: 0, refusedFds: 0, throttles: 4, window: 16,
      sessions: [{ name: 'server-a', connectedMs: 3_919_000, pingRttMs: 0.25, pingAgeMs: 0, backlog: { ram: 5, bounce: 1, disk: 7 }, forward: flow, back: flow }],
      remote: { active: 1, cached: 2 },
    }).map((r) => r.fields);
    const pool = poolJson([{ sourceIp: '127.0.0.2', destination: '192.0.2.25:25', ehlo: 'mail-2.example.com', tls: 'opportunistic', throttle: 'example.com@127.0.0.2', active: 1, opening: 0, waiting: 0,
      cached: [{ id: 17, ageMs: 123_000, idleMs: 1000, transactions: 41, tls: 'TLSv1.3' }] }]);
    // the example abbreviates the session record with "…": its keys must be real ones, the other records complete
    const documented = [...new Set(paths(example('`mtaproxy status --json` prints one JSON object')))].filter((k) => !k.endsWith('…'));
    const real = [...new Set(paths({ records, smtp_pool: pool }))];
    expect(documented.filter((k) => !real.includes(k))).toEqual([]);
    const recordsOf = (line: string, list: unknown): string[] => Object.keys((list as Record<string, unknown>[]).find((r) => r.status_line === line) ?? {});
    const docRecords = (example('`mtaproxy status --json` prints one JSON object') as { records: Record<string, unknown>[] }).records;
    for (const line of ['listener', 'handshakes', 'manager', 'direct_remote_smtp']) expect(recordsOf(line, docRecords).sort(), line).toEqual(recordsOf(line, records).sort());
  });
});

