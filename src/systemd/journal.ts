// Native journald entries through the systemd-journald binding (sd_journal_send), so every
// structured field of a record becomes a journal field: `journalctl SESSION=server-a` works.
import { createRequire } from 'node:module';
import type { LogSink } from '../log/logger.js';
import { decodeRecord } from '../log/logger.js';
import { messageIdFor } from '../log/message-ids.js';

type JournalMethod = (message: string, fields: Record<string, string>) => void;
interface JournaldBinding {
  emerg: JournalMethod; alert: JournalMethod; crit: JournalMethod; err: JournalMethod;
  warning: JournalMethod; notice: JournalMethod; info: JournalMethod; debug: JournalMethod;
}
type JournaldClass = new (defaults: Record<string, string>) => JournaldBinding;

/**
 * "backlog_ram" -> "BACKLOG_RAM"; journald accepts up to 64 of A-Z, 0-9 and "_", not starting
 * with "_" (trusted fields) or a digit. Returns null for a name that cannot be made valid.
 */
export function journalFieldName(key: string): string | null {
  const name = key.toUpperCase().replace(/[^A-Z0-9_]/g, '_').replace(/^[_0-9]+/, '').slice(0, 64);
  // MESSAGE_ID is the event kind's (message-ids.ts), never a record field's
  if (name === '' || name === 'MESSAGE' || name === 'MESSAGE_ID' || name === 'PRIORITY' || name === 'SYSLOG_IDENTIFIER') return null;
  return name;
}

/** pino level -> syslog priority method of the binding. */
export function journalMethod(level: number): keyof JournaldBinding {
  if (level >= 60) return 'crit';
  if (level >= 50) return 'err';
  if (level >= 40) return 'warning';
  if (level >= 30) return 'info';
  return 'debug';
}

export function journalFields(fields: Record<string, unknown>): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [key, value] of Object.entries(fields)) {
    const name = journalFieldName(key);
    if (name === null || value === undefined || value === null) continue;
    out[name] = typeof value === 'string' ? value : typeof value === 'object' ? JSON.stringify(value) : String(value);
  }
  // the catalog entry `journalctl -x` shows (packaging/mtaproxy.catalog)
  const id = messageIdFor(fields.mtaproxy_event);
  if (id !== undefined) out.MESSAGE_ID = id;
  return out;
}

export function createJournaldSink(identifier = 'mtaproxy'): LogSink {
  const require = createRequire(import.meta.url);
  const Journald = require('systemd-journald') as JournaldClass;
  const journal = new Journald({ syslog_identifier: identifier });
  return {
    write(line) {
      const record = decodeRecord(line);
      journal[journalMethod(record.level)](record.msg, journalFields(record.fields));
    },
    record(record) {
      journal[journalMethod(record.level)](record.msg, journalFields(record.fields));
    },
  };
}
