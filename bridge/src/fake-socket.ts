// An in-process stand-in for the Baileys socket, for tests and BRIDGE_FAKE_SOCKET=1.
// It replaces only `WaSocket`: auth-state files, mapping, pacing, the pending queue
// and the server stay real. It can be driven (pair, inbound, close) and records
// every send and read receipt.

import { EventEmitter } from "node:events";

import type { AnyMessageContent, AuthenticationState, ConnectionState, WAMessage, WAMessageKey } from "baileys";

import type { SocketFactory, WaSocket } from "./whatsapp.js";

export interface FakeSend {
  jid: string;
  content: AnyMessageContent;
  options?: { quoted?: WAMessage };
}

/** An error shaped like Baileys' Boom, carrying a WhatsApp close code. */
export function closeError(statusCode: number): Error & { output: { statusCode: number } } {
  return Object.assign(new Error(`closed by WhatsApp (${statusCode})`), { output: { statusCode } });
}

export class FakeSocket implements WaSocket {
  readonly ev = new EventEmitter();
  ended = false;

  constructor(
    private readonly world: FakeWhatsApp,
    readonly auth: AuthenticationState,
  ) {}

  boot(): void {
    setImmediate(() => {
      if (this.ended) return;
      this.ev.emit("connection.update", { connection: "connecting" });
      if (this.auth.creds.me) this.ev.emit("connection.update", { connection: "open" });
      else this.ev.emit("connection.update", { qr: `FAKE-QR-${++this.world.qrCount}` });
    });
  }

  onConnection(h: (u: Partial<ConnectionState>) => void): void {
    this.ev.on("connection.update", h);
  }
  onCreds(h: () => void): void {
    this.ev.on("creds.update", h);
  }
  onMessages(h: (u: { messages: WAMessage[]; type: string }) => void): void {
    this.ev.on("messages.upsert", h);
  }
  user() {
    return this.auth.creds.me;
  }
  async sendMessage(jid: string, content: AnyMessageContent, options?: { quoted?: WAMessage }) {
    if (this.ended) throw new Error("connection closed");
    if (this.world.failSends > 0) {
      this.world.failSends--;
      throw new Error("fake send failure");
    }
    this.world.sends.push({ jid, content, options });
    return { key: { id: `FAKE-OUT-${this.world.sends.length}`, remoteJid: jid, fromMe: true } };
  }
  async readMessages(keys: WAMessageKey[]): Promise<void> {
    this.world.reads.push(...keys);
  }
  async downloadMedia(msg: WAMessage): Promise<Buffer> {
    const bytes = this.world.media.get(msg.key.id ?? "");
    if (!bytes) throw new Error("media expired on the server");
    this.world.downloads.push(msg.key.id ?? "");
    return bytes;
  }
  async phoneForLid(lid: string): Promise<string | null> {
    return this.world.lidToPhone.get(lid) ?? null;
  }
  end(): void {
    this.ended = true;
  }
  /** WhatsApp closes the connection with `code`. */
  closeWith(code: number): void {
    this.ended = true;
    this.ev.emit("connection.update", { connection: "close", lastDisconnect: { error: closeError(code), date: new Date() } });
  }
}

/** The fake WhatsApp "server": outlives sockets, so reconnects see the same world. */
export class FakeWhatsApp {
  readonly sockets: FakeSocket[] = [];
  readonly sends: FakeSend[] = [];
  readonly reads: WAMessageKey[] = [];
  readonly downloads: string[] = [];
  readonly media = new Map<string, Buffer>();
  readonly lidToPhone = new Map<string, string>();
  qrCount = 0;
  /** The next N sends throw. */
  failSends = 0;

  readonly factory: SocketFactory = (auth) => {
    const sock = new FakeSocket(this, auth);
    this.sockets.push(sock);
    sock.boot();
    return sock;
  };

  current(): FakeSocket {
    const sock = this.sockets.at(-1);
    if (!sock || sock.ended) throw new Error("no open fake WhatsApp socket");
    return sock;
  }

  /** The QR code was scanned: credentials are saved and the socket restarts, as Baileys does. */
  pair(me: { phone_jid: string; lid_jid?: string; name?: string }): void {
    const sock = this.current();
    const device = (jid: string) => jid.replace("@", ":7@");
    sock.auth.creds.me = { id: device(me.phone_jid), lid: me.lid_jid ? device(me.lid_jid) : undefined, name: me.name };
    sock.auth.creds.registered = true;
    sock.ev.emit("creds.update", { me: sock.auth.creds.me });
    sock.closeWith(515);
  }

  /** A message arrives; `media` is what downloading it returns. */
  inbound(message: WAMessage, media?: Buffer): void {
    if (media && message.key.id) this.media.set(message.key.id, media);
    this.current().ev.emit("messages.upsert", { messages: [message], type: "notify" });
  }

  close(code: number): void {
    this.current().closeWith(code);
  }

  /** Sends and reads as JSON-safe values (buffers as base64). */
  snapshot(): { sends: unknown[]; reads: unknown[] } {
    const plain = (v: unknown): unknown => {
      if (Buffer.isBuffer(v)) return { base64: v.toString("base64") };
      if (Array.isArray(v)) return v.map(plain);
      if (v && typeof v === "object") {
        return Object.fromEntries(Object.entries(v as Record<string, unknown>).map(([k, x]) => [k, plain(x)]));
      }
      return v;
    };
    return {
      sends: this.sends.map((s) => ({ jid: s.jid, content: plain(s.content), quoted_id: s.options?.quoted?.key.id ?? null })),
      reads: this.reads.map(plain),
    };
  }
}
