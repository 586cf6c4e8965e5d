// smtp-server destinations for the relay tests: each records what it was sent and from where;
// recipients starting with "reject" or "nouser" get 550 5.1.1.
import { SMTPServer } from 'smtp-server';

export interface Destination {
  server: SMTPServer;
  connections: number;
  transactions: { remoteAddress: string; from: string; to: string[]; body: string }[];
}

export async function destination(host: string, port: number): Promise<Destination> {
  const d: Destination = { server: null as unknown as SMTPServer, connections: 0, transactions: [] };
  d.server = new SMTPServer({
    authOptional: true,
    logger: false,
    onConnect(_s, cb) {
      d.connections++;
      cb();
    },
    onRcptTo(address, _s, cb) {
      if (/^(reject|nouser)/.test(address.address)) return cb(Object.assign(new Error('5.1.1 no such user here'), { responseCode: 550 }));
      cb();
    },
    onData(stream, session, cb) {
      const chunks: Buffer[] = [];
      stream.on('data', (c: Buffer) => chunks.push(c));
      stream.on('end', () => {
        d.transactions.push({
          remoteAddress: session.remoteAddress,
          from: session.envelope.mailFrom === false ? '' : session.envelope.mailFrom.address,
          to: session.envelope.rcptTo.map((x) => x.address),
          body: Buffer.concat(chunks).toString('utf8'),
        });
        cb();
      });
    },
  });
  await new Promise<void>((resolve, reject) => {
    d.server.server.once('error', reject);
    d.server.listen(port, host, resolve);
  });
  return d;
}

