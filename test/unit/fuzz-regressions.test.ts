// Bugs the fuzz suite (test/fuzz) found, each pinned here by a unit test as well as by its input
// in test/fuzz/corpus/.
import { describe, expect, it } from 'vitest';
import { locateKeys } from '../../src/config/locate.js';
import { formatConfigError, parseConfig } from '../../src/config/parse.js';
import { parseAdminReply } from '../../src/protocol/admin.js';

const SECRET = 'x'.repeat(40);
const io = { readSecretFile: (): string => { throw new Error('no file'); }, isLocalAddress: (): boolean => true };

describe('fuzz regressions', () => {
  it('config: a line of "[" and many spaces without "]" is not cubic to locate (was ~6 s for 2000 spaces, ~15 s for 3000)', () => {
    // valid TOML: an inner array of a multi-line array, written with a long run of spaces
    const text = `auth_shared_secret = "${SECRET}"\nlisten = [\n  [${' '.repeat(3000)}"x",\n  "y"],\n]\n`;
    const start = performance.now();
    const r = parseConfig(text, '/etc/mtaproxy/mtaproxy.toml', io);
    expect(performance.now() - start).toBeLessThan(1000);
    expect(r.ok ? [] : r.errors.map(formatConfigError)).toEqual(['/etc/mtaproxy/mtaproxy.toml:2:1: listen: must be a string or an array of strings']);
    // table headers are still found, spaces inside the brackets and all
    const at = locateKeys('a = 1\n[ egress ]\n  ports = [25]\n[[ socks5.users ]]\n');
    expect([at.get('egress'), at.get('egress.ports'), at.get('socks5.users')]).toEqual([{ line: 2, column: 1 }, { line: 3, column: 3 }, { line: 4, column: 1 }]);
  });

  it('config: an error about a dotted key or a dotted table names its line, not line 1', () => {
    const text = `auth_shared_secret = "${SECRET}"\n\n  lg_verbose.on = true\n[egress]\nmax_tunnels.x = 1\n[socks.x]\ny = 1\n`;
    const r = parseConfig(text, '/etc/mtaproxy/mtaproxy.toml', io);
    expect(r.ok ? [] : r.errors.map(formatConfigError)).toEqual([
      '/etc/mtaproxy/mtaproxy.toml:3:3: lg_verbose: unknown directive; did you mean "log_verbose"?',
      '/etc/mtaproxy/mtaproxy.toml:5:1: egress.max_tunnels: must be a whole number from 1 to 1000000',
      '/etc/mtaproxy/mtaproxy.toml:6:1: socks: unknown directive; did you mean "socks5"?',
    ]);
  });

  it('config: an array of n bad entries is located in O(n), not O(n * file size) (3000 took ~1 s)', () => {
    const run = (n: number): { ms: number; lines: number[] } => {
      const entries = Array.from({ length: n }, (_, i) => `  "10.${(i >> 8) & 255}.${i & 255}.1/8",`);
      const text = `auth_shared_secret = "${SECRET}"\nallow_from = [\n${entries.join('\n')}\n]\n`;
      let best = Infinity;
      let lines: number[] = [];
      // the fastest of 3: what the machine's load adds is not the algorithm's
      for (let k = 0; k < 3; k++) {
        const start = performance.now();
        const r = parseConfig(text, '/etc/mtaproxy/mtaproxy.toml', io);
        best = Math.min(best, performance.now() - start);
        lines = r.ok ? [] : r.errors.map((e) => e.line);
      }
      return { ms: best, lines };
    };
    const small = run(1000);
    const large = run(4000);
    expect(large.lines).toEqual(Array.from({ length: 4000 }, (_, i) => 3 + i));
    // 4x the entries: linear takes ~4x, quadratic ~16x (scaling, not a speed target)
    expect(large.ms / Math.max(small.ms, 1)).toBeLessThan(10);
  });

  it('admin: a reply whose errors or lines are not arrays of strings is refused, not handed to the CLI', () => {
    // `mtaproxy status` did (reply.lines ?? []).join('\n'): a string here threw a TypeError
    expect(parseAdminReply('{"ok":true,"message":"status","lines":"x"}')).toBeNull();
    expect(parseAdminReply('{"ok":false,"message":"","lines":[false]}')).toBeNull();
    expect(parseAdminReply('{"ok":false,"message":"bad","errors":5}')).toBeNull();
    expect(parseAdminReply('[1]')).toBeNull();
    expect(parseAdminReply('{"ok":true,"message":"status","lines":["a","b"]}')).toEqual({ ok: true, message: 'status', lines: ['a', 'b'] });
    expect(parseAdminReply('{"ok":false,"message":"reload failed","errors":["f:1:1: k: m"]}')).toEqual({ ok: false, message: 'reload failed', errors: ['f:1:1: k: m'] });
  });
});
