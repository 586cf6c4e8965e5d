// The relay front-end (src/relay/, docs/relay.md) against real peers: a daemon with [relay], a real
// DNS server (dnsmasq) holding the MX records, smtp-server destinations on 127.0.0.20/.21 and a
// scriptable one on .22, all on one port (relay.destination_port), and nodemailer's SMTP client
// (SMTP and LMTP) as the sending MTA. What the MTA is told is the destinations' own replies.
import { connect, type Socket } from 'node:net';
import SMTPConnection from 'nodemailer/lib/smtp-connection/index.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { dnsmasqUnavailable, startDns, type DnsServer } from '../helpers/dnsmasq.js';
import { fakeMx, type FakeMx } from '../helpers/fake-mx.js';
import { freePort, SECRET, startDaemon, type RunningDaemon } from '../helpers/daemon.js';
import { ControlClient } from '../../src/client/index.js';
import { destination, type Destination } from '../helpers/smtp-destination.js';

interface Sent {
  accepted: string[];
  rejected: string[];
  rejectedErrors?: { recipient: string; response: string; responseCode: number }[];
  response: string;
}

/** One message over a fresh nodemailer SMTPConnection (lmtp: the LMTP listener). */
async function send(port: number, from: string, to: string[], body = 'Subject: t\r\n\r\nhello\r\n', o: { lmtp?: boolean; auth?: { user: string; pass: string }; secure?: boolean } = {}): Promise<Sent> {
  const conn = new SMTPConnection({ host: '127.0.0.1', port, lmtp: o.lmtp ?? false, tls: { rejectUnauthorized: false }, ignoreTLS: o.secure !== true, requireTLS: o.secure === true, name: 'mta.test' });
  await new Promise<void>((resolve, reject) => {
    conn.once('error', reject);
    conn.connect(() => resolve());
  });
  try {
    if (o.auth !== undefined) await new Promise<void>((resolve, reject) => conn.login(o.auth as { user: string; pass: string }, (err) => (err ? reject(err) : resolve())));
    return await new Promise<Sent>((resolve, reject) => {
      conn.send({ from, to }, body, (err, info) => (err ? reject(err) : resolve(info as unknown as Sent)));
    });
  } finally {
    conn.quit();
  }
}

/** A raw SMTP dialogue: writes each line, returns every reply line the server sent. */
async function dialogue(port: number, lines: string[], waitMs = 400): Promise<string> {
  const s: Socket = connect(port, '127.0.0.1');
  let got = '';
  s.on('data', (c: Buffer) => (got += c.toString('latin1')));
  await new Promise<void>((resolve) => s.once('connect', () => resolve()));
  for (const l of lines) {
    await new Promise((r) => setTimeout(r, 60));
    s.write(`${l}\r\n`);
  }
  await new Promise((r) => setTimeout(r, waitMs));
  s.destroy();
  return got;
}

const unavailable = dnsmasqUnavailable();

describe.skipIf(unavailable !== null)(`relay front-end${unavailable === null ? '' : ` (skipped: ${unavailable})`}`, () => {
  let dns: DnsServer;
  let port: number;
  let a: Destination;
  let b: Destination;
  let dropper: FakeMx;
  let daemon: RunningDaemon;
  let smtpPort: number;
  let lmtpPort: number;
  let relay5Port: number;

  beforeAll(async () => {
    port = await freePort('127.0.0.20');
    a = await destination('127.0.0.20', port);
    b = await destination('127.0.0.21', port);
    dropper = await fakeMx({ host: '127.0.0.22', port });
    dns = await startDns({
      mx: { 'a.test': [[10, 'mx-a.test']], 'a-alias.test': [[5, 'mx-a.test']], 'b.test': [[10, 'mx-b.test']], 'limited.test': [[10, 'mx-limited.test']], 'shared.test': [[10, 'mx-shared.test']], 'eq1.test': [[10, 'mx-a.test'], [10, 'mx-a2.test']], 'eq2.test': [[10, 'mx-a2.test'], [10, 'mx-a.test']], 'drop.test': [[10, 'mx-drop.test']], 'nullmx.test': [[0, '.']] },
      hosts: { 'mx-a.test': '127.0.0.20', 'mx-b.test': '127.0.0.21', 'mx-limited.test': '127.0.0.20', 'mx-shared.test': '127.0.0.20', 'mx-a2.test': '127.0.0.20', 'mx-drop.test': '127.0.0.22' },
    });
    daemon = await startDaemon({
      extra: [
        `dns_servers = ["${dns.server}"]`,
        '[egress]',
        'source_ips = ["127.0.0.1", "127.0.0.2"]',
        `ports = [${port}]`,
        'allow_private_destinations = true',
        'throttle_wait_timeout = "1s"',
        '[derived_throttle]',
        'destinations = [{ host = "mx-limited.test", max_messages_per_hour = 60 }, { host = "mx-shared.test", key = "shared@{source_ip}", mode = "average", max_connections = 1 }]',
        '[relay]',
        'listen = ["127.0.0.1:0", "127.0.0.5:0"]',
        'lmtp_listen = "127.0.0.1:0"',
        'ehlo_name = "relay.test"',
        `destination_port = ${port}`,
        'destination_tls = "opportunistic"',
        'source_ip = "127.0.0.1"',
        'source_by_sender_domain = { "b-sender.test" = "127.0.0.2" }',
        'source_by_local_address = { "127.0.0.5" = "127.0.0.2" }',
      ].join('\n'),
    });
    const portOf = (fe: string): number => Number(new RegExp(`listener: ${fe} on 127\\.0\\.0\\.1:(\\d+)`).exec(daemon.lines.join('\n'))?.[1] ?? 0);
    smtpPort = portOf('relay-smtp');
    relay5Port = Number(/listener: relay-smtp on 127\.0\.0\.5:(\d+)/.exec(daemon.lines.join('\n'))?.[1] ?? 0);
    lmtpPort = portOf('relay-lmtp');
    expect(smtpPort).toBeGreaterThan(0);
    expect(lmtpPort).toBeGreaterThan(0);
  }, 30_000);

  afterAll(async () => {
    await daemon?.stop();
    await dns?.stop();
    a?.server.close();
    b?.server.close();
    dropper?.close();
  });

  it('delivers through the MX of the recipient domain from the default source, with the destination\'s own reply', async () => {
    const before = a.transactions.length;
    const sent = await send(smtpPort, 'sender@x.test', ['u1@a.test', 'u2@a.test'], 'Subject: hi\r\n\r\n.leading dot\r\n8-bit: \u00e9\r\n');
    expect(sent.accepted).toEqual(['u1@a.test', 'u2@a.test']);
    // smtp-server's own final reply, passed through
    expect(sent.response).toMatch(/^250 OK: message queued/);
    const t = a.transactions[before];
    expect(t?.remoteAddress).toBe('127.0.0.1');
    expect(t?.from).toBe('sender@x.test');
    expect(t?.to).toEqual(['u1@a.test', 'u2@a.test']);
    expect(t?.body).toContain('\r\n.leading dot\r\n');
    expect(t?.body).toContain('8-bit: \u00e9');
  });

  it('chooses the source by the envelope sender domain', async () => {
    const before = b.transactions.length;
    await send(smtpPort, 'news@b-sender.test', ['v@b.test']);
    expect(b.transactions[before]?.remoteAddress).toBe('127.0.0.2');
    // a subdomain of a listed domain uses its rule too
    await send(smtpPort, 'news@mail.b-sender.test', ['v@b.test']);
    expect(b.transactions[before + 1]?.remoteAddress).toBe('127.0.0.2');
  });

  it('chooses the source by the relay address the MTA connected to (one relay address per source IP)', async () => {
    const before = a.transactions.length;
    const s5 = new SMTPConnection({ host: '127.0.0.5', port: relay5Port, ignoreTLS: true, name: 'mta.test' });
    await new Promise<void>((resolve, reject) => {
      s5.once('error', reject);
      s5.connect(() => resolve());
    });
    await new Promise<void>((resolve, reject) => s5.send({ from: 's@x.test', to: ['la@a.test'] }, 'Subject: l\r\n\r\nx\r\n', (err) => (err ? reject(err) : resolve())));
    s5.quit();
    expect(a.transactions[before]?.remoteAddress).toBe('127.0.0.2');
    // the same MTA on the other relay address: the default
    await send(smtpPort, 's@x.test', ['lb@a.test']);
    expect(a.transactions[before + 1]?.remoteAddress).toBe('127.0.0.1');
  });

  it('gives each recipient the destination\'s own refusal, and delivers to the others', async () => {
    const before = a.transactions.length;
    const sent = await send(smtpPort, 's@x.test', ['reject-me@a.test', 'ok@a.test']);
    expect(sent.accepted).toEqual(['ok@a.test']);
    expect(sent.rejected).toEqual(['reject-me@a.test']);
    expect(sent.rejectedErrors?.[0]?.response).toMatch(/^550 5\.1\.1 no such user here/);
    expect(a.transactions[before]?.to).toEqual(['ok@a.test']);
  });

  it('SMTP: recipients of a second destination in one transaction get 452 4.5.3, the first destination\'s are delivered', async () => {
    const before = a.transactions.length;
    const sent = await send(smtpPort, 's@x.test', ['one@a.test', 'two@b.test', 'three@a-alias.test']);
    // a-alias.test has the same MX host as a.test: the same destination
    expect(sent.accepted).toEqual(['one@a.test', 'three@a-alias.test']);
    expect(sent.rejectedErrors?.[0]?.response).toMatch(/^452 4\.5\.3 mtaproxy relay: b\.test is another destination/);
    expect(a.transactions[before]?.to).toEqual(['one@a.test', 'three@a-alias.test']);
  });

  it('SMTP: domains with the same MX hosts of equal preference are one destination, however they were shuffled', async () => {
    // each lookup shuffles equal preferences (RFC 5321 §5.1): six transactions, each must take both
    for (let i = 0; i < 6; i++) {
      const sent = await send(smtpPort, 's@x.test', [`e${i}@eq1.test`, `f${i}@eq2.test`]);
      expect(sent.accepted).toEqual([`e${i}@eq1.test`, `f${i}@eq2.test`]);
    }
  });

  it('LMTP: one transaction spans destinations, with a reply per recipient after the body', async () => {
    const beforeA = a.transactions.length;
    const beforeB = b.transactions.length;
    const sent = await send(lmtpPort, 's@x.test', ['l1@a.test', 'l2@b.test', 'reject-x@b.test', 'l3@a.test'], 'Subject: lmtp\r\n\r\nbody\r\n', { lmtp: true });
    expect(sent.accepted.sort()).toEqual(['l1@a.test', 'l2@b.test', 'l3@a.test']);
    expect(sent.rejected).toEqual(['reject-x@b.test']);
    expect(a.transactions[beforeA]?.to).toEqual(['l1@a.test', 'l3@a.test']);
    expect(b.transactions[beforeB]?.to).toEqual(['l2@b.test']);
    expect(b.transactions[beforeB]?.body).toContain('Subject: lmtp');
  });

  it('LMTP: a destination that accepted none of its recipients gets RSET and its connection goes back to the pool', async () => {
    const beforeA = a.transactions.length;
    const sent = await send(lmtpPort, 's@x.test', ['k1@a.test', 'reject-k@b.test'], 'Subject: k\r\n\r\nx\r\n', { lmtp: true });
    expect(sent.accepted).toEqual(['k1@a.test']);
    expect(a.transactions[beforeA]?.to).toEqual(['k1@a.test']);
    // no connection stays lent: every pooled key shows active=0
    const deadline = Date.now() + 5000;
    let st = '';
    while (Date.now() < deadline) {
      st = (await daemon.cli(['status'])).stdout;
      if (!/smtp_pool: .* active=[1-9]/.test(st)) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    expect(st).toMatch(/smtp_pool: 127\.0\.0\.1 -> 127\.0\.0\.21:\d+ .*active=0 cached=1/);
  });

  it('answers null MX, unknown domains and a destination lost mid-DATA as RFC 7505 / 5321 say, never 250', async () => {
    const nul = await send(smtpPort, 's@x.test', ['n@nullmx.test', 'o@a.test']).catch((e: Error & { response?: string }) => e);
    expect(JSON.stringify(nul)).toMatch(/556 5\.1\.10/);
    const got = await dialogue(smtpPort, ['EHLO mta.test', 'MAIL FROM:<s@x.test>', 'RCPT TO:<u@nowhere.test>', 'QUIT']);
    expect(got).toMatch(/\r\n550 5\.1\.2 mtaproxy relay: nowhere\.test does not exist/);
    const dropped = await dialogue(smtpPort, ['EHLO mta.test', 'MAIL FROM:<s@x.test>', 'RCPT TO:<u@drop.test>', 'DATA', 'Subject: x\r\n\r\nDROP now\r\n.', 'QUIT'], 800);
    expect(dropped).toMatch(/\r\n354 /);
    expect(dropped).toMatch(/\r\n451 4\.4\.2 mtaproxy relay: the destination connection failed/);
    expect(dropped).not.toMatch(/\r\n250 2\.0\.0 queued/);
  });

  it('holds relay traffic to the per-destination message limit of [derived_throttle]', async () => {
    const before = a.transactions.length;
    const first = await send(smtpPort, 's@x.test', ['m1@limited.test']);
    expect(first.accepted).toEqual(['m1@limited.test']);
    // 60 per hour: a burst of one, the next token in a minute, longer than throttle_wait_timeout
    const second = await send(smtpPort, 's@x.test', ['m2@limited.test']).catch((e: Error) => e);
    expect(String(JSON.stringify(second))).toMatch(/451 4\.4\.5 mtaproxy relay: message rate of 127\.0\.0\.1>mx-limited\.test:\d+ reached/);
    expect(a.transactions.length).toBe(before + 1);
    const st = await daemon.cli(['status', '--throttles', '--json']);
    expect(st.stdout).toMatch(/127\.0\.0\.1>mx-limited\.test/);
  });

  it('shares a throttle with native MTAs through a [derived_throttle] rule\'s key', async () => {
    const mta = await ControlClient.connect({ host: '127.0.0.1', port: daemon.port, name: 'native-a', secret: SECRET, tls: { rejectUnauthorized: false } });
    try {
      // the cluster-wide limit, stated by the native MTA and by the rule: one connection
      expect(await mta.declare({ key: 'shared@127.0.0.1', sourceIp: '127.0.0.1', maxConnections: 1, maxMessagesPerHour: 3600, mode: 'average' })).toContain('max_connections=1');
      const lease = await mta.acquire('shared@127.0.0.1', 'connection');
      expect(lease).not.toBeNull();
      // the native MTA holds the only slot: the relay waits throttle_wait_timeout (1s), then 451
      const busy = await send(smtpPort, 's@x.test', ['sh1@shared.test']).catch((e: Error) => e);
      expect(JSON.stringify(busy)).toMatch(/451 4\.4\.5 mtaproxy relay: throttle shared@127\.0\.0\.1 is busy/);
      await mta.release(lease as number);
      const sent = await send(smtpPort, 's@x.test', ['sh2@shared.test']);
      expect(sent.accepted).toEqual(['sh2@shared.test']);
      const view = JSON.parse((await daemon.cli(['status', '--throttles', '--key', 'shared@', '--json'])).stdout) as { throttles: { key: string; sessions: { session: string }[] }[] };
      const t = view.throttles.find((x) => x.key === 'shared@127.0.0.1');
      expect(t?.sessions.map((m) => m.session).sort()).toEqual(['derived', 'native-a']);
    } finally {
      await mta.quit();
    }
  });

  it('shares destination connections between relay sessions', async () => {
    const conns = a.connections;
    await send(smtpPort, 's@x.test', ['r1@a.test']);
    await send(smtpPort, 's@x.test', ['r2@a.test']);
    await send(lmtpPort, 's@x.test', ['r3@a.test'], undefined, { lmtp: true });
    // the first may open one (an earlier test's may have aged out), the others reuse it
    expect(a.connections - conns).toBeLessThanOrEqual(1);
  });

  it('shows in mtaproxy status and the metrics', async () => {
    const st = await daemon.cli(['status']);
    expect(st.stdout).toMatch(/relay: connections=\d+\(in_transaction=0\) transactions=([1-9]\d*)/);
    const json = JSON.parse((await daemon.cli(['status', '--json'])).stdout) as { records: { status_line: string; relay_transactions?: number }[] };
    expect(json.records.find((r) => r.status_line === 'relay')?.relay_transactions).toBeGreaterThan(0);
  });

  it('serves a socket systemd passes as FileDescriptorName=relay-smtp', async () => {
    const p = await freePort();
    const d = await startDaemon({
      command: ['systemd-socket-activate', '-l', `127.0.0.1:${p}`, '--fdname=relay-smtp'],
      extra: [`dns_servers = ["${dns.server}"]`, '[egress]', 'source_ips = ["127.0.0.1"]', `ports = [${port}]`, 'allow_private_destinations = true', '[relay]', 'ehlo_name = "relay.test"', `destination_port = ${port}`, 'source_ip = "127.0.0.1"'].join('\n'),
    });
    try {
      const before = a.transactions.length;
      const sent = await send(p, 's@x.test', ['act@a.test']);
      expect(sent.accepted).toEqual(['act@a.test']);
      expect(a.transactions.length).toBe(before + 1);
      await d.waitForLine(/sockets="3=relay-smtp"/);
    } finally {
      await d.stop();
    }
  }, 60_000);

  it('refuses what it cannot send: no greeting, LHLO on SMTP, nested MAIL, no recipients', async () => {
    const got = await dialogue(smtpPort, ['MAIL FROM:<s@x.test>', 'LHLO mta.test', 'EHLO mta.test', 'MAIL FROM:<s@x.test>', 'MAIL FROM:<s@x.test>', 'DATA', 'QUIT']);
    expect(got).toMatch(/^220 relay\.test ESMTP mtaproxy relay\r\n503 5\.5\.1 [^\r]*EHLO first/);
    expect(got).toMatch(/\r\n500 5\.5\.1 mtaproxy relay: this is SMTP/);
    expect(got).toMatch(/\r\n503 5\.5\.1 mtaproxy relay: nested MAIL/);
    expect(got).toMatch(/\r\n554 5\.5\.1 mtaproxy relay: no valid recipients/);
    expect(got).toMatch(/\r\n221 /);
  });
});

describe.skipIf(unavailable !== null)('relay front-end: AUTH and source rules', () => {
  let dns: DnsServer;
  let port: number;
  let a: Destination;
  let daemon: RunningDaemon;
  let smtpPort: number;

  beforeAll(async () => {
    port = await freePort('127.0.0.23');
    a = await destination('127.0.0.23', port);
    dns = await startDns({ mx: { 'a.test': [[10, 'mx-a.test']] }, hosts: { 'mx-a.test': '127.0.0.23' } });
    daemon = await startDaemon({
      extra: [
        `dns_servers = ["${dns.server}"]`,
        '[egress]',
        'source_ips = ["127.0.0.1", "127.0.0.3"]',
        `ports = [${port}]`,
        'allow_private_destinations = true',
        '[relay]',
        'listen = "127.0.0.1:0"',
        'ehlo_name = "relay.test"',
        `destination_port = ${port}`,
        'accounts = [{ username = "mta-a", password = "pw-a-0123456789", source_ip = "127.0.0.3" }, { username = "mta-b", password = "pw-b-0123456789" }]',
      ].join('\n'),
    });
    smtpPort = Number(/listener: relay-smtp on 127\.0\.0\.1:(\d+)/.exec(daemon.lines.join('\n'))?.[1] ?? 0);
  }, 30_000);

  afterAll(async () => {
    await daemon?.stop();
    await dns?.stop();
    a?.server.close();
  });

  it('an authenticated MTA sends from its account\'s source IP', async () => {
    const before = a.transactions.length;
    const sent = await send(smtpPort, 's@x.test', ['u@a.test'], undefined, { auth: { user: 'mta-a', pass: 'pw-a-0123456789' }, secure: true });
    expect(sent.accepted).toEqual(['u@a.test']);
    expect(a.transactions[before]?.remoteAddress).toBe('127.0.0.3');
  });

  it('requires AUTH, offers it only after STARTTLS, refuses bad credentials', async () => {
    const plain = await dialogue(smtpPort, ['EHLO mta.test', `AUTH PLAIN ${Buffer.from('\0mta-a\0pw-a-0123456789').toString('base64')}`, 'MAIL FROM:<s@x.test>', 'QUIT']);
    expect(plain).toMatch(/\r\n250[- ]STARTTLS\r\n/);
    expect(plain).not.toMatch(/AUTH PLAIN LOGIN/);
    expect(plain).toMatch(/\r\n538 5\.7\.11 /);
    expect(plain).toMatch(/\r\n530 5\.7\.0 mtaproxy relay: authentication required/);
    await expect(send(smtpPort, 's@x.test', ['u@a.test'], undefined, { auth: { user: 'mta-a', pass: 'wrong' }, secure: true })).rejects.toThrow(/535 5\.7\.8/);
  });

  it('no rule chooses a source: 451 4.3.5 with the reason, nothing sent', async () => {
    const before = a.transactions.length;
    const err = await send(smtpPort, 's@x.test', ['u@a.test'], undefined, { auth: { user: 'mta-b', pass: 'pw-b-0123456789' }, secure: true }).catch((e: Error) => e);
    expect(String(err)).toMatch(/451 4\.3\.5 mtaproxy relay: no source IP for this mail/);
    expect(a.transactions.length).toBe(before);
  });
});
