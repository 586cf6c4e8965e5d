// Sending with nodemailer through mtaproxy, delivering as an MTA does (docs/client.md, "nodemailer
// transport"): MX per recipient domain, the proxy's source IP, smtp mode (the proxy holds and
// shares the connections to MXs and does STARTTLS, opportunistic by default), each recipient's
// result as the MX answered it.
//   npm run build && MTAPROXY_SECRET=... node examples/transport.mjs rcpt@example.net [rcpt…]
// Environment: MTAPROXY_HOST (127.0.0.1), MTAPROXY_PORT (8807), MTAPROXY_SECRET, SOURCE_IP
// (127.0.0.2: one of the proxy's egress.source_ips), EHLO (default: the source's PTR name),
// MX ("example.net=127.0.0.1:2525,…": static MX hosts instead of DNS, e.g. for a local test).
import nodemailer from 'nodemailer';
import { MtaproxyTransport } from 'mtaproxy/client';

const env = process.env;
const recipients = process.argv.slice(2);
if (recipients.length === 0) {
  console.error('usage: node examples/transport.mjs rcpt@example.net [rcpt…]');
  process.exit(2);
}
const mx = env.MX ? Object.fromEntries(env.MX.split(',').map((entry) => entry.split('='))) : undefined;

const transport = new MtaproxyTransport({
  proxy: { host: env.MTAPROXY_HOST ?? '127.0.0.1', port: Number(env.MTAPROXY_PORT ?? 8807), name: 'example-app', secret: env.MTAPROXY_SECRET ?? '' },
  source: env.SOURCE_IP ?? '127.0.0.2',
  ...(env.EHLO ? { ehlo: env.EHLO } : {}),
  ...(mx ? { mx } : {}),
  // the transport owns its control session and declares one throttle per domain and source
  // (<domain>@<source>) with these limits
  limits: { maxConnections: 2, maxMessagesPerHour: 3600, mode: 'sum' },
});
const transporter = nodemailer.createTransport(transport);

try {
  const info = await transporter.sendMail({
    from: 'sender@example.com',
    to: recipients,
    subject: 'hello via mtaproxy',
    text: 'Hello.\n',
  });
  console.log(`accepted: ${info.accepted.join(', ')}`);
  for (const e of info.rejectedErrors) console.log(`rejected: <${e.recipient}> ${e.response}`);
  for (const d of info.mtaproxy) {
    console.log(`${d.domain}: mx ${d.mx ?? '-'} from ${d.local ?? d.source ?? '-'} ${d.reused ? 'reused' : 'new'} connection tls=${d.tls ?? '-'}: ${d.response}`);
  }
} catch (err) {
  // no recipient accepted: err.rejectedErrors has each one's reply (4xx: retry later, 5xx: bounce)
  console.error(`not sent: ${err.message}`);
  process.exitCode = 1;
} finally {
  transporter.close(); // ends the transport's control session
}
