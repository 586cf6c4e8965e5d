// The event table (src/log/message-ids.ts): every event kind logged in src/ has a MESSAGE_ID, the
// ids are unique, the journald sink sends them, and docs/log-codes.md and packaging/mtaproxy.catalog
// are what the table renders (regenerate with `npm run log-codes`).
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { renderCatalog, renderLogCodes, wrap } from '../../src/log/catalog.js';
import { EVENTS, messageIdFor } from '../../src/log/message-ids.js';
import { journalFields } from '../../src/systemd/journal.js';
import { ROOT } from '../helpers/daemon.js';

function sources(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => (e.isDirectory() ? sources(join(dir, e.name)) : e.name.endsWith('.ts') ? [join(dir, e.name)] : []));
}

/** Every `mtaproxy_event: VALUE` in src/, VALUE as written. */
function loggedEvents(): { file: string; value: string }[] {
  return sources(join(ROOT, 'src')).flatMap((file) =>
    [...readFileSync(file, 'utf8').matchAll(/mtaproxy_event\s*:\s*([^,;}\n]+)/g)].map((m) => ({ file: file.slice(ROOT.length), value: (m[1] ?? '').trim() })),
  );
}

describe('MESSAGE_ID table', () => {
  it('has an entry for every event kind logged in src/, and none that is not logged', () => {
    const found = loggedEvents();
    expect(found.length).toBeGreaterThan(30);
    // a computed event name would escape this check: every one is a literal
    for (const f of found) expect(f.value, `${f.file}: mtaproxy_event must be a string literal`).toMatch(/^'[a-z0-9_]+'$/);
    const logged = new Set(found.map((f) => f.value.slice(1, -1)));
    for (const event of logged) expect(messageIdFor(event), `${event} has no MESSAGE_ID in src/log/message-ids.ts`).toMatch(/^[0-9a-f]{32}$/);
    expect(Object.keys(EVENTS).filter((e) => !logged.has(e))).toEqual([]);
  });

  it('ids are 128-bit, lower-case hex, unique; subjects are one short line', () => {
    const ids = Object.values(EVENTS).map((e) => e.id);
    for (const id of ids) expect(id).toMatch(/^[0-9a-f]{32}$/);
    expect(new Set(ids).size).toBe(ids.length);
    for (const [event, e] of Object.entries(EVENTS)) {
      expect(e.subject, event).not.toMatch(/\n/);
      expect(e.subject.length, event).toBeLessThanOrEqual(100);
      expect(e.text.trim().length, event).toBeGreaterThan(40);
    }
    expect(messageIdFor('no_such_event')).toBeUndefined();
    expect(messageIdFor('__proto__')).toBeUndefined();
    expect(messageIdFor(undefined)).toBeUndefined();
  });

  it('the journald sink adds the MESSAGE_ID of the event, and no record field can set one', () => {
    expect(journalFields({ mtaproxy_event: 'reload_rejected' })).toEqual({ MTAPROXY_EVENT: 'reload_rejected', MESSAGE_ID: EVENTS.reload_rejected.id });
    expect(journalFields({ mtaproxy_event: 'status', message_id: 'forged' }).MESSAGE_ID).toBe(EVENTS.status.id);
    expect(journalFields({ message_id: 'forged', session: 'a' })).toEqual({ SESSION: 'a' });
  });

  it('docs/log-codes.md and packaging/mtaproxy.catalog are rendered from the table (npm run log-codes)', () => {
    expect(readFileSync(join(ROOT, 'docs/log-codes.md'), 'utf8')).toBe(renderLogCodes());
    expect(readFileSync(join(ROOT, 'packaging/mtaproxy.catalog'), 'utf8')).toBe(renderCatalog());
  });

  it('the catalog is in systemd catalog format: one entry per id with Subject, Defined-By, Support', () => {
    const catalog = renderCatalog();
    const entries = catalog.split(/^-- /m).slice(1);
    expect(entries.map((e) => e.slice(0, 32))).toEqual(Object.values(EVENTS).map((e) => e.id));
    for (const entry of entries) {
      const [head = '', ...body] = entry.split('\n\n');
      expect(head.split('\n').slice(1)).toEqual([expect.stringMatching(/^Subject: \S/), 'Defined-By: mtaproxy', 'Support: man:mtaproxy(8)', 'Documentation: file:///usr/share/doc/mtaproxy/log-codes.md']);
      // catalog.c: "#" starts a comment and "-- " a new entry, anywhere in a line's first column
      for (const line of body.join('\n').split('\n')) {
        expect(line).not.toMatch(/^(#|-- )/);
        expect(line.length).toBeLessThanOrEqual(76);
      }
    }
    expect(wrap('a b c', 3)).toEqual(['a b', 'c']);
    expect(wrap(`${'x'.repeat(10)} y`, 4)).toEqual(['x'.repeat(10), 'y']);
  });
});
