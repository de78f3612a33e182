// Test harness: the real server, WhatsApp logic, pending queue and auth-state files,
// with only the Baileys socket faked; plus a small WebSocket client that queues
// what it receives.

import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

import { WebSocket } from "ws";

import { FakeWhatsApp } from "../src/fake-socket.js";
import { createLogger } from "../src/log.js";
import { Pacer } from "../src/pacing.js";
import { PendingQueue } from "../src/pending.js";
import { startServer, type BridgeServer } from "../src/server.js";
import { WhatsApp } from "../src/whatsapp.js";
import type { GroupMode } from "../src/config.js";

export const TOKEN = "test-token-0123456789abcdef";
export const quiet = createLogger(process.env.TEST_LOG ? "debug" : "silent");

export interface Bridge {
  fake: FakeWhatsApp;
  wa: WhatsApp;
  server: BridgeServer;
  pending: PendingQueue;
  authDir: string;
  url: string;
  stop(): Promise<void>;
}

export async function startBridge(
  opts: {
    authDir?: string;
    fake?: FakeWhatsApp;
    authTimeoutMs?: number;
    groupMode?: GroupMode;
    backoffInitialMs?: number;
    stableMs?: number;
  } = {},
): Promise<Bridge> {
  const authDir = opts.authDir ?? mkdtempSync(join(tmpdir(), "wa-bridge-test-"));
  const fake = opts.fake ?? new FakeWhatsApp();
  const wa = new WhatsApp({
    authDir,
    factory: fake.factory,
    log: quiet,
    groupMode: opts.groupMode ?? "mention",
    maxMediaBytes: 1024 * 1024,
    backoffInitialMs: opts.backoffInitialMs ?? 5,
    backoffMaxMs: 1000,
    pacer: new Pacer({ globalPerMin: 6000, globalBurst: 100, chatPerMin: 6000, chatBurst: 100 }),
    random: () => 1,
    stableMs: opts.stableMs,
  });
  const pending = new PendingQueue(join(authDir, "pending"), 100, quiet);
  const server = await startServer({
    host: "127.0.0.1",
    port: 0,
    token: TOKEN,
    authTimeoutMs: opts.authTimeoutMs ?? 2000,
    wa,
    pending,
    log: quiet,
    fake,
  });
  await wa.start();
  return {
    fake,
    wa,
    server,
    pending,
    authDir,
    url: `ws://127.0.0.1:${server.port}`,
    stop: async () => {
      wa.stop();
      await server.close();
    },
  };
}

export type Msg = Record<string, any>;

/** A WebSocket client that queues messages and remembers how it was closed. */
export class Client {
  readonly ws: WebSocket;
  private readonly queue: Msg[] = [];
  private waiters: (() => void)[] = [];
  readonly closed: Promise<{ code: number; reason: string }>;
  readonly opened: Promise<void>;

  constructor(url: string) {
    this.ws = new WebSocket(url);
    this.opened = new Promise((resolve, reject) => {
      this.ws.once("open", () => resolve());
      this.ws.once("error", reject);
    });
    this.closed = new Promise((resolve) => this.ws.once("close", (code, reason) => resolve({ code, reason: reason.toString() })));
    this.ws.on("message", (data) => {
      this.queue.push(JSON.parse(data.toString()));
      const w = this.waiters;
      this.waiters = [];
      w.forEach((f) => f());
    });
    this.ws.on("close", () => {
      const w = this.waiters;
      this.waiters = [];
      w.forEach((f) => f());
    });
  }

  /** `token` null sends no token at all. */
  static async connect(url: string, token: string | null = TOKEN, version = 1): Promise<Client> {
    const c = new Client(url);
    await c.opened;
    const auth: Msg = { type: "auth", protocol_version: version };
    if (token !== null) auth.token = token;
    c.send(auth);
    return c;
  }

  send(msg: Msg): void {
    this.ws.send(JSON.stringify(msg));
  }

  /** The next message matching `pred` (earlier non-matching ones are dropped), within `ms`. */
  async next(pred: (m: Msg) => boolean | string, ms = 5000): Promise<Msg> {
    const match = (m: Msg) => (typeof pred === "string" ? m.type === pred : pred(m));
    const deadline = Date.now() + ms;
    for (;;) {
      while (this.queue.length > 0) {
        const m = this.queue.shift() as Msg;
        if (match(m)) return m;
      }
      if (this.ws.readyState === WebSocket.CLOSED) throw new Error("connection closed while waiting");
      const left = deadline - Date.now();
      if (left <= 0) throw new Error("timed out waiting for a message");
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
  }

  type(t: string, ms?: number): Promise<Msg> {
    return this.next((m) => m.type === t, ms);
  }

  /** Control requests (test mode): sends one and returns its answer. */
  async control(msg: Msg): Promise<Msg> {
    this.send(msg);
    const answer = await this.next((m) => m.type === "fake.ok" || m.type === "fake.error");
    if (answer.type === "fake.error") throw new Error(answer.message);
    return answer;
  }

  close(): void {
    this.ws.close();
  }
}

/** Polls `check` until it returns a value, or fails after `ms`. */
export async function eventually<T>(what: string, check: () => T | undefined | null | false, ms = 5000): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = check();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

export const ME = { phone_jid: "491700000001@s.whatsapp.net", lid_jid: "170000000000001@lid", name: "Nexus" };

/** A Baileys WAMessage as JSON, the way WhatsApp delivers a direct text. */
export function dmText(id: string, text: string, from = "491511234567@s.whatsapp.net", alt?: string) {
  return {
    key: { remoteJid: from, remoteJidAlt: alt, id, fromMe: false },
    message: { conversation: text },
    pushName: "Alice",
    messageTimestamp: 1760000000,
  };
}

/** A tiny PNG (1×1). */
export const PNG = Buffer.from(
  "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg==",
  "base64",
);
