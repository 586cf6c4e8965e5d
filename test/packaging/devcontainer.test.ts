// .devcontainer.json (JSON with comments) and devcontainer/Dockerfile: parsed and checked here,
// because `devcontainers read-configuration` needs a Docker engine and validates little anyway.
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ROOT } from '../helpers/daemon.js';

/** JSONC -> JSON: drops line and block comments and trailing commas, leaving strings alone. */
function parseJsonc(text: string): unknown {
  let out = '';
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (c === '"') {
      const start = i;
      for (i++; i < text.length && text[i] !== '"'; i++) if (text[i] === '\\') i++;
      out += text.slice(start, i + 1);
    } else if (c === '/' && text[i + 1] === '/') {
      while (i < text.length && text[i] !== '\n') i++;
      out += '\n';
    } else if (c === '/' && text[i + 1] === '*') {
      const end = text.indexOf('*/', i + 2);
      if (end < 0) throw new Error('unterminated /* comment');
      i = end + 1;
    } else {
      out += c;
    }
  }
  return JSON.parse(out.replace(/,(\s*[}\]])/g, '$1'));
}

interface DevContainer {
  name?: string;
  build?: { dockerfile?: string; context?: string };
  postCreateCommand?: string;
  customizations?: { vscode?: { extensions?: string[] } };
}

const CONFIG = join(ROOT, '.devcontainer.json');

describe('devcontainer', () => {
  const config = parseJsonc(readFileSync(CONFIG, 'utf8')) as DevContainer;
  const dockerfile = resolve(dirname(CONFIG), config.build?.dockerfile ?? '');

  it('parses as JSON with comments and names files that exist', () => {
    expect(parseJsonc('// c\n{"a": "//x", /* y */ "b": [1,],}')).toEqual({ a: '//x', b: [1] });
    expect(config.build?.dockerfile).toBe('devcontainer/Dockerfile');
    expect(existsSync(dockerfile)).toBe(true);
    expect(existsSync(resolve(dirname(CONFIG), config.build?.context ?? '-'))).toBe(true);
    expect(config.postCreateCommand).toBe('npm ci');
    expect(config.customizations?.vscode?.extensions).toEqual(expect.arrayContaining(['vitest.explorer', 'ms-vscode.vscode-typescript-next']));
  });

  it('builds on Debian bookworm with Node 20 and has every package CI installs', () => {
    const text = readFileSync(dockerfile, 'utf8');
    const from = text.split('\n').filter((l) => /^FROM\s/i.test(l));
    expect(from).toEqual(['FROM node:20-bookworm']);
    const installed = new Set(/apt-get install[^\n]*\n?((?:.*\\\n)*.*)/.exec(text)?.[0].replace(/\\\n/g, ' ').split(/\s+/) ?? []);
    const ciLine = readFileSync(join(ROOT, '.ci/run'), 'utf8').split('\n').find((l) => l.startsWith('apt-get install')) ?? '';
    const ciPackages = ciLine.replace(/>.*$/, '').split(/\s+/).filter((w) => /^[a-z0-9][a-z0-9.+-]+$/.test(w) && !['apt-get', 'install'].includes(w));
    expect(ciPackages.length).toBeGreaterThan(5);
    expect(ciPackages.filter((p) => !installed.has(p))).toEqual([]);
    expect(text).toMatch(/^ENV npm_config_nodedir=\/usr\/local$/m);
  });
});
