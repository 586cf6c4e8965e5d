// MX records to the hosts to try, pure (RFC 5321 §5.1, RFC 7505): by preference, lowest first,
// records of equal preference in random order; a domain without MX records is its own implicit
// MX; a null MX ("0 .") says the domain accepts no mail.

/** An MX record as `dns.promises.resolveMx` gives it; `port` (not in DNS) overrides the port, for tests. */
export interface MxRecord {
  exchange: string;
  priority: number;
  port?: number;
}

export function orderMx(records: readonly MxRecord[], random: () => number = Math.random): MxRecord[] {
  const keyed = records.map((r) => ({ r, k: random() }));
  keyed.sort((a, b) => a.r.priority - b.r.priority || a.k - b.k);
  return keyed.map((x) => x.r);
}

export const isNullMx = (r: MxRecord): boolean => r.exchange === '' || r.exchange === '.';

export type MxPlan =
  /** host names to try in this order (lower case, no trailing dot) */
  | { readonly kind: 'hosts'; readonly hosts: readonly string[] }
  /** RFC 7505: the domain accepts no mail */
  | { readonly kind: 'null' };

/**
 * The hosts to try for `domain` from its MX records (null: the domain has none, so it is its own
 * implicit MX, RFC 5321 §5.1). A null MX among other records is ignored (RFC 7505 §3: it must be
 * the only one; the real ones are used).
 */
export function mxPlan(domain: string, records: readonly MxRecord[] | null, random: () => number = Math.random): MxPlan {
  const name = (h: string): string => h.toLowerCase().replace(/\.$/, '');
  if (records === null || records.length === 0) return { kind: 'hosts', hosts: [name(domain)] };
  const real = records.filter((r) => !isNullMx(r));
  if (real.length === 0) return { kind: 'null' };
  const hosts: string[] = [];
  for (const r of orderMx(real, random)) {
    const h = name(r.exchange);
    if (!hosts.includes(h)) hosts.push(h);
  }
  return { kind: 'hosts', hosts };
}
