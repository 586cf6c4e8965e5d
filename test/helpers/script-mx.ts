// A scriptable, recording SMTP destination for the relay review tests. It records every command
// line of every connection and every complete message (a body whose "<CRLF>.<CRLF>" arrived), and
// misbehaves on cue:
// - greeting: the first line it sends (e.g. "554 go away" or "421 busy": then it closes);
// - a sender starting with "refuse" gets "550 5.7.1 sender refused here";
// - a recipient starting with "bye421" gets "421 4.3.2 closing" and the connection is closed;
//   one starting with "nouser" gets "550 5.1.1 no such user";
// - a body containing DROP: the connection is destroyed as soon as the word arrives (mid-DATA);
//   SLOW: the final reply comes after `slowMs`; every complete body gets "250 2.0.0 queued as N".
import { createServer, type AddressInfo, type Server, type Socket } from 'node:net';

export interface ScriptMx {
  port: number;
  server: Server;
  connections: number;
  /** every command line, per connection, in arrival order */
  commands: string[][];
  /** complete messages (the terminating dot arrived), with the envelope of their transaction */
  messages: { connection: number; from: string; to: string[]; body: string }[];
  /** bodies that began (354 sent) */
  bodiesStarted: number;
  /** connections (indexes into `commands`) the peer or this server has closed */
  closed: Set<number>;
  close(): void;
}

export async function scriptMx(opts: { host: string; port: number; greeting?: string; slowMs?: number; ehlo?: string[] }): Promise<ScriptMx> {
  const server = createServer();
  const mx: ScriptMx = { port: 0, server, connections: 0, commands: [], messages: [], bodiesStarted: 0, closed: new Set(), close: () => server.close() };
  const ehlo = opts.ehlo ?? ['script', 'PIPELINING', '8BITMIME', 'SMTPUTF8', 'SIZE 100000000'];
  server.on('connection', (sock: Socket) => {
    const connection = mx.connections++;
    const log: string[] = [];
    mx.commands.push(log);
    sock.on('error', () => {});
    sock.on('close', () => mx.closed.add(connection));
    const greeting = opts.greeting ?? '220 script ESMTP';
    sock.write(`${greeting}\r\n`);
    if (!greeting.startsWith('220')) {
      sock.end();
      return;
    }
    let data = false;
    let chunks: Buffer[] = [];
    // the last bytes of the body so far (a terminator or a DROP split across reads)
    let tail: Buffer = Buffer.from('\r\n');
    let text: Buffer = Buffer.alloc(0);
    let from = '';
    let to: string[] = [];
    sock.on('data', (c: Buffer) => {
      if (data) text = c;
      else text = Buffer.concat([text, c]);
      for (;;) {
        if (data) {
          const joined = Buffer.concat([tail, text]);
          if (joined.includes('DROP')) return void sock.destroy();
          const at = joined.indexOf('\r\n.\r\n');
          if (at === -1) {
            chunks.push(text);
            tail = joined.subarray(Math.max(0, joined.length - 4));
            text = Buffer.alloc(0);
            return;
          }
          // body bytes up to and including the CRLF before the dot (within `text`)
          const endInText = at + 2 - tail.length;
          let body: string;
          if (endInText >= 0) {
            chunks.push(text.subarray(0, endInText));
            body = Buffer.concat(chunks).toString('latin1');
          } else {
            const all = Buffer.concat(chunks);
            body = all.subarray(0, all.length + endInText).toString('latin1');
          }
          text = text.subarray(at + 5 - tail.length);
          chunks = [];
          tail = Buffer.from('\r\n');
          data = false;
          mx.messages.push({ connection, from, to, body });
          const n = mx.messages.length;
          const reply = `250 2.0.0 queued as ${n}\r\n`;
          if (body.includes('SLOW')) setTimeout(() => sock.write(reply), opts.slowMs ?? 1500);
          else sock.write(reply);
          continue;
        }
        const i = text.indexOf('\r\n');
        if (i === -1) return;
        const line = text.subarray(0, i).toString('latin1');
        text = text.subarray(i + 2);
        log.push(line);
        const verb = line.slice(0, 4).toUpperCase();
        if (verb === 'EHLO' || verb === 'LHLO') sock.write(ehlo.map((l, k) => `250${k === ehlo.length - 1 ? ' ' : '-'}${l}\r\n`).join(''));
        else if (verb === 'HELO') sock.write('250 script\r\n');
        else if (verb === 'MAIL') {
          const m = /<([^>]*)>/.exec(line);
          if ((m?.[1] ?? '').startsWith('refuse')) sock.write('550 5.7.1 sender refused here\r\n');
          else {
            from = m?.[1] ?? '';
            to = [];
            sock.write('250 2.1.0 sender ok\r\n');
          }
        } else if (verb === 'RCPT') {
          const m = /<([^>]*)>/.exec(line);
          const rcpt = m?.[1] ?? '';
          if (rcpt.startsWith('bye421')) return void sock.end('421 4.3.2 script closing now\r\n');
          if (rcpt.startsWith('nouser')) sock.write(`550 5.1.1 <${rcpt}> no such user\r\n`);
          else {
            to.push(rcpt);
            sock.write(`250 2.1.5 recipient <${rcpt}> ok\r\n`);
          }
        } else if (verb === 'DATA') {
          data = true;
          mx.bodiesStarted++;
          sock.write('354 go ahead\r\n');
        } else if (verb === 'RSET') {
          from = '';
          to = [];
          sock.write('250 2.0.0 reset\r\n');
        } else if (verb === 'QUIT') return void sock.end('221 2.0.0 bye\r\n');
        else sock.write('250 2.0.0 ok\r\n');
      }
    });
  });
  await new Promise<void>((r, j) => {
    server.once('error', j);
    server.listen(opts.port, opts.host, () => r());
  });
  mx.port = (server.address() as AddressInfo).port;
  return mx;
}
