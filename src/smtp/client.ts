// The proxy as the SMTP client of a destination, pure: what to send next while opening a
// connection (greeting, EHLO, STARTTLS per the TLS policy, EHLO again) and what a reply means.
// The shell (connection.ts) owns the socket, the TLS upgrade and the timers, and calls these.
import { parseEhlo, type Extensions } from './ehlo.js';
import { replySummary, type Reply } from './reply.js';

/**
 * TLS toward the destination, as MTAs deliver: `none`; `opportunistic` (STARTTLS when offered,
 * no certificate check, plaintext if not offered or if it fails before the handshake: Postfix's
 * `may`); `required` (STARTTLS or no delivery; with `verifyName` the certificate must be valid for
 * that name: Postfix's `verify`/`secure`, else `encrypt`).
 */
export type TlsMode = 'none' | 'opportunistic' | 'required';

export interface TlsPolicy {
  readonly mode: TlsMode;
  /** check the destination's certificate against this name (mode required only) */
  readonly verifyName: string | null;
  /** SNI sent in the ClientHello, or null for none */
  readonly sni: string | null;
}

export type OpenPhase = 'greeting' | 'ehlo' | 'helo' | 'starttls' | 'ehlo-tls';

/** The next thing to do while opening. */
export type OpenStep =
  | { readonly do: 'send'; readonly line: string; readonly phase: OpenPhase }
  | { readonly do: 'starttls' }
  | { readonly do: 'ready'; readonly ehlo: Reply; readonly extensions: Extensions }
  | { readonly do: 'fail'; readonly code: number; readonly message: string; readonly reply: Reply | null };

export interface OpenState {
  readonly phase: OpenPhase;
  readonly ehloName: string;
  readonly policy: TlsPolicy;
  /** the EHLO reply before STARTTLS (kept if STARTTLS is refused) */
  readonly plainEhlo: Reply | null;
}

/** Proxy-made failure replies: 4xx so the MTA retries, with text saying they are the proxy's. */
export const SMTP_PROXY_CODES = {
  /** the destination's greeting or EHLO was a failure, or it broke the protocol */
  destination: 421,
  /** required TLS not possible */
  tls: 421,
} as const;

function failed(reply: Reply, what: string): OpenStep {
  // 5xx greeting (RFC 5321 §3.1: 554 "no SMTP service here") is the destination's own answer:
  // keep its code class so the MTA bounces on 5xx and defers on 4xx
  const code = reply.code >= 500 ? 554 : 421;
  return { do: 'fail', code, message: `destination ${what}: ${replySummary(reply)}`, reply };
}

/** After a reply in `state.phase`, what next. */
export function openStep(state: OpenState, reply: Reply): OpenStep {
  switch (state.phase) {
    case 'greeting':
      if (reply.code !== 220) return failed(reply, 'greeting');
      return { do: 'send', line: `EHLO ${state.ehloName}`, phase: 'ehlo' };
    case 'ehlo': {
      if (reply.code !== 250) {
        // RFC 5321 §3.2: a server that does not know EHLO gets HELO (no extensions, so no STARTTLS)
        if (reply.code >= 500 && state.policy.mode !== 'required') return { do: 'send', line: `HELO ${state.ehloName}`, phase: 'helo' };
        return failed(reply, 'EHLO');
      }
      const extensions = parseEhlo(reply);
      if (state.policy.mode !== 'none' && extensions.has('STARTTLS')) return { do: 'send', line: 'STARTTLS', phase: 'starttls' };
      if (state.policy.mode === 'required') return { do: 'fail', code: SMTP_PROXY_CODES.tls, message: 'TLS is required but the destination does not offer STARTTLS', reply };
      return { do: 'ready', ehlo: reply, extensions };
    }
    case 'helo':
      if (reply.code !== 250) return failed(reply, 'HELO');
      return { do: 'ready', ehlo: reply, extensions: new Map() };
    case 'starttls':
      if (reply.code === 220) return { do: 'starttls' };
      if (state.policy.mode === 'required') return { do: 'fail', code: SMTP_PROXY_CODES.tls, message: `TLS is required but STARTTLS was refused: ${replySummary(reply)}`, reply };
      // opportunistic: go on in plaintext on this connection; its EHLO before STARTTLS stays
      // valid (RFC 3207 §4: the client may continue after a refused STARTTLS)
      if (state.plainEhlo === null) return failed(reply, 'STARTTLS');
      return { do: 'ready', ehlo: state.plainEhlo, extensions: parseEhlo(state.plainEhlo) };
    case 'ehlo-tls': {
      if (reply.code !== 250) return failed(reply, 'EHLO after STARTTLS');
      return { do: 'ready', ehlo: reply, extensions: parseEhlo(reply) };
    }
  }
}

/**
 * Is a reply to a transaction command "the connection is done" (RFC 5321 §3.8: 421 closes)?
 * A connection that answered so is retired, never lent again.
 */
export function closesConnection(reply: Reply): boolean {
  return reply.code === 421;
}
