// The floor of a Node request/reply server on loopback, for bench/throttle.mjs: reads
// "<tag> <VERB> ..." lines and answers each "<tag> 250 lease 1" (a "-" tag gets no reply), the
// replies of one read in one write. No policy, no state: what any Node daemon costs at least.
//
//   node bench/line-echo.mjs --listen=127.0.0.1:0     (prints "listening PORT")
import { createServer } from 'node:net';

const [host, port] = (/--listen=(\S+)/.exec(process.argv.join(' '))?.[1] ?? '127.0.0.1:0').split(/:(?=\d+$)/);
const server = createServer({ noDelay: true }, (socket) => {
  let pending = '';
  socket.setEncoding('latin1');
  socket.on('data', (chunk) => {
    const data = pending + chunk;
    let out = '';
    let start = 0;
    for (let nl = data.indexOf('\n'); nl !== -1; nl = data.indexOf('\n', start)) {
      const sp = data.indexOf(' ', start);
      const tag = data.slice(start, sp);
      if (tag !== '-') out += `${tag} 250 lease 1\n`;
      start = nl + 1;
    }
    pending = data.slice(start);
    if (out !== '') socket.write(out);
  });
  socket.on('error', () => {});
});
server.listen(Number(port), host, () => console.log(`listening ${server.address().port}`));
process.on('SIGTERM', () => process.exit(0));
