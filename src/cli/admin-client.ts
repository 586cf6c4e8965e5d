import { createConnection } from 'node:net';
import { parseAdminReply, type AdminCommand, type AdminReply, type AdminRequest } from '../protocol/admin.js';

/** Asks the running daemon over its admin socket; rejects with an operator-readable Error. */
export function askDaemon(socketPath: string, request: AdminCommand | AdminRequest, timeoutMs = 60_000): Promise<AdminReply> {
  const body: AdminRequest = typeof request === 'string' ? ({ command: request } as AdminRequest) : request;
  return new Promise((resolve, reject) => {
    const socket = createConnection(socketPath);
    let data = '';
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`no answer from the daemon on ${socketPath} within ${timeoutMs / 1000}s`));
    }, timeoutMs);
    socket.setEncoding('utf8');
    socket.on('connect', () => socket.write(`${JSON.stringify(body)}\n`));
    socket.on('data', (chunk: string) => {
      data += chunk;
    });
    socket.on('error', (err: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      const why =
        err.code === 'ENOENT' || err.code === 'ECONNREFUSED' ? 'is mtaproxy running?' :
        err.code === 'EACCES' ? 'permission denied (run as root or the mtaproxy user)' :
        err.message;
      reject(new Error(`cannot reach the daemon's admin socket ${socketPath}: ${why}`));
    });
    socket.on('end', () => {
      clearTimeout(timer);
      const reply = parseAdminReply(data.split('\n')[0] ?? '');
      if (reply === null) reject(new Error(`unexpected answer from ${socketPath}: ${JSON.stringify(data.slice(0, 200))}`));
      else resolve(reply);
    });
  });
}
