// Renders the event table (message-ids.ts) as a systemd journal catalog (packaging/mtaproxy.catalog,
// installed as /usr/lib/systemd/catalog/mtaproxy.catalog; `journalctl -x` shows its text) and as
// docs/log-codes.md. Pure; `npm run log-codes` writes both files, test/unit/message-ids.test.ts
// checks they are up to date.
import { EVENTS, type EventInfo } from './message-ids.js';

const WIDTH = 76;

/** Greedy word wrap of one paragraph (a word longer than the width gets a line of its own). */
export function wrap(paragraph: string, width = WIDTH): string[] {
  const lines: string[] = [];
  let line = '';
  for (const word of paragraph.split(/\s+/).filter(Boolean)) {
    if (line === '') line = word;
    else if (line.length + 1 + word.length <= width) line += ` ${word}`;
    else {
      lines.push(line);
      line = word;
    }
  }
  if (line !== '') lines.push(line);
  return lines;
}

const paragraphs = (text: string): string[] => text.split(/\n\s*\n/).map((p) => p.trim()).filter(Boolean);

const entries = (): [string, EventInfo][] => Object.entries(EVENTS);

/**
 * systemd catalog format (catalog.c, journalctl --update-catalog): entries start with
 * "-- MESSAGE_ID", then header fields, an empty line, and the text; "#" lines are comments.
 */
export function renderCatalog(): string {
  const out = [
    '#  mtaproxy journal catalog: what each MESSAGE_ID of mtaproxy means and what to do.',
    '#  Generated from src/log/message-ids.ts by `npm run log-codes`; do not edit.',
    '#  Installed as /usr/lib/systemd/catalog/mtaproxy.catalog; `journalctl --update-catalog`',
    '#  indexes it and `journalctl -x -u mtaproxy` shows the text under each entry.',
    '',
  ];
  for (const [event, e] of entries()) {
    out.push(`-- ${e.id}`, `Subject: ${e.subject}`, 'Defined-By: mtaproxy', 'Support: man:mtaproxy(8)', 'Documentation: file:///usr/share/doc/mtaproxy/log-codes.md', '');
    for (const [i, p] of paragraphs(e.text).entries()) {
      if (i > 0) out.push('');
      out.push(...wrap(p));
    }
    out.push('', ...wrap(`Event: MTAPROXY_EVENT=${event}, level ${e.level}.`), '');
  }
  return `${out.join('\n').trimEnd()}\n`;
}

const cell = (s: string): string => s.replaceAll('|', '\\|');

export function renderLogCodes(): string {
  const out = [
    '# Log codes',
    '',
    '<!-- Generated from src/log/message-ids.ts by `npm run log-codes`; do not edit (test/unit/message-ids.test.ts checks it). -->',
    '',
    'Every entry mtaproxy logs has an event kind, the `MTAPROXY_EVENT` field (`mtaproxy_event` on',
    'stdout, where it is not printed), and in the journal a fixed `MESSAGE_ID` (128 bits, 32 hex',
    'digits) per kind. The packages install a journal catalog,',
    '`/usr/lib/systemd/catalog/mtaproxy.catalog`, and run `journalctl --update-catalog`, so',
    '`journalctl -x` explains each entry with the text below:',
    '',
    '```',
    '$ journalctl -x -u mtaproxy MTAPROXY_EVENT=reload_rejected',
    'Dec 01 20:40:12 mx1 mtaproxy[812]: reload rejected: /etc/mtaproxy/mtaproxy.toml:3:1: auth_shared_secret: is 9 characters; …',
    '░░ Subject: mtaproxy rejected a new configuration; the old one stays in effect',
    '░░ Defined-By: mtaproxy',
    '░░ Support: man:mtaproxy(8)',
    '░░ Documentation: file:///usr/share/doc/mtaproxy/log-codes.md',
    '░░',
    '░░ A reload was rejected (one entry per error, …',
    '```',
    '',
    'Select by id (`journalctl MESSAGE_ID=bca364eff55c459283f30556dbf4e56c`) or, equivalently, by',
    'kind (`journalctl MTAPROXY_EVENT=reload_rejected`). The ids never change; a new kind gets a',
    'new id. Fields of each kind: [operations.md](operations.md#other-events). Outside the journal',
    '(stdout) there is no `MESSAGE_ID`.',
    '',
    '| `MTAPROXY_EVENT` | `MESSAGE_ID` | level | subject |',
    '|---|---|---|---|',
    ...entries().map(([event, e]) => `| [\`${event}\`](#${event}) | \`${e.id}\` | ${cell(e.level)} | ${cell(e.subject)} |`),
    '',
  ];
  for (const [event, e] of entries()) {
    out.push(`## ${event}`, '', `\`MESSAGE_ID=${e.id}\`, ${e.level}: ${e.subject}.`, '');
    for (const p of paragraphs(e.text)) out.push(...wrap(p, 100), '');
  }
  return `${out.join('\n').trimEnd()}\n`;
}
