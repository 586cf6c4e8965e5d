// `mtaproxy simulate`: N simulated MTAs with changing backlogs compete for one throttle on a real
// proxy, so an operator (or a developer) can watch the status lines and the fair share live.
import { ResilientControl } from '../client/resilient.js';
import type { Mode } from '../throttle/manager.js';
import { askDaemon } from './admin-client.js';

export interface SimulateOptions {
  host: string;
  port: number;
  secret: string;
  /** the proxy's native listeners speak TLS (its config's tls) */
  tls: boolean;
  mtas: number;
  seconds: number;
  source: string;
  throttle: string;
  maxConnections: number;
  mode: Mode;
  /** the daemon's admin socket, to print its status lines each second (optional) */
  adminSocket: string | null;
  out: (line: string) => void;
}

interface Mta {
  name: string;
  control: ResilientControl;
  backlog: number;
  grants: number;
  backlogSum: number;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export async function simulate(o: SimulateOptions): Promise<void> {
  const mtas: Mta[] = Array.from({ length: o.mtas }, (_, i) => ({
    name: `sim-${i + 1}`,
    control: new ResilientControl({ host: o.host, port: o.port, name: `sim-${i + 1}`, secret: o.secret, ...(o.tls ? {} : { tls: false as const }) }).start(),
    // different starting backlogs so the shares differ visibly
    backlog: 100 * (i + 1),
    grants: 0,
    backlogSum: 0,
  }));
  for (const m of mtas) {
    const limits = await m.control.declare({ key: o.throttle, sourceIp: o.source, maxConnections: o.maxConnections, maxMessagesPerHour: 100_000, mode: o.mode });
    o.out(`${m.name}: declared ${limits}`);
  }
  const end = Date.now() + o.seconds * 1000;
  const workers: Promise<void>[] = [];
  for (const m of mtas) {
    // each MTA keeps 8 deliveries in flight while it has a backlog
    for (let w = 0; w < 8; w++) {
      workers.push(
        (async () => {
          while (Date.now() < end) {
            if (m.backlog <= 0) {
              await sleep(50);
              continue;
            }
            const lease = await m.control.acquire(o.throttle, 'connection', 1000).catch(() => null);
            if (lease === null) continue;
            m.grants++;
            m.backlog = Math.max(0, m.backlog - 1);
            await sleep(10 + Math.random() * 40); // the delivery
            m.control.release(lease);
          }
        })(),
      );
    }
  }
  const reporter = (async () => {
    while (Date.now() < end) {
      for (const m of mtas) {
        m.backlog += Math.floor(Math.random() * 20); // new mail arrives
        m.backlogSum += m.backlog;
        await m.control.reportBacklog({ ram: m.backlog, bounce: 0, disk: 0 }).catch(() => {});
      }
      if (o.adminSocket !== null) {
        const status = await askDaemon(o.adminSocket, 'status', 2000).catch((err: Error) => ({ ok: false, message: err.message, lines: [] as string[] }));
        o.out(status.ok ? (status.lines ?? []).join('\n') : `(status: ${status.message})`);
      }
      o.out(mtas.map((m) => `${m.name}: backlog=${m.backlog} grants=${m.grants}`).join('  '));
      await sleep(1000);
    }
  })();
  await Promise.all([...workers, reporter]);
  const total = mtas.reduce((a, m) => a + m.grants, 0);
  const weight = mtas.reduce((a, m) => a + m.backlogSum, 0);
  o.out('share of grants vs share of backlog:');
  for (const m of mtas) {
    o.out(`  ${m.name}: ${((100 * m.grants) / Math.max(1, total)).toFixed(1)}% of ${total} grants, ${((100 * m.backlogSum) / Math.max(1, weight)).toFixed(1)}% of the backlog`);
  }
  await Promise.all(mtas.map((m) => m.control.stop()));
}
