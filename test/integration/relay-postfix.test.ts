// A real Postfix from Debian as the *sending* MTA of the relay front-end (docs/relay.md, the exact
// settings): one instance with `relayhost = [127.0.0.1]:<relay-smtp port>`, one with its transports
// set to `lmtp:inet:127.0.0.1:<relay-lmtp port>`. Mail is submitted to each Postfix over SMTP,
// queued there, and delivered by Postfix's own smtp(8)/lmtp(8) client through mtaproxy to
// smtp-server destinations found by MX records in a real DNS server (dnsmasq). Postfix's log shows
// the destinations' own replies; a destination that drops mid-DATA leaves the message deferred in
// Postfix's queue, not lost.
import { execFileSync } from 'node:child_process';
import SMTPConnection from 'nodemailer/lib/smtp-connection/index.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { dnsmasqUnavailable, startDns, type DnsServer } from '../helpers/dnsmasq.js';
import { fakeMx, type FakeMx } from '../helpers/fake-mx.js';
import { freePort, startDaemon, type RunningDaemon } from '../helpers/daemon.js';
import { postfixUnavailable, startPostfix, type PostfixInstance } from '../helpers/postfix.js';
import { destination, type Destination } from '../helpers/smtp-destination.js';

/** Submits one message to a Postfix instance's smtpd (which queues it for its own delivery). */
async function submit(pf: PostfixInstance, from: string, to: string[], body: string): Promise<void> {
  const conn = new SMTPConnection({ host: pf.host, port: pf.port, ignoreTLS: true, name: 'submitter.test' });
  await new Promise<void>((resolve, reject) => {
    conn.once('error', reject);
    conn.connect(() => resolve());
  });
  await new Promise<void>((resolve, reject) => conn.send({ from, to }, body, (err) => (err ? reject(err) : resolve())));
  conn.quit();
}

/** Postfix's queue (postqueue -p) of an instance. */
function queue(pf: PostfixInstance): string {
  return execFileSync('/usr/sbin/postqueue', ['-c', `${pf.dir}/etc`, '-p'], { encoding: 'utf8' });
}

const unavailable = dnsmasqUnavailable() ?? postfixUnavailable();

describe.skipIf(unavailable !== null)(`relay front-end with Postfix as the sending MTA${unavailable === null ? '' : ` (skipped: ${unavailable})`}`, () => {
  let dns: DnsServer;
  let port: number;
  let a: Destination;
  let b: Destination;
  let dropper: FakeMx;
  let daemon: RunningDaemon;
  let viaSmtp: PostfixInstance;
  let viaLmtp: PostfixInstance;
  let viaSmtp1: PostfixInstance;

  beforeAll(async () => {
    port = await freePort('127.0.0.30');
    a = await destination('127.0.0.30', port);
    b = await destination('127.0.0.31', port);
    dropper = await fakeMx({ host: '127.0.0.32', port });
    dns = await startDns({
      mx: { 'a.test': [[10, 'mx-a.test']], 'b.test': [[10, 'mx-b.test']], 'drop.test': [[10, 'mx-drop.test']] },
      hosts: { 'mx-a.test': '127.0.0.30', 'mx-b.test': '127.0.0.31', 'mx-drop.test': '127.0.0.32' },
    });
    daemon = await startDaemon({
      extra: [
        `dns_servers = ["${dns.server}"]`,
        '[egress]',
        'source_ips = ["127.0.0.1", "127.0.0.2"]',
        `ports = [${port}]`,
        'allow_private_destinations = true',
        '[relay]',
        'listen = "127.0.0.1:0"',
        'lmtp_listen = "127.0.0.1:0"',
        'ehlo_name = "relay.test"',
        `destination_port = ${port}`,
        'source_ip = "127.0.0.1"',
        'source_by_sender_domain = { "news.test" = "127.0.0.2" }',
      ].join('\n'),
    });
    const portOf = (fe: string): number => Number(new RegExp(`listener: ${fe} on 127\\.0\\.0\\.1:(\\d+)`).exec(daemon.lines.join('\n'))?.[1] ?? 0);
    const common = {
      // Postfix retries deferred mail quickly in the test, and never looks up the relay in DNS
      queue_run_delay: '1s',
      minimal_backoff_time: '1s',
      maximal_backoff_time: '2s',
      smtp_tls_security_level: 'may',
      lmtp_tls_security_level: 'none',
      // bounces for refused recipients go to the sender at a.test: let them not disturb counts
      notify_classes: '',
    };
    viaSmtp = await startPostfix({
      address: '127.0.0.33',
      domains: ['a.test', 'b.test', 'drop.test'],
      mainCf: { ...common, relayhost: `[127.0.0.1]:${portOf('relay-smtp')}`, default_transport: 'smtp', relay_transport: 'smtp' },
    });
    // docs/relay.md: one recipient per delivery, so no recipient meets a 452 and waits for a retry
    viaSmtp1 = await startPostfix({
      address: '127.0.0.35',
      domains: ['a.test', 'b.test', 'drop.test'],
      mainCf: { ...common, relayhost: `[127.0.0.1]:${portOf('relay-smtp')}`, default_transport: 'smtp', relay_transport: 'smtp', smtp_destination_recipient_limit: '1' },
    });
    viaLmtp = await startPostfix({
      address: '127.0.0.34',
      domains: ['a.test', 'b.test', 'drop.test'],
      mainCf: { ...common, default_transport: `lmtp:inet:127.0.0.1:${portOf('relay-lmtp')}`, relay_transport: `lmtp:inet:127.0.0.1:${portOf('relay-lmtp')}` },
    });
  }, 90_000);

  afterAll(async () => {
    await viaSmtp?.stop();
    await viaLmtp?.stop();
    await viaSmtp1?.stop();
    await daemon?.stop();
    await dns?.stop();
    a?.server.close();
    b?.server.close();
    dropper?.close();
  });

  it('Postfix relayhost: the mail reaches the destination from the chosen source, Postfix logs the destination\'s reply', async () => {
    const mark = await viaSmtp.mark();
    await submit(viaSmtp, 'news@news.test', ['pf1@a.test'], 'Subject: via postfix\r\n\r\n.dot line\r\nbody\r\n');
    const line = await viaSmtp.waitForLogLine(/to=<pf1@a\.test>.*status=sent/, { since: mark, timeoutMs: 20_000 });
    expect(line).toMatch(/relay=127\.0\.0\.1\[127\.0\.0\.1\]:\d+/);
    // smtp-server's own final reply, as the destination gave it
    expect(line).toMatch(/\(250 OK: message queued\)/);
    const t = a.transactions.find((x) => x.to.includes('pf1@a.test'));
    expect(t?.remoteAddress).toBe('127.0.0.2');
    expect(t?.body).toContain('\r\n.dot line\r\n');
  });

  it('Postfix relayhost: a recipient the destination refuses bounces with the destination\'s code', async () => {
    const mark = await viaSmtp.mark();
    await submit(viaSmtp, 's@a.test', ['nouser-1@a.test', 'pf2@a.test'], 'Subject: two\r\n\r\nx\r\n');
    const bounced = await viaSmtp.waitForLogLine(/to=<nouser-1@a\.test>.*status=bounced/, { since: mark, timeoutMs: 20_000 });
    expect(bounced).toMatch(/said: 550 5\.1\.1 no such user here \(in reply to RCPT TO command\)/);
    await viaSmtp.waitForLogLine(/to=<pf2@a\.test>.*status=sent/, { since: mark, timeoutMs: 20_000 });
  });

  it('Postfix relayhost: recipients at two destinations in one message: the second gets 452 4.5.3, is deferred, and is delivered at the next queue run', async () => {
    const mark = await viaSmtp.mark();
    await submit(viaSmtp, 's@a.test', ['two-a@a.test', 'two-b@b.test'], 'Subject: split\r\n\r\nx\r\n');
    await viaSmtp.waitForLogLine(/to=<two-a@a\.test>.*status=sent/, { since: mark, timeoutMs: 20_000 });
    const deferred = await viaSmtp.waitForLogLine(/to=<two-b@b\.test>.*status=deferred/, { since: mark, timeoutMs: 10_000 });
    expect(deferred).toMatch(/said: 452 4\.5\.3 mtaproxy relay: b\.test is another destination/);
    // minimal_backoff_time is 1s here (300s by default: hence smtp_destination_recipient_limit = 1 or LMTP)
    await viaSmtp.waitForLogLine(/to=<two-b@b\.test>.*status=sent/, { since: mark, timeoutMs: 25_000 });
    expect(b.transactions.some((x) => x.to.includes('two-b@b.test'))).toBe(true);
  }, 60_000);

  it('Postfix relayhost with smtp_destination_recipient_limit = 1: recipients at two destinations go at once, no 452', async () => {
    const mark = await viaSmtp1.mark();
    await submit(viaSmtp1, 's@a.test', ['one-a@a.test', 'one-b@b.test'], 'Subject: split\r\n\r\nx\r\n');
    await viaSmtp1.waitForLogLine(/to=<one-a@a\.test>.*status=sent/, { since: mark, timeoutMs: 20_000 });
    await viaSmtp1.waitForLogLine(/to=<one-b@b\.test>.*status=sent/, { since: mark, timeoutMs: 20_000 });
    expect(await viaSmtp1.log()).not.toMatch(/one-.*status=deferred/);
  });

  it('Postfix relayhost: a destination that drops mid-DATA leaves the message deferred in Postfix, not lost', async () => {
    const mark = await viaSmtp.mark();
    await submit(viaSmtp, 's@a.test', ['d1@drop.test'], 'Subject: drop\r\n\r\nDROP here\r\n');
    const deferred = await viaSmtp.waitForLogLine(/to=<d1@drop\.test>.*status=deferred/, { since: mark, timeoutMs: 20_000 });
    expect(deferred).toMatch(/said: 451 4\.4\.2 mtaproxy relay: the destination connection failed/);
    expect(queue(viaSmtp)).toMatch(/d1@drop\.test/);
  });

  it('Postfix over LMTP: one transaction spans destinations, each recipient gets its destination\'s reply', async () => {
    const mark = await viaLmtp.mark();
    await submit(viaLmtp, 's@a.test', ['l1@a.test', 'l2@b.test', 'nouser-2@b.test'], 'Subject: lmtp\r\n\r\nx\r\n');
    const sentA = await viaLmtp.waitForLogLine(/to=<l1@a\.test>.*status=sent/, { since: mark, timeoutMs: 20_000 });
    const sentB = await viaLmtp.waitForLogLine(/to=<l2@b\.test>.*status=sent/, { since: mark, timeoutMs: 20_000 });
    const bounced = await viaLmtp.waitForLogLine(/to=<nouser-2@b\.test>.*status=bounced/, { since: mark, timeoutMs: 20_000 });
    expect(sentA).toMatch(/\(250 OK: message queued\)/);
    expect(sentB).toMatch(/\(250 OK: message queued\)/);
    expect(bounced).toMatch(/550 5\.1\.1 no such user here/);
    // one LMTP delivery: the same Postfix queue id for all three
    const id = (l: string): string => /: ([0-9A-F]+): to=/.exec(l)?.[1] ?? 'x';
    expect(id(sentA)).toBe(id(sentB));
    expect(b.transactions.find((x) => x.to.includes('l2@b.test'))?.remoteAddress).toBe('127.0.0.1');
  });
}, 70_000); // every test's log waits fit in it: a stall fails with Postfix's log, not a bare test timeout
