import { readFileSync } from 'node:fs';
import { parseConfig, type ConfigResult } from './parse.js';

/** Reads and validates a config file. Never throws: an unreadable file is a ConfigError too. */
export function loadConfigFile(file: string): ConfigResult {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    const reason = (err as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file' : (err as Error).message;
    return { ok: false, errors: [{ file, line: 0, column: 0, key: '', message: `cannot read config: ${reason}` }] };
  }
  return parseConfig(text, file, { readSecretFile: (path) => readFileSync(path, 'utf8') });
}
