// MtaproxyTransport (src/client/transport.ts, docs/client.md): nodemailer.createTransport over a
// real daemon in smtp mode, to real SMTP servers (smtp-server, STARTTLS on its built-in
// self-signed certificate) reached through MX overrides: per-domain routing, the source IP, the
// destinations' own per-recipient replies, null MX, MX fallback, TLS policy, connection reuse.
import { createServer, type AddressInfo, type Server } from 'node:net';
import nodemailer from 'nodemailer';
import { SMTPServer } from 'smtp-server';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { ControlClient, DeliveryError, MtaproxyTransport, orderMx, RecipientError, type MtaproxySentMessageInfo, type MtaproxyTransportOptions } from '../../src/client/index.js';
import { SECRET, startDaemon, type RunningDaemon } from '../helpers/daemon.js';

interface Destination {
  server: SMTPServer;
  port: number;
  connections: number;
  secure: number;
  transactions: { connection: string; remoteAddress: string; from: string; to: string[]; body: string }[];
}

/** An MX on loopback: STARTTLS with smtp-server's self-signed certificate; "reject*" gets 550, "later*" 451. */
async function destination(): Promise<Destination> {
  const d: Destination = { server: null as unknown as SMTPServer, port: 0, connections: 0, secure: 0, transactions: [] };
  d.server = new SMTPServer({
    authOptional: true,
    logger: false,
    onConnect(_session, cb) {
      d.connections++;
      cb();
    },
    onSecure(_socket, _session, cb) {
      d.secure++;
      cb();
    },
    onRcptTo(address, _session, cb) {
      if (address.address.startsWith('reject')) return cb(Object.assign(new Error('5.1.1 no such user here'), { responseCode: 550 }));
      if (address.address.startsWith('later')) return cb(Object.assign(new Error('4.2.0 mailbox busy, try later'), { responseCode: 451 }));
      cb();
    },
    onData(stream, session, cb) {
      const chunks: Buffer[] = [];
      stream.on('data', (c: Buffer) => chunks.push(c));
      stream.on('end', () => {
        d.transactions.push({
          connection: session.id,
          remoteAddress: session.remoteAddress,
          from: session.envelope.mailFrom === false ? '' : session.envelope.mailFrom.address,
          to: session.envelope.rcptTo.map((r) => r.address),
          body: Buffer.concat(chunks).toString('utf8'),
        });
        cb();
      });
    },
  });
  await new Promise<void>((resolve) => d.server.listen(0, '127.0.0.1', resolve));
  d.port = (d.server.server.address() as AddressInfo).port;
  return d;
}

let a: Destination;
let b: Destination;
let deadPort = 0;
let dropperPort = 0;
let dropper: Server;
let daemon: RunningDaemon;

/** An MX that refuses "reject*" recipients and drops the connection during every message body. */
function startDropper(): Server {
  return createServer((sock) => {
    let data = false;
    let text = '';
    sock.write('220 dropper ESMTP\r\n');
    sock.on('data', (c: Buffer) => {
      if (data) return sock.destroy();
      text += c.toString('latin1');
      let i: number;
      while ((i = text.indexOf('\r\n')) !== -1) {
        const line = text.slice(0, i);
        text = text.slice(i + 2);
        const verb = line.slice(0, 4).toUpperCase();
        if (verb === 'EHLO') sock.write('250-dropper\r\n250 PIPELINING\r\n');
        else if (verb === 'RCPT' && /<reject/i.test(line)) sock.write('550 5.1.1 dropper: no such user\r\n');
        else if (verb === 'DATA') {
          data = true;
          sock.write('354 go ahead\r\n');
          if (text.length > 0) return sock.destroy();
        } else if (verb === 'QUIT') return void sock.end('221 bye\r\n');
        else sock.write('250 2.1.0 ok\r\n');
      }
    });
    sock.on('error', () => {});
  });
}

beforeAll(async () => {
  [a, b] = await Promise.all([destination(), destination()]);
  // a port nothing listens on: the proxy's connect is refused (442)
  const probe = createServer();
  await new Promise<void>((r) => probe.listen(0, '127.0.0.1', r));
  deadPort = (probe.address() as AddressInfo).port;
  await new Promise<void>((r) => probe.close(() => r()));
  dropper = startDropper();
  await new Promise<void>((r) => dropper.listen(0, '127.0.0.1', r));
  dropperPort = (dropper.address() as AddressInfo).port;
  daemon = await startDaemon({
    extra: `[egress]\nsource_ips = ["127.0.0.2", "127.0.0.3"]\nports = [${a.port}, ${b.port}, ${deadPort}, ${dropperPort}]\nallow_private_destinations = true\nthrottle_wait_timeout = "10s"\n[smtp]\nidle_timeout = "30s"\n`,
  });
});
afterAll(async () => {
  await daemon.stop();
  dropper.close();
  await Promise.all([a, b].map((d) => new Promise<void>((resolve) => d.server.close(() => resolve()))));
});

const transports: MtaproxyTransport[] = [];
const controls: ControlClient[] = [];
afterEach(() => {
  for (const t of transports.splice(0)) t.close();
  for (const c of controls.splice(0)) c.destroy();
});

let names = 0;
function transporter(opts: Partial<MtaproxyTransportOptions> & { name?: string } = {}) {
  const { name, ...rest } = opts;
  const transport = new MtaproxyTransport({
    proxy: { host: '127.0.0.1', port: daemon.port, name: name ?? `app-${++names}`, secret: SECRET },
    source: '127.0.0.2',
    ehlo: 'mail.example.test',
    mx: { 'a.test': `127.0.0.1:${a.port}`, 'b.test': [{ exchange: '127.0.0.1', priority: 10, port: b.port }], 'null.test': [{ exchange: '', priority: 0 }] },
    ...rest,
  });
  transports.push(transport);
  return { transport, mailer: nodemailer.createTransport(transport) };
}

async function send(mailer: nodemailer.Transporter, message: nodemailer.SendMailOptions): Promise<MtaproxySentMessageInfo> {
  return (await mailer.sendMail(message)) as unknown as MtaproxySentMessageInfo;
}

describe('MtaproxyTransport', () => {
  it('delivers to each domain through its MX from the chosen source, with the proxy doing opportunistic STARTTLS', async () => {
    const before = { a: a.transactions.length, b: b.transactions.length, aSecure: a.secure, bSecure: b.secure };
    const sources: string[] = [];
    const { mailer } = transporter({
      source: (domain) => {
        sources.push(domain);
        return domain === 'b.test' ? '127.0.0.3' : '127.0.0.2';
      },
    });
    const info = await send(mailer, {
      from: 'app@example.test',
      to: ['one@a.test', 'two@b.test'],
      bcc: 'three@a.test',
      subject: 'two domains',
      text: 'hello through mtaproxy',
    });
    expect(info.accepted).toEqual(['one@a.test', 'two@b.test', 'three@a.test']);
    expect(info.rejected).toEqual([]);
    expect(info.envelope).toEqual({ from: 'app@example.test', to: ['one@a.test', 'two@b.test', 'three@a.test'] });
    expect(info.messageId).toMatch(/^<.+@example\.test>$/);
    expect(sources.sort()).toEqual(['a.test', 'b.test']);

    const ta = a.transactions.slice(before.a);
    const tb = b.transactions.slice(before.b);
    expect(ta).toHaveLength(1);
    expect(tb).toHaveLength(1);
    expect(ta[0]?.remoteAddress).toBe('127.0.0.2');
    expect(ta[0]?.to).toEqual(['one@a.test', 'three@a.test']);
    expect(tb[0]?.remoteAddress).toBe('127.0.0.3');
    expect(tb[0]?.to).toEqual(['two@b.test']);
    expect(ta[0]?.body).toContain('hello through mtaproxy');
    expect(ta[0]?.body).not.toMatch(/^bcc:/im);
    expect(a.secure - before.aSecure).toBe(1);
    expect(b.secure - before.bSecure).toBe(1);

    const ra = info.mtaproxy.find((r) => r.domain === 'a.test');
    const rb = info.mtaproxy.find((r) => r.domain === 'b.test');
    expect(ra).toMatchObject({ mx: `127.0.0.1:${a.port}`, source: '127.0.0.2', accepted: ['one@a.test', 'three@a.test'], reused: false, attempts: [] });
    expect(ra?.local).toMatch(/^127\.0\.0\.2:\d+$/);
    expect(ra?.tls).toMatch(/^TLSv1\.[23]\/\S+$/);
    expect(ra?.connection).toBeGreaterThan(0);
    expect(rb?.local).toMatch(/^127\.0\.0\.3:\d+$/);
    // the destinations' own final replies
    expect(ra?.response).toMatch(/^250 OK: message queued/);
    expect(info.response.split('\n')).toHaveLength(2);
  });

  it("reports each refused recipient with the destination's exact reply; the message goes to the others", async () => {
    const before = a.transactions.length;
    const { mailer } = transporter();
    const info = await send(mailer, {
      from: 'app@example.test',
      to: ['ok@a.test', 'reject-me@a.test', 'later@b.test', 'reject-too@b.test'],
      subject: 'some refused',
      text: 'x',
    });
    expect(info.accepted).toEqual(['ok@a.test']);
    expect(info.rejected).toEqual(['reject-me@a.test', 'later@b.test', 'reject-too@b.test']);
    expect(info.pending).toEqual([]);
    const byRcpt = new Map(info.rejectedErrors.map((e) => [e.recipient, e]));
    expect(byRcpt.get('reject-me@a.test')).toMatchObject({ responseCode: 550, response: '550 5.1.1 no such user here', command: 'RCPT TO', origin: 'destination', domain: 'a.test', temporary: false });
    expect(byRcpt.get('later@b.test')).toMatchObject({ responseCode: 451, response: '451 4.2.0 mailbox busy, try later', origin: 'destination', temporary: true });
    expect(byRcpt.get('reject-too@b.test')?.responseCode).toBe(550);
    expect(info.rejectedErrors.every((e) => e instanceof RecipientError)).toBe(true);
    expect(a.transactions.slice(before).map((t) => t.to)).toEqual([['ok@a.test']]);
    // b.test refused every recipient: no DATA there, and no line of b.test in the response
    expect(info.response).toMatch(/^250 OK: message queued/);
    expect(info.response).not.toContain('\n');
  });

  it('fails sendMail with the replies when no recipient is accepted', async () => {
    const { mailer } = transporter();
    const err = await mailer.sendMail({ from: 'app@example.test', to: ['reject-1@a.test', 'later-2@b.test'], text: 'x' }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(DeliveryError);
    const e = err as DeliveryError;
    expect(e.code).toBe('EENVELOPE');
    expect(e.rejected).toEqual(['reject-1@a.test', 'later-2@b.test']);
    expect(e.rejectedErrors.map((r) => r.responseCode)).toEqual([550, 451]);
    expect(e.temporary).toBe(false);
    expect(e.message).toContain('<later-2@b.test> 451 4.2.0 mailbox busy, try later');
  });

  it('a null MX (RFC 7505) is 556 5.1.10 for its recipients, without a connection', async () => {
    const { mailer } = transporter();
    const info = await send(mailer, { from: 'app@example.test', to: ['x@null.test', 'y@a.test'], text: 'x' });
    expect(info.accepted).toEqual(['y@a.test']);
    expect(info.rejectedErrors).toHaveLength(1);
    expect(info.rejectedErrors[0]).toMatchObject({ recipient: 'x@null.test', responseCode: 556, command: 'DNS', origin: 'transport' });
    expect(info.rejectedErrors[0]?.response).toMatch(/^556 5\.1\.10 /);
    expect(info.mtaproxy.find((r) => r.domain === 'null.test')?.mx).toBeNull();
  });

  it('resolves MX with resolveMx: preference order, the next MX on a refused connection, no MX means the domain itself', async () => {
    const asked: string[] = [];
    const { mailer } = transporter({
      mx: {},
      port: b.port, // the port of an implicit MX (the domain itself)
      resolveMx: async (domain) => {
        asked.push(domain);
        if (domain === 'c.test') {
          return [
            { exchange: '127.0.0.1', priority: 20, port: a.port },
            { exchange: '127.0.0.1', priority: 10, port: deadPort },
          ];
        }
        if (domain === 'localhost') throw Object.assign(new Error('queryMx ENODATA localhost'), { code: 'ENODATA' });
        throw Object.assign(new Error(`queryMx ENOTFOUND ${domain}`), { code: 'ENOTFOUND' });
      },
    });
    const beforeB = b.transactions.length;
    const info = await send(mailer, { from: 'app@example.test', to: ['c@c.test', 'l@localhost', 'n@nx.test'], text: 'x' });
    expect(asked.sort()).toEqual(['c.test', 'localhost', 'nx.test']);
    expect(info.accepted).toEqual(['c@c.test', 'l@localhost']);
    const c = info.mtaproxy.find((r) => r.domain === 'c.test');
    // the preferred MX (10) refused the connection: the proxy's 442, then the next one
    expect(c?.attempts).toHaveLength(1);
    expect(c?.attempts[0]?.mx).toBe(`127.0.0.1:${deadPort}`);
    expect(c?.attempts[0]?.response).toMatch(/442/);
    expect(c?.mx).toBe(`127.0.0.1:${a.port}`);
    // no MX: the host "localhost" at the transport's port, resolved by the proxy
    expect(info.mtaproxy.find((r) => r.domain === 'localhost')?.mx).toBe(`localhost:${b.port}`);
    expect(b.transactions.slice(beforeB).map((t) => t.to)).toEqual([['l@localhost']]);
    expect(info.rejectedErrors[0]).toMatchObject({ recipient: 'n@nx.test', responseCode: 550, origin: 'transport' });
  });

  it('delivers to an address literal directly, and refuses a message without recipients', async () => {
    const { mailer } = transporter({ port: a.port, ehlo: 'literal.example.test', throttle: 'literal' });
    const before = a.transactions.length;
    const info = await send(mailer, { from: 'app@example.test', envelope: { from: 'app@example.test', to: ['lit@[127.0.0.1]'] }, text: 'x' });
    expect(info.accepted).toEqual(['lit@[127.0.0.1]']);
    expect(info.mtaproxy[0]?.mx).toBe(`127.0.0.1:${a.port}`);
    expect(a.transactions.slice(before).map((t) => t.to)).toEqual([['lit@[127.0.0.1]']]);
    const err = (await mailer.sendMail({ from: 'app@example.test', text: 'x' }).catch((e: unknown) => e)) as Error & { code?: string };
    expect(err.message).toBe('No recipients defined');
    expect(err.code).toBe('EENVELOPE');
  });

  it("all MX hosts down: the proxy's temporary reply, for every recipient of the domain", async () => {
    const { mailer } = transporter({ mx: { 'down.test': `127.0.0.1:${deadPort}` } });
    const err = (await mailer.sendMail({ from: 'app@example.test', to: ['a@down.test', 'b@down.test'], text: 'x' }).catch((e: unknown) => e)) as DeliveryError;
    expect(err).toBeInstanceOf(DeliveryError);
    expect(err.temporary).toBe(true);
    expect(err.rejectedErrors.map((e) => [e.recipient, e.responseCode, e.origin, e.command])).toEqual([
      ['a@down.test', 442, 'proxy', 'CONNECT'],
      ['b@down.test', 442, 'proxy', 'CONNECT'],
    ]);
  });

  it("an MX that drops mid-body: the proxy's 451 for the accepted recipients, never a success; a refused one keeps its 550", async () => {
    const { mailer } = transporter({ mx: { 'drop.test': `127.0.0.1:${dropperPort}` }, throttle: 'drop' });
    const err = (await mailer.sendMail({ from: 'app@example.test', to: ['x@drop.test', 'reject-y@drop.test', 'z@drop.test'], text: 'lost' }).catch((e: unknown) => e)) as DeliveryError;
    expect(err).toBeInstanceOf(DeliveryError);
    const byRcpt = new Map(err.rejectedErrors.map((e) => [e.recipient, e]));
    expect(byRcpt.get('reject-y@drop.test')).toMatchObject({ response: '550 5.1.1 dropper: no such user', command: 'RCPT TO', origin: 'destination' });
    for (const r of ['x@drop.test', 'z@drop.test']) {
      expect(byRcpt.get(r)).toMatchObject({ responseCode: 451, command: 'DATA', origin: 'proxy', temporary: true });
      expect(byRcpt.get(r)?.response).toMatch(/^451 4\.4\.2 mtaproxy: the destination connection failed/);
    }
    expect(err.info.mtaproxy[0]?.accepted).toEqual([]);
  });

  it("tls 'required' with verify fails against a self-signed certificate; opportunistic delivers", async () => {
    const mx = { 'a.test': [{ exchange: 'localhost', priority: 10, port: a.port }] };
    const strict = transporter({ mx, ehlo: 'verify.example.test', tls: 'required', verify: true });
    const before = { tx: a.transactions.length, secure: a.secure };
    const err = (await strict.mailer.sendMail({ from: 'app@example.test', to: 'v@a.test', text: 'x' }).catch((e: unknown) => e)) as DeliveryError;
    expect(err).toBeInstanceOf(DeliveryError);
    expect(err.rejectedErrors[0]).toMatchObject({ responseCode: 421, origin: 'proxy', command: 'CONNECT' });
    // smtp-server's built-in certificate is self-signed (and, with its age, expired): either fails verification
    expect(err.rejectedErrors[0]?.response).toMatch(/^421 TLS with the destination failed: .*(self[- ]signed|certificate has expired)/i);
    expect(a.transactions.length).toBe(before.tx);

    const lax = transporter({ mx, ehlo: 'lax.example.test' });
    const info = await send(lax.mailer, { from: 'app@example.test', to: 'v@a.test', text: 'x' });
    expect(info.accepted).toEqual(['v@a.test']);
    expect(info.mtaproxy[0]?.tls).toMatch(/^TLSv1\.[23]\//);
    // the verifying handshake never completed (the proxy aborts it on the certificate); this one did
    expect(a.secure - before.secure).toBe(1);
    expect(a.transactions.length).toBe(before.tx + 1);
  });

  it("tls 'none' never does STARTTLS", async () => {
    // its own throttle: idle cached connections of the other tests hold the 2 slots of a.test@127.0.0.2
    const { mailer } = transporter({ ehlo: 'plain.example.test', tls: 'none', throttle: 'plain-a' });
    const before = a.secure;
    const info = await send(mailer, { from: 'app@example.test', to: 'p@a.test', text: 'x' });
    expect(info.accepted).toEqual(['p@a.test']);
    expect(info.mtaproxy[0]?.tls).toBe('none');
    expect(a.secure).toBe(before);
  });

  it('refuses verify with tls other than required at construction', () => {
    expect(() => transporter({ tls: 'opportunistic', verify: true })).toThrow(/verify needs tls 'required'/);
  });

  it('two sendMail calls share one destination connection (the proxy pool)', async () => {
    const { mailer } = transporter({ ehlo: 'reuse.example.test' });
    const before = b.connections;
    const first = await send(mailer, { from: 'app@example.test', to: 'r1@b.test', text: 'one' });
    const second = await send(mailer, { from: 'app@example.test', to: 'r2@b.test', text: 'two' });
    expect(b.connections - before).toBe(1);
    expect(first.mtaproxy[0]?.reused).toBe(false);
    expect(second.mtaproxy[0]?.reused).toBe(true);
    expect(second.mtaproxy[0]?.connection).toBe(first.mtaproxy[0]?.connection);
    const [t1, t2] = b.transactions.slice(-2);
    expect(t1?.connection).toBe(t2?.connection);
  });

  it("uses the caller's control session and throttle, declaring nothing itself", async () => {
    const name = 'shared-control';
    const control = await ControlClient.connect({ host: '127.0.0.1', port: daemon.port, name, secret: SECRET });
    controls.push(control);
    const { mailer: undeclared } = transporter({ name, control, throttle: 'app-dest' });
    const err = (await undeclared.sendMail({ from: 'app@example.test', to: 'u@a.test', text: 'x' }).catch((e: unknown) => e)) as DeliveryError;
    expect(err.rejectedErrors[0]).toMatchObject({ responseCode: 553, origin: 'proxy' });

    await control.declare({ key: 'app-dest', sourceIp: '127.0.0.2', maxConnections: 1, maxMessagesPerHour: 1000, mode: 'sum' });
    const { mailer, transport } = transporter({ name, control, throttle: 'app-dest', ehlo: 'own.example.test' });
    const info = await send(mailer, { from: 'app@example.test', to: 'u@a.test', text: 'x' });
    expect(info.accepted).toEqual(['u@a.test']);
    expect(await transport.verify()).toBe(true);
    transport.close(); // not its session: still open
    expect(await control.ping()).toBeGreaterThan(0);
  });

  it('owns and declares its throttles by default (<domain>@<source>, 2 connections)', async () => {
    const { mailer } = transporter({ name: 'owner-app' });
    await send(mailer, { from: 'app@example.test', to: 'd@a.test', text: 'x' });
    const status = await daemon.cli(['status']);
    expect(status.stdout).toMatch(/session\(owner-app\)/);
    // the delivery's throttle is the default key, which the transport declared (undeclared: 553, as above)
    await daemon.waitForLine(/delivery\(owner-app\): smtp 127\.0\.0\.2 -> \S+ throttle=a\.test@127\.0\.0\.2 transactions=1 /);
  });
});

describe('orderMx (RFC 5321 §5.1)', () => {
  it('sorts by preference and shuffles equal preferences', () => {
    const records = [
      { exchange: 'c', priority: 20 },
      { exchange: 'a1', priority: 10 },
      { exchange: 'a2', priority: 10 },
    ];
    const seen = new Set<string>();
    for (let i = 0; i < 64; i++) seen.add(orderMx(records).map((r) => r.exchange).join(','));
    expect([...seen].sort()).toEqual(['a1,a2,c', 'a2,a1,c']);
    let n = 0;
    const fixed = (): number => [0.9, 0.7, 0.2][n++ % 3] as number;
    expect(orderMx(records, fixed).map((r) => r.exchange)).toEqual(['a2', 'a1', 'c']);
  });
});
