// The WebSocket server the gateway connects to: token auth on the first message,
// one gateway at a time, the pending queue re-sent on every (re)connect, and
// commands routed to `WhatsApp`. It must never know Baileys types.

import { createHash, timingSafeEqual } from "node:crypto";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";

import { WebSocket, WebSocketServer } from "ws";

import type { FakeWhatsApp } from "./fake-socket.js";
import type { Logger } from "./log.js";
import type { PendingQueue, ReceiptKey } from "./pending.js";
import {
  BRIDGE_VERSION,
  Close,
  PROTOCOL_VERSION,
  ProtocolError,
  parseToBridge,
  type MessageMsg,
  type ToGateway,
} from "./protocol.js";
import type { WhatsApp } from "./whatsapp.js";

export interface ServerOptions {
  host: string;
  port: number;
  token: string;
  authTimeoutMs: number;
  wa: WhatsApp;
  pending: PendingQueue;
  log: Logger;
  /** Test mode: the fake WhatsApp, driven over `/_fake`. */
  fake?: FakeWhatsApp;
  /** Largest frame accepted (media travel base64 inside). */
  maxPayload?: number;
  pingIntervalMs?: number;
}

export interface BridgeServer {
  port: number;
  close(): Promise<void>;
}

const digest = (s: string) => createHash("sha256").update(s).digest();

export async function startServer(opts: ServerOptions): Promise<BridgeServer> {
  const { wa, pending, log } = opts;
  const expected = digest(opts.token);
  const tokenOk = (t: string) => timingSafeEqual(digest(t), expected);

  const http: Server = createServer((_req, res) => {
    res.writeHead(426, { "content-type": "text/plain" }).end("this is the WhatsApp bridge: WebSocket only\n");
  });
  const wss = new WebSocketServer({ server: http, maxPayload: opts.maxPayload ?? 64 * 1024 * 1024 });
  const alive = new WeakMap<WebSocket, boolean>();
  let gateway: WebSocket | undefined;

  const send = (ws: WebSocket | undefined, msg: ToGateway | Record<string, unknown>) => {
    if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(msg));
  };

  const onStatus = (s: ToGateway) => send(gateway, s);
  const onQr = (data: string) => send(gateway, { type: "qr", data });
  const onMessage = (m: MessageMsg, key: ReceiptKey) => {
    pending.add(m, key);
    send(gateway, m);
  };
  wa.on("status", onStatus);
  wa.on("qr", onQr);
  wa.on("message", onMessage);

  function attachGateway(ws: WebSocket): void {
    if (gateway && gateway !== ws) gateway.close(Close.Replaced, "replaced by a newer gateway connection");
    gateway = ws;
    log.info({ pending: pending.size }, "gateway connected");
    send(ws, { type: "ready", protocol_version: PROTOCOL_VERSION, bridge_version: BRIDGE_VERSION });
    send(ws, wa.status());
    const qr = wa.pendingQr();
    if (qr) send(ws, { type: "qr", data: qr });
    for (const m of pending.list()) send(ws, m);
  }

  function onCommand(ws: WebSocket, text: string): void {
    let cmd;
    try {
      cmd = parseToBridge(text);
    } catch (error) {
      if (!(error instanceof ProtocolError)) throw error;
      let raw: { type?: unknown; id?: unknown } = {};
      try {
        raw = JSON.parse(text);
      } catch {
        /* not JSON */
      }
      const id = typeof raw.id === "string" ? raw.id : null;
      if (raw.type === "send" && id) {
        send(ws, { type: "send_result", id, ok: false, error: error.message, retryable: false });
      } else {
        send(ws, { type: "error", id, message: error.message });
      }
      return;
    }
    switch (cmd.type) {
      case "auth":
        send(ws, { type: "error", id: null, message: "already authenticated" });
        return;
      case "ack": {
        const entry = pending.ack(cmd.id);
        if (entry) wa.markRead(entry.key);
        return;
      }
      case "send":
        wa.send(cmd).then(
          (result) => send(ws, result),
          (error) => send(ws, { type: "send_result", id: cmd.id, ok: false, error: String(error), retryable: true }),
        );
        return;
      case "login":
        wa.login().then(
          (started) => {
            if (!started) send(ws, wa.status());
          },
          (error) => send(ws, { type: "error", id: null, message: `login failed: ${(error as Error).message}` }),
        );
        return;
    }
  }

  function onControl(ws: WebSocket, text: string): void {
    const fake = opts.fake;
    if (!fake) return;
    try {
      const o = JSON.parse(text) as Record<string, unknown>;
      switch (o.type) {
        case "fake.pair":
          fake.pair(o as { phone_jid: string; lid_jid?: string; name?: string });
          send(ws, { type: "fake.ok" });
          return;
        case "fake.inbound": {
          const media = typeof o.media_base64 === "string" ? Buffer.from(o.media_base64, "base64") : undefined;
          if (typeof o.lid_to_phone === "object" && o.lid_to_phone) {
            for (const [lid, pn] of Object.entries(o.lid_to_phone as Record<string, string>)) fake.lidToPhone.set(lid, pn);
          }
          fake.inbound(o.message as never, media);
          send(ws, { type: "fake.ok" });
          return;
        }
        case "fake.close":
          fake.close(Number(o.status_code));
          send(ws, { type: "fake.ok" });
          return;
        case "fake.sent":
          send(ws, { type: "fake.ok", ...fake.snapshot() });
          return;
        default:
          send(ws, { type: "fake.error", message: `unknown control ${JSON.stringify(o.type)}` });
      }
    } catch (error) {
      send(ws, { type: "fake.error", message: (error as Error).message });
    }
  }

  wss.on("connection", (ws, req) => {
    const path = new URL(req.url ?? "/", "http://bridge").pathname;
    const control = path === "/_fake";
    if (path !== "/" && !(control && opts.fake)) {
      ws.close(Close.BadRequest, "unknown path");
      return;
    }
    alive.set(ws, true);
    ws.on("pong", () => alive.set(ws, true));
    let authed = false;
    const timer = setTimeout(() => {
      log.warn({ path }, "connection closed: no auth message in time");
      ws.close(Close.AuthTimeout, `no auth message within ${opts.authTimeoutMs} ms`);
    }, opts.authTimeoutMs);

    ws.on("message", (data, isBinary) => {
      const text = isBinary ? "" : data.toString();
      if (authed) {
        if (control) onControl(ws, text);
        else onCommand(ws, text);
        return;
      }
      clearTimeout(timer);
      let o: { type?: unknown; token?: unknown; protocol_version?: unknown } | null = null;
      try {
        o = JSON.parse(text);
      } catch {
        /* handled below */
      }
      if (!o || typeof o !== "object" || o.type !== "auth") {
        ws.close(Close.BadRequest, 'the first message must be {"type":"auth",...}');
        return;
      }
      if (typeof o.token !== "string" || !tokenOk(o.token)) {
        log.warn({ path }, "connection refused: wrong or missing token");
        ws.close(Close.Unauthorized, "unauthorized: wrong or missing token");
        return;
      }
      if (o.protocol_version !== PROTOCOL_VERSION) {
        ws.close(
          Close.UnsupportedVersion,
          `unsupported protocol_version ${JSON.stringify(o.protocol_version)}; this bridge speaks ${PROTOCOL_VERSION}`,
        );
        return;
      }
      authed = true;
      if (control) send(ws, { type: "fake.ok" });
      else attachGateway(ws);
    });
    ws.on("close", () => {
      clearTimeout(timer);
      if (gateway === ws) {
        gateway = undefined;
        log.info("gateway disconnected");
      }
    });
    ws.on("error", (error) => log.warn({ error }, "WebSocket error"));
  });

  // Dead connections (a gateway host that vanished) are noticed and dropped.
  const ping = setInterval(() => {
    for (const ws of wss.clients) {
      if (!alive.get(ws)) {
        ws.terminate();
        continue;
      }
      alive.set(ws, false);
      ws.ping();
    }
  }, opts.pingIntervalMs ?? 30_000);
  ping.unref();

  await new Promise<void>((resolve, reject) => {
    http.once("error", reject);
    http.listen(opts.port, opts.host, () => resolve());
  });
  const port = (http.address() as AddressInfo).port;

  return {
    port,
    close: async () => {
      clearInterval(ping);
      wa.off("status", onStatus);
      wa.off("qr", onQr);
      wa.off("message", onMessage);
      const closed = [...wss.clients].map((ws) => new Promise<void>((r) => ws.once("close", () => r())));
      for (const ws of wss.clients) ws.close(Close.GoingAway, "bridge shutting down");
      // Connections that do not close politely within a moment are cut.
      await Promise.race([Promise.all(closed), new Promise((r) => setTimeout(r, 1000).unref())]);
      for (const ws of wss.clients) ws.terminate();
      await new Promise<void>((r) => wss.close(() => r()));
      await new Promise<void>((r) => http.close(() => r()));
    },
  };
}
