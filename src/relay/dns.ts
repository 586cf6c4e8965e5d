// MX and address lookups for the relay (the shell around smtp/mx.ts): Node's c-ares resolver,
// pointed at `dns_servers` when set, else at /etc/resolv.conf's. No cache of its own: run a
// caching resolver (unbound, systemd-resolved) next to the proxy, as for any MTA.
import { Resolver } from 'node:dns/promises';
import { mxPlan, type MxPlan, type MxRecord } from '../smtp/mx.js';

export type Route =
  | { readonly ok: true; readonly hosts: readonly { readonly name: string; readonly addresses: readonly string[] }[] }
  | { readonly ok: false; readonly code: number; readonly text: string };

const NOT_FOUND = new Set(['ENOTFOUND', 'ENODATA']);

export class RelayDns {
  readonly #resolver: Resolver;
  constructor(servers: readonly string[], timeoutMs = 5000) {
    this.#resolver = new Resolver({ timeout: timeoutMs, tries: 2 });
    if (servers.length > 0) this.#resolver.setServers([...servers]);
  }

  /** Where mail for `domain` goes, for a source of `family`: the MX hosts in order with their addresses. */
  async route(domain: string, family: 4 | 6): Promise<Route> {
    let records: MxRecord[] | null;
    try {
      records = await this.#resolver.resolveMx(domain);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code ?? '';
      if (code === 'ENOTFOUND') return { ok: false, code: 550, text: `5.1.2 mtaproxy relay: ${domain} does not exist (DNS: NXDOMAIN)` };
      if (code !== 'ENODATA') return { ok: false, code: 451, text: `4.4.3 mtaproxy relay: MX lookup of ${domain} failed (${code || (err as Error).message}); try again later` };
      records = null;
    }
    const plan: MxPlan = mxPlan(domain, records);
    if (plan.kind === 'null') return { ok: false, code: 556, text: `5.1.10 mtaproxy relay: ${domain} accepts no mail (null MX, RFC 7505)` };
    const hosts: { name: string; addresses: string[] }[] = [];
    let temporary: string | null = null;
    for (const name of plan.hosts) {
      try {
        const addresses = family === 4 ? await this.#resolver.resolve4(name) : await this.#resolver.resolve6(name);
        if (addresses.length > 0) hosts.push({ name, addresses });
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code ?? '';
        if (!NOT_FOUND.has(code)) temporary ??= `${name}: ${code || (err as Error).message}`;
      }
    }
    if (hosts.length > 0) return { ok: true, hosts };
    if (temporary !== null) return { ok: false, code: 451, text: `4.4.3 mtaproxy relay: address lookup for the MX hosts of ${domain} failed (${temporary}); try again later` };
    if (records === null) return { ok: false, code: 550, text: `5.1.2 mtaproxy relay: ${domain} has no MX and no IPv${family} address` };
    return { ok: false, code: 451, text: `4.4.4 mtaproxy relay: no MX host of ${domain} (${plan.hosts.join(', ')}) has an IPv${family} address` };
  }
}
