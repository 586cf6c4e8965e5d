// One delivery through mtaproxy, as an MTA written in Node would make it (docs/client.md).
//   npm run build && MTAPROXY_SECRET=... node examples/deliver.mjs
// Environment: MTAPROXY_HOST (127.0.0.1), MTAPROXY_PORT (8807), MTAPROXY_SECRET, SOURCE_IP
// (127.0.0.2: one of the proxy's egress.source_ips), MX_HOST (127.0.0.1), MX_PORT (2525).
import { openTunnel, ResilientControl } from 'mtaproxy/client';
import SMTPConnection from 'nodemailer/lib/smtp-connection/index.js';

const env = process.env;
const proxy = { host: env.MTAPROXY_HOST ?? '127.0.0.1', port: Number(env.MTAPROXY_PORT ?? 8807), name: 'example-mta', secret: env.MTAPROXY_SECRET ?? '' };
const source = env.SOURCE_IP ?? '127.0.0.2';
const mx = { host: env.MX_HOST ?? '127.0.0.1', port: Number(env.MX_PORT ?? 2525) };

// 1. One control session per MTA instance, kept for the MTA's lifetime: it reconnects by itself
//    and re-declares the throttles after a proxy restart.
const control = new ResilientControl({ ...proxy, onEvent: (e) => console.error(`control session ${e.type}: ${e.detail}`) }).start();

// 2. This MTA's limits for the destination, from this source address. In "sum" mode the cluster
//    may use the sum of what every MTA declares; the reply gives the reconciled limits.
console.log(await control.declare({ key: 'example-mx', sourceIp: source, maxConnections: 2, maxMessagesPerHour: 3600, mode: 'sum' }));
await control.reportBacklog({ ram: 1, bounce: 0, disk: 0 }); // how much mail waits: the fair share follows it

// 3. A message token (the messages-per-hour limit), then a tunnel: the proxy takes a connection
//    slot of the throttle and connects to the MX from `source`; the slot returns when it closes.
await control.acquire('example-mx', 'message', 10_000);
const { socket, local, remote } = await openTunnel({ ...proxy, source, destination: mx, throttle: 'example-mx', waitMs: 10_000 });
console.log(`tunnel ${local} -> ${remote}`);

// 4. Plain SMTP over the tunnel. The MTA does STARTTLS itself when the MX offers it, the way MTAs
//    deliver (Postfix smtp_tls_security_level = may): without checking the certificate, since
//    most MXs have self-signed or mismatched ones (SMTPConnection checks by default, and would
//    refuse to deliver to them), and in plaintext if the MX refuses the STARTTLS command.
//    (smtp mode, examples/transport.mjs, leaves STARTTLS to the proxy.)
const smtp = new SMTPConnection({ connection: socket, name: 'mta.example.com', opportunisticTLS: true, tls: { rejectUnauthorized: false } });
await new Promise((resolve, reject) => { smtp.once('error', reject); smtp.connect(resolve); });
console.log(`starttls: ${smtp.secure ? 'yes' : 'no'}`);
const info = await new Promise((resolve, reject) =>
  smtp.send({ from: 'sender@example.com', to: ['rcpt@example.net'] }, 'Subject: hello via mtaproxy\r\n\r\nHello.\r\n', (err, i) => (err ? reject(err) : resolve(i))));
console.log(`accepted: ${info.response}`);
smtp.quit();
await control.stop();
