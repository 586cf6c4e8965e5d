// The tunnel's end, in process with real loopback sockets: the result is reported once with every
// byte counted, and afterwards neither socket points to the tunnel any more (a destroyed socket
// lingers until a full GC and must not keep the tunnel and its record's closure), while late events
// on them (an 'error' emitted after the end) are ignored, not thrown.
import { once } from 'node:events';
import { createServer, connect, type AddressInfo, type Server, type Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { OWNER, type OwnedSocket } from '../../src/net/owner.js';
import { TimerWheel } from '../../src/net/wheel.js';
import { openFrom, splice, type TunnelResult } from '../../src/egress/tunnel.js';

const servers: Server[] = [];
const wheel = new TimerWheel({ resolutionMs: 50 });
afterEach(() => {
  for (const s of servers.splice(0)) s.close();
});

function listen(onConnection: (s: Socket) => void, allowHalfOpen: boolean): Promise<number> {
  const server = createServer({ allowHalfOpen }, onConnection);
  servers.push(server);
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve((server.address() as AddressInfo).port)));
}

/**
 * An MTA-side socket pair (client, the proxy's accepted end) and a destination that greets, answers
 * QUIT with 221 and closes, and closes its side too when the proxy passes on the MTA's FIN.
 */
async function setUp(): Promise<{ mta: Socket; accepted: OwnedSocket; remote: OwnedSocket; done: Promise<TunnelResult> }> {
  const destPort = await listen((s) => {
    s.write('220 dest\r\n');
    s.on('data', (d: Buffer) => {
      if (d.toString().includes('QUIT')) s.end('221 bye\r\n');
    });
  }, false);
  let accept!: (s: Socket) => void;
  const accepted = new Promise<Socket>((r) => (accept = r));
  const frontPort = await listen((s) => accept(s), true);
  const mta = connect(frontPort, '127.0.0.1');
  const side = (await accepted) as OwnedSocket;
  const remote = await new Promise<OwnedSocket>((resolve, reject) =>
    openFrom('127.0.0.1', '127.0.0.1', destPort, 2000, wheel, (err, s) => (err === null && s !== null ? resolve(s as OwnedSocket) : reject(err))),
  );
  const done = new Promise<TunnelResult>((resolve) => splice(side, remote, 10_000, wheel, [], resolve));
  return { mta, accepted: side, remote, done };
}

describe('the end of a tunnel', () => {
  it('reports once with every byte, then neither socket owns the tunnel', async () => {
    const { mta, accepted, remote, done } = await setUp();
    expect(accepted[OWNER]).toBeDefined();
    expect(remote[OWNER]).toBe(accepted[OWNER]);
    let got = '';
    mta.on('data', (d: Buffer) => (got += d.toString()));
    await new Promise<void>((r) => mta.once('data', () => r()));
    mta.end('QUIT\r\n');
    const result = await done;
    await once(mta, 'close');
    expect(got).toBe('220 dest\r\n221 bye\r\n');
    expect(result.bytesUp).toBe('QUIT\r\n'.length);
    expect(result.bytesDown).toBe(got.length);
    expect(result.outcome).toBe('closed');
    expect(accepted[OWNER]).toBeUndefined();
    expect(remote[OWNER]).toBeUndefined();
  });

  it('ignores events that come after the end', async () => {
    const { mta, accepted, remote, done } = await setUp();
    let reports = 0;
    void done.then(() => reports++);
    mta.destroy();
    const result = await done;
    expect(result.outcome).toMatch(/closed/);
    // a late error and close on either side: the tunnel's listeners are still there, and do nothing
    expect(() => accepted.emit('error', Object.assign(new Error('late'), { code: 'ECONNRESET' }))).not.toThrow();
    expect(() => remote.emit('error', Object.assign(new Error('late'), { code: 'EPIPE' }))).not.toThrow();
    expect(() => remote.emit('close', false)).not.toThrow();
    expect(() => accepted.emit('drain')).not.toThrow();
    await new Promise((r) => setTimeout(r, 20));
    expect(reports).toBe(1);
    expect(accepted[OWNER]).toBeUndefined();
    expect(remote[OWNER]).toBeUndefined();
  });
});
