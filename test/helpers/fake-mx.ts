// A scriptable SMTP destination for smtp-mode tests: it counts connections, open sockets, QUITs and
// MAILs, and misbehaves on cue. A body containing STALL gets no final reply, SLOW gets it after
// 1.6 s, DROP makes it close the connection as soon as the word arrives (mid-DATA);
// `closeAtMail(connection, mail)` answers that MAIL with 421 and closes (an MX whose idle timer
// fired just as the connection was reused). Everything else is accepted.
import { createServer, type AddressInfo, type Server, type Socket } from 'node:net';

export interface FakeMx {
  port: number;
  connections: number;
  open: number;
  quits: number;
  mails: number;
  server: Server;
  close(): void;
}

export async function fakeMx(opts: { closeAtMail?: (connection: number, mail: number) => boolean; ehlo?: string[]; host?: string; port?: number } = {}): Promise<FakeMx> {
  const server = createServer();
  const mx: FakeMx = { port: 0, connections: 0, open: 0, quits: 0, mails: 0, server, close: () => server.close() };
  const ehlo = opts.ehlo ?? ['fake', 'PIPELINING', '8BITMIME'];
  server.on('connection', (sock: Socket) => {
    const connection = ++mx.connections;
    let mails = 0;
    mx.open++;
    sock.on('close', () => mx.open--);
    sock.on('error', () => {});
    let data = false;
    let text = '';
    sock.write('220 fake ESMTP\r\n');
    sock.on('data', (c: Buffer) => {
      text += c.toString('latin1');
      for (;;) {
        if (data) {
          if (text.includes('DROP')) return void sock.destroy();
          const end = text.indexOf('\r\n.\r\n');
          if (end === -1) return;
          const body = text.slice(0, end);
          text = text.slice(end + 5);
          data = false;
          if (body.includes('SLOW')) setTimeout(() => sock.write('250 2.0.0 queued slowly\r\n'), 1600);
          else if (!body.includes('STALL')) sock.write('250 2.0.0 queued\r\n');
          continue;
        }
        const i = text.indexOf('\r\n');
        if (i === -1) return;
        const verb = text.slice(0, 4).toUpperCase();
        text = text.slice(i + 2);
        if (verb === 'EHLO') sock.write(ehlo.map((l, n) => `250${n === ehlo.length - 1 ? ' ' : '-'}${l}\r\n`).join(''));
        else if (verb === 'DATA') {
          data = true;
          sock.write('354 go\r\n');
        } else if (verb === 'QUIT') {
          mx.quits++;
          return void sock.end('221 2.0.0 bye\r\n');
        } else if (verb === 'MAIL') {
          mx.mails++;
          if (opts.closeAtMail?.(connection, ++mails) === true) return void sock.end('421 4.4.2 fake: idle timeout\r\n');
          sock.write('250 2.1.0 ok\r\n');
        } else sock.write('250 2.1.0 ok\r\n');
      }
    });
  });
  await new Promise<void>((r) => server.listen(opts.port ?? 0, opts.host ?? '127.0.0.1', r));
  mx.port = (server.address() as AddressInfo).port;
  return mx;
}
