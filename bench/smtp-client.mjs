// A small MTA-grade SMTP client for the benches (bench/reuse.mjs): what Postfix's smtp(8), Exim and
// KumoMTA do on the wire. When the server offers PIPELINING (RFC 2920) it sends MAIL FROM, every
// RCPT TO and DATA in one write and reads their replies together, then the body after the 354;
// without PIPELINING, one command at a time. STARTTLS (RFC 3207) when asked, no certificate check
// (Postfix `smtp_tls_security_level = may`). Every reply is checked: anything but 250/354 where
// they are due is an error (the bench counts failures, it never assumes success).
import { connect as tlsConnect } from 'node:tls';

const REPLY_TIMEOUT_MS = 30_000;

export class SmtpClientError extends Error {
  constructor(message, reply) {
    super(message);
    this.reply = reply;
  }
}

export class PipeliningClient {
  #socket;
  #buf = '';
  #lines = [];
  #waiters = [];
  #replies = [];
  #failed = null;
  extensions = new Map();

  constructor(socket) {
    this.#attach(socket);
  }

  #attach(socket) {
    this.#socket = socket;
    socket.on('data', (d) => this.#onData(d.toString('latin1')));
    socket.on('error', (e) => this.#fail(e));
    socket.on('close', () => this.#fail(new SmtpClientError('connection closed')));
    socket.resume();
  }

  #fail(err) {
    if (this.#failed !== null) return;
    this.#failed = err;
    for (const w of this.#waiters.splice(0)) w.reject(err);
  }

  #onData(d) {
    this.#buf += d;
    for (let nl = this.#buf.indexOf('\n'); nl !== -1; nl = this.#buf.indexOf('\n')) {
      const line = this.#buf.slice(0, nl).replace(/\r$/, '');
      this.#buf = this.#buf.slice(nl + 1);
      this.#lines.push(line);
      if (line[3] !== '-') {
        const reply = { code: Number(line.slice(0, 3)), lines: this.#lines.map((l) => l.slice(4)) };
        this.#lines = [];
        const w = this.#waiters.shift();
        if (w !== undefined) w.resolve(reply);
        else this.#replies.push(reply);
      }
    }
  }

  #reply() {
    const r = this.#replies.shift();
    if (r !== undefined) return Promise.resolve(r);
    if (this.#failed !== null) return Promise.reject(this.#failed);
    // a stall is a failure the bench reports, never a hang
    return new Promise((resolve, reject) => {
      const w = { resolve: (x) => { clearTimeout(t); resolve(x); }, reject: (e) => { clearTimeout(t); reject(e); } };
      const t = setTimeout(() => {
        this.#waiters.splice(this.#waiters.indexOf(w), 1);
        this.#socket.destroy();
        reject(new SmtpClientError(`no reply within ${REPLY_TIMEOUT_MS}ms`));
      }, REPLY_TIMEOUT_MS);
      this.#waiters.push(w);
    });
  }

  async #expect(code, what) {
    const r = await this.#reply();
    if (r.code !== code) throw new SmtpClientError(`${what}: ${r.code} ${r.lines.join(' / ')}`, r);
    return r;
  }

  #ehloReply(r) {
    this.extensions = new Map(r.lines.slice(1).map((l) => { const [k, ...v] = l.split(' '); return [k.toUpperCase(), v.join(' ')]; }));
  }

  /** the TLS session of the last STARTTLS (a TLS 1.3 ticket), for `open(…, { session })` next time */
  tlsSession = null;
  /** the last STARTTLS resumed a session */
  tlsResumed = false;

  /**
   * Greeting, EHLO, and STARTTLS + EHLO again if `starttls` (the socket becomes TLS); `session`
   * resumes a TLS session from an earlier connection (Postfix's smtp_tls_session_cache_database,
   * which Debian's TLS setup sets: a real MTA resumes to a destination it delivered to before).
   */
  async open(name, { starttls = false, session = null } = {}) {
    await this.#expect(220, 'greeting');
    this.#socket.write(`EHLO ${name}\r\n`);
    this.#ehloReply(await this.#expect(250, 'EHLO'));
    if (!starttls) return;
    if (!this.extensions.has('STARTTLS')) throw new SmtpClientError('STARTTLS not offered');
    this.#socket.write('STARTTLS\r\n');
    await this.#expect(220, 'STARTTLS');
    const raw = this.#socket;
    raw.removeAllListeners('data');
    raw.removeAllListeners('close');
    raw.removeAllListeners('error');
    this.#buf = '';
    const tls = tlsConnect({ socket: raw, rejectUnauthorized: false, ...(session !== null ? { session } : {}) });
    tls.on('session', (s) => { this.tlsSession = s; });
    await new Promise((resolve, reject) => {
      const t = setTimeout(() => {
        tls.destroy();
        reject(new SmtpClientError(`TLS handshake not done within ${REPLY_TIMEOUT_MS}ms`));
      }, REPLY_TIMEOUT_MS);
      tls.once('secureConnect', () => { clearTimeout(t); resolve(); });
      tls.once('error', (e) => { clearTimeout(t); reject(e); });
      tls.once('close', () => { clearTimeout(t); reject(new SmtpClientError('closed during the TLS handshake')); });
    });
    tls.removeAllListeners('error');
    this.tlsResumed = tls.isSessionReused();
    this.#attach(tls);
    tls.write(`EHLO ${name}\r\n`);
    this.#ehloReply(await this.#expect(250, 'EHLO after STARTTLS'));
  }

  /** One transaction; `body` is CRLF text, dot-stuffed here. Resolves with the final reply. */
  async send(from, to, body) {
    const s = this.#socket;
    const stuffed = body.replace(/^\./gm, '..');
    const envelope = [`MAIL FROM:<${from}>`, ...to.map((t) => `RCPT TO:<${t}>`), 'DATA'];
    if (this.extensions.has('PIPELINING')) {
      s.write(envelope.map((l) => `${l}\r\n`).join(''));
      const replies = [];
      for (let i = 0; i < envelope.length; i++) replies.push(await this.#reply());
      const bad = replies.slice(0, -1).find((r) => r.code !== 250);
      const data = replies[replies.length - 1];
      if (data.code !== 354) throw new SmtpClientError(`DATA: ${data.code} ${data.lines.join(' / ')}${bad ? ` (after ${bad.code})` : ''}`, data);
      if (bad !== undefined) throw new SmtpClientError(`envelope: ${bad.code} ${bad.lines.join(' / ')}`, bad);
    } else {
      for (let i = 0; i < envelope.length; i++) {
        s.write(`${envelope[i]}\r\n`);
        await this.#expect(i === envelope.length - 1 ? 354 : 250, envelope[i].split(':')[0]);
      }
    }
    s.write(`${stuffed}${stuffed.endsWith('\r\n') ? '' : '\r\n'}.\r\n`);
    return this.#expect(250, 'end of DATA');
  }

  /**
   * QUIT; `waitReply: false` does not wait for the 221 (Postfix's smtp_skip_quit_response = yes,
   * its default: the connection is done once QUIT is sent).
   */
  async quit({ waitReply = true } = {}) {
    this.#socket.write('QUIT\r\n');
    if (waitReply) await this.#reply().catch(() => {});
    this.#socket.end();
  }
}
