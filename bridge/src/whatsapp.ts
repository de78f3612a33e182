// The Baileys side of the bridge: the WhatsApp connection's life cycle (QR pairing,
// session files, reconnect policy), inbound mapping (text, media, groups, LID/phone)
// and paced outbound sends. It must never know the gateway's WebSocket: it emits
// protocol messages and takes protocol commands.
//
// The Baileys socket is reached only through `WaSocket`, so tests (and
// BRIDGE_FAKE_SOCKET=1) swap in `fake-socket.ts` at exactly that boundary.

import { EventEmitter } from "node:events";
import { mkdirSync, readdirSync, rmSync, statSync } from "node:fs";
import { join } from "node:path";

import makeWASocket, {
  Browsers,
  DisconnectReason,
  areJidsSameUser,
  downloadMediaMessage,
  isJidBroadcast,
  isJidGroup,
  isJidNewsletter,
  isJidStatusBroadcast,
  jidNormalizedUser,
  makeCacheableSignalKeyStore,
  normalizeMessageContent,
  useMultiFileAuthState,
  type AnyMessageContent,
  type AuthenticationState,
  type ConnectionState,
  type WAMessage,
  type WAMessageKey,
  type proto,
} from "baileys";

import type { GroupMode } from "./config.js";
import type { Logger } from "./log.js";
import type { Pacer } from "./pacing.js";
import type { ReceiptKey } from "./pending.js";
import type { InboundMedia, Me, MediaKind, MessageMsg, SendCmd, SendResultMsg, StatusMsg, WaState } from "./protocol.js";

/** What the bridge needs from a Baileys socket; the module boundary the fake replaces. */
export interface WaSocket {
  onConnection(handler: (update: Partial<ConnectionState>) => void): void;
  onCreds(handler: () => void): void;
  onMessages(handler: (upsert: { messages: WAMessage[]; type: string }) => void): void;
  /** The logged-in account, once known. */
  user(): { id?: string; lid?: string; phoneNumber?: string; name?: string } | undefined;
  sendMessage(jid: string, content: AnyMessageContent, options?: { quoted?: WAMessage }): Promise<{ key?: { id?: string | null } } | undefined>;
  readMessages(keys: WAMessageKey[]): Promise<void>;
  downloadMedia(msg: WAMessage): Promise<Buffer>;
  /** The phone-number JID behind a LID, when WhatsApp has told us. */
  phoneForLid(lid: string): Promise<string | null>;
  end(): void;
}

export type SocketFactory = (auth: AuthenticationState, log: Logger) => WaSocket;

/** The real thing: a Baileys socket. */
export const baileysSocket: SocketFactory = (auth, log) => {
  const sock = makeWASocket({
    auth: { creds: auth.creds, keys: makeCacheableSignalKeyStore(auth.keys, log) },
    logger: log,
    browser: Browsers.ubuntu("Nexus"),
    markOnlineOnConnect: false,
    syncFullHistory: false,
  });
  return {
    onConnection: (h) => sock.ev.on("connection.update", h),
    onCreds: (h) => sock.ev.on("creds.update", h),
    onMessages: (h) => sock.ev.on("messages.upsert", h),
    user: () => sock.user,
    sendMessage: (jid, content, options) => sock.sendMessage(jid, content, options),
    readMessages: (keys) => sock.readMessages(keys),
    downloadMedia: (msg) => downloadMediaMessage(msg, "buffer", {}, { logger: log, reuploadRequest: sock.updateMediaMessage }),
    phoneForLid: (lid) => sock.signalRepository.lidMapping.getPNForLID(lid),
    end: () => sock.end(undefined),
  };
};

// ---------------------------------------------------------------------------
// Reconnect policy

export type CloseDecision =
  | { action: "reconnect"; immediate: boolean; reason: string }
  | { action: "stop"; state: Extract<WaState, "logged_out" | "banned" | "replaced">; reason: string };

/** What to do when WhatsApp closes the socket. Stopping states wait for `login`. */
export function decideOnClose(statusCode: number | undefined, loggedIn: boolean): CloseDecision {
  const code = statusCode ?? 0;
  switch (code) {
    case DisconnectReason.loggedOut:
      return { action: "stop", state: "logged_out", reason: "logged out from the phone (401); send login to pair again" };
    case DisconnectReason.forbidden:
      return { action: "stop", state: "banned", reason: "WhatsApp refused this account (403 forbidden)" };
    case DisconnectReason.connectionReplaced:
      return {
        action: "stop",
        state: "replaced",
        reason: "another WhatsApp Web session replaced this one (440); send login to take over",
      };
    case DisconnectReason.multideviceMismatch:
      return { action: "stop", state: "logged_out", reason: "this account cannot use linked devices (411)" };
    case DisconnectReason.restartRequired:
      return { action: "reconnect", immediate: true, reason: "restart required (515)" };
  }
  if (!loggedIn && code === DisconnectReason.timedOut) {
    return { action: "stop", state: "logged_out", reason: "pairing expired: the QR code was not scanned in time; send login to try again" };
  }
  return { action: "reconnect", immediate: false, reason: `connection closed (${code || "no code"})` };
}

/** Exponential backoff with jitter: `random` 1 gives the full delay, 0 three quarters of it. */
export function backoffDelay(attempt: number, initialMs: number, maxMs: number, random: () => number = Math.random): number {
  const full = Math.min(maxMs, initialMs * 2 ** Math.min(attempt, 30));
  return Math.round(full * (0.75 + 0.25 * random()));
}

// ---------------------------------------------------------------------------
// Inbound mapping

/** The bot's own ids, for mention and reply detection. */
export interface MeIds {
  phone_jid?: string;
  lid_jid?: string;
}

export interface MapContext {
  me: MeIds;
  groupMode: GroupMode;
  maxMediaBytes: number;
  download(msg: WAMessage): Promise<Buffer>;
  phoneForLid(lid: string): Promise<string | null>;
}

type MediaNode = {
  mimetype?: string | null;
  caption?: string | null;
  fileName?: string | null;
  fileLength?: unknown;
  contextInfo?: proto.IContextInfo | null;
};

function mediaOf(content: proto.IMessage): { kind: MediaKind; node: MediaNode } | undefined {
  if (content.imageMessage) return { kind: "image", node: content.imageMessage };
  if (content.videoMessage) return { kind: "video", node: content.videoMessage };
  if (content.audioMessage) return { kind: "audio", node: content.audioMessage };
  if (content.documentMessage) return { kind: "document", node: content.documentMessage };
  if (content.stickerMessage) return { kind: "sticker", node: content.stickerMessage };
  return undefined;
}

const DEFAULT_MIME: Record<MediaKind, string> = {
  image: "image/jpeg",
  video: "video/mp4",
  audio: "audio/ogg",
  document: "application/octet-stream",
  sticker: "image/webp",
};

function extension(mime: string): string {
  const sub = mime.split(";")[0].split("/")[1] ?? "bin";
  return ({ jpeg: "jpg", "octet-stream": "bin", mpeg: "mp3", plain: "txt" } as Record<string, string>)[sub] ?? sub.replace(/[^a-z0-9]/gi, "");
}

function toNumber(v: unknown): number {
  if (typeof v === "number") return v;
  if (typeof v === "bigint") return Number(v);
  if (v && typeof v === "object" && typeof (v as { toNumber?: unknown }).toNumber === "function") {
    return (v as { toNumber(): number }).toNumber();
  }
  const n = Number(v);
  return Number.isFinite(n) ? n : 0;
}

/** A JID without device part, or undefined for anything that is not a user JID. */
export function userJid(jid: string | null | undefined): string | undefined {
  if (!jid) return undefined;
  const n = jidNormalizedUser(jid);
  return n.endsWith("@s.whatsapp.net") || n.endsWith("@lid") ? n : undefined;
}

function isMe(jid: string | null | undefined, me: MeIds): boolean {
  if (!jid) return false;
  return (!!me.phone_jid && areJidsSameUser(jid, me.phone_jid)) || (!!me.lid_jid && areJidsSameUser(jid, me.lid_jid));
}

/** Maps a Baileys message to a protocol `message`, or null when it is not forwarded. */
export async function mapInbound(msg: WAMessage, ctx: MapContext): Promise<MessageMsg | null> {
  const key = msg.key;
  if (!key?.id || !key.remoteJid || key.fromMe) return null;
  const chat = key.remoteJid;
  if (isJidStatusBroadcast(chat) || isJidNewsletter(chat) || isJidBroadcast(chat)) return null;
  const isGroup = !!isJidGroup(chat);
  const content = normalizeMessageContent(msg.message);
  if (!content) return null;

  const media = mediaOf(content);
  const text = content.conversation ?? content.extendedTextMessage?.text ?? media?.node.caption ?? "";
  if (!text && !media) return null;
  const info = content.extendedTextMessage?.contextInfo ?? media?.node.contextInfo ?? undefined;

  // Phone number and LID of the sender: WhatsApp gives one as the address and
  // (Baileys 7) often the other as the "alt"; otherwise ask the LID mapping.
  let phone: string | undefined;
  let lid: string | undefined;
  for (const j of isGroup ? [key.participant, key.participantAlt] : [chat, key.remoteJidAlt]) {
    const u = userJid(j);
    if (u?.endsWith("@lid")) lid ??= u;
    else if (u) phone ??= u;
  }
  if (lid && !phone) {
    phone = userJid(await ctx.phoneForLid(lid).catch(() => null));
  }
  if (!phone && !lid) return null;

  const mentionsMe = (info?.mentionedJid ?? []).some((j) => isMe(j, ctx.me));
  const replyTo = info?.stanzaId
    ? { id: info.stanzaId, sender_jid: info.participant ?? null, from_me: isMe(info.participant, ctx.me) }
    : null;
  if (isGroup) {
    if (ctx.groupMode === "off") return null;
    if (ctx.groupMode === "mention" && !mentionsMe && !replyTo?.from_me) return null;
  }

  let inboundMedia: InboundMedia | null = null;
  let mediaError: string | null = null;
  if (media) {
    const declared = toNumber(media.node.fileLength);
    if (declared > ctx.maxMediaBytes) {
      mediaError = `${media.kind} of ${declared} bytes is larger than BRIDGE_MAX_MEDIA_BYTES (${ctx.maxMediaBytes})`;
    } else {
      try {
        const bytes = await ctx.download(msg);
        if (bytes.length > ctx.maxMediaBytes) {
          mediaError = `${media.kind} of ${bytes.length} bytes is larger than BRIDGE_MAX_MEDIA_BYTES (${ctx.maxMediaBytes})`;
        } else {
          const mime = media.node.mimetype || DEFAULT_MIME[media.kind];
          inboundMedia = {
            kind: media.kind,
            mime_type: mime,
            file_name: media.node.fileName || `${key.id}.${extension(mime)}`,
            caption: media.node.caption ?? null,
            size_bytes: bytes.length,
            data_base64: bytes.toString("base64"),
          };
        }
      } catch (error) {
        mediaError = `download failed: ${(error as Error).message}`;
      }
    }
  }

  return {
    type: "message",
    id: key.id,
    chat_id: chat,
    is_group: isGroup,
    sender: { phone_jid: phone ?? null, lid_jid: lid ?? null, name: msg.pushName ?? null },
    text,
    timestamp_ms: toNumber(msg.messageTimestamp) * 1000,
    reply_to: replyTo,
    mentions_me: mentionsMe,
    media: inboundMedia,
    media_error: mediaError,
  };
}

// ---------------------------------------------------------------------------
// Outbound

/** A chat id as WhatsApp wants it: a JID, or a phone number turned into one. */
export function toJid(chatId: string): string {
  if (chatId.includes("@")) return chatId;
  const digits = chatId.replace(/^\+/, "");
  if (/^\d{6,20}$/.test(digits)) return `${digits}@s.whatsapp.net`;
  throw new Error(`chat_id ${JSON.stringify(chatId)} is neither a JID nor a phone number`);
}

/** The WhatsApp messages one `send` becomes, in order. */
export function buildParts(cmd: SendCmd): AnyMessageContent[] {
  let text = cmd.text?.trim() ? cmd.text : undefined;
  const parts: AnyMessageContent[] = [];
  for (const m of cmd.media ?? []) {
    const data = Buffer.from(m.data_base64, "base64");
    let caption = m.caption || undefined;
    if (!caption && text && m.kind !== "audio" && m.kind !== "sticker") {
      caption = text;
      text = undefined;
    }
    switch (m.kind) {
      case "image":
        parts.push({ image: data, mimetype: m.mime_type, caption });
        break;
      case "video":
        parts.push({ video: data, mimetype: m.mime_type, caption });
        break;
      case "audio":
        parts.push({ audio: data, mimetype: m.mime_type });
        break;
      case "document":
        parts.push({ document: data, mimetype: m.mime_type, fileName: m.file_name || "file", caption });
        break;
      case "sticker":
        parts.push({ sticker: data });
        break;
    }
  }
  if (text) parts.unshift({ text });
  return parts;
}

/** A bounded map that forgets the oldest entries. */
class Lru<K, V> {
  private readonly map = new Map<K, V>();
  constructor(private readonly max: number) {}
  get(k: K): V | undefined {
    return this.map.get(k);
  }
  set(k: K, v: V): void {
    this.map.delete(k);
    this.map.set(k, v);
    if (this.map.size > this.max) this.map.delete(this.map.keys().next().value as K);
  }
}

// ---------------------------------------------------------------------------
// The connection

export interface WhatsAppOptions {
  authDir: string;
  factory: SocketFactory;
  log: Logger;
  /** Logger handed to Baileys (quieter by default). */
  baileysLog?: Logger;
  groupMode: GroupMode;
  maxMediaBytes: number;
  backoffInitialMs: number;
  backoffMaxMs: number;
  pacer: Pacer;
  random?: () => number;
  /** A connection open this long counts as healthy: the backoff starts over (default 30 s). */
  stableMs?: number;
}

type Events = {
  qr: [data: string];
  status: [status: StatusMsg];
  message: [message: MessageMsg, key: ReceiptKey];
};

const STOPPED: WaState[] = ["logged_out", "banned", "replaced"];

export class WhatsApp extends EventEmitter<Events> {
  private sock?: WaSocket;
  private auth?: AuthenticationState;
  private generation = 0;
  private current: StatusMsg = { type: "status", state: "connecting" };
  private qr?: string;
  private attempts = 0;
  private openedAt?: number;
  private timer?: NodeJS.Timeout;
  private stopped = false;
  private inbound: Promise<void> = Promise.resolve();
  private readonly recent = new Lru<string, WAMessage>(500);
  private readonly sent = new Lru<string, string>(5000);
  private readonly inflight = new Map<string, Promise<SendResultMsg>>();
  private unsentReads: ReceiptKey[] = [];

  constructor(private readonly opts: WhatsAppOptions) {
    super();
  }

  /** The latest status. */
  status(): StatusMsg {
    return this.current;
  }

  /** The QR code waiting to be scanned, if any. */
  pendingQr(): string | undefined {
    return this.qr;
  }

  async start(): Promise<void> {
    mkdirSync(this.opts.authDir, { recursive: true });
    await this.connect();
  }

  stop(): void {
    this.stopped = true;
    clearTimeout(this.timer);
    this.generation++;
    this.sock?.end();
    this.sock = undefined;
  }

  /** Starts pairing afresh after logged_out/banned/replaced. False when not in such a state. */
  async login(): Promise<boolean> {
    if (!STOPPED.includes(this.current.state)) return false;
    this.clearCredentials();
    this.attempts = 0;
    await this.connect();
    return true;
  }

  private clearCredentials(): void {
    // Only Baileys' files: sub-folders (the pending queue) stay.
    for (const name of readdirSync(this.opts.authDir)) {
      const path = join(this.opts.authDir, name);
      if (statSync(path).isFile()) rmSync(path, { force: true });
    }
    this.opts.log.info("old WhatsApp credentials removed; pairing starts");
  }

  private setStatus(status: Omit<StatusMsg, "type">): void {
    this.current = { type: "status", ...status };
    this.emit("status", this.current);
  }

  private async connect(): Promise<void> {
    clearTimeout(this.timer);
    const gen = ++this.generation;
    this.sock?.end();
    this.sock = undefined;
    const { state, saveCreds } = await useMultiFileAuthState(this.opts.authDir);
    if (gen !== this.generation || this.stopped) return;
    this.auth = state;
    this.setStatus({ state: "connecting" });
    const sock = this.opts.factory(state, this.opts.baileysLog ?? this.opts.log);
    this.sock = sock;
    sock.onCreds(() => {
      saveCreds().catch((error) => this.opts.log.error({ error }, "saving WhatsApp credentials failed"));
    });
    sock.onConnection((update) => {
      if (gen === this.generation) this.onConnection(update, sock);
    });
    sock.onMessages(({ messages, type }) => {
      if (gen !== this.generation || type !== "notify") return;
      for (const m of messages) {
        // One at a time, so messages reach the gateway in the order WhatsApp gave them.
        this.inbound = this.inbound.then(() =>
          this.onMessage(m, sock).catch((error) => this.opts.log.error({ error }, "inbound message could not be mapped")),
        );
      }
    });
  }

  private loggedIn(): boolean {
    return !!this.auth?.creds.me;
  }

  private me(sock: WaSocket): Me {
    const user = sock.user();
    const me: Me = { phone_jid: null, lid_jid: null, name: user?.name ?? null };
    for (const j of [user?.id, user?.lid, user?.phoneNumber]) {
      const u = userJid(j);
      if (u?.endsWith("@lid")) me.lid_jid ??= u;
      else if (u) me.phone_jid ??= u;
    }
    return me;
  }

  private onConnection(update: Partial<ConnectionState>, sock: WaSocket): void {
    if (update.qr) {
      this.qr = update.qr;
      this.emit("qr", update.qr);
    }
    if (update.connection === "open") {
      // The backoff is reset only once the connection proves stable, so a socket
      // that opens and drops at once cannot make the bridge hammer WhatsApp.
      this.openedAt = Date.now();
      this.qr = undefined;
      this.setStatus({ state: "connected", me: this.me(sock) });
      this.flushReads();
    } else if (update.connection === "close") {
      this.sock = undefined;
      this.qr = undefined;
      if (this.openedAt !== undefined && Date.now() - this.openedAt >= (this.opts.stableMs ?? 30_000)) this.attempts = 0;
      this.openedAt = undefined;
      const error = update.lastDisconnect?.error as { output?: { statusCode?: number } } | undefined;
      const decision = decideOnClose(error?.output?.statusCode, this.loggedIn());
      if (decision.action === "stop") {
        this.opts.log.warn({ state: decision.state, reason: decision.reason }, "WhatsApp stopped; waiting for login");
        this.setStatus({ state: decision.state, reason: decision.reason });
        return;
      }
      const delay = decision.immediate
        ? 0
        : backoffDelay(this.attempts++, this.opts.backoffInitialMs, this.opts.backoffMaxMs, this.opts.random);
      this.opts.log.info({ reason: decision.reason, retry_in_ms: delay }, "WhatsApp connection closed; reconnecting");
      this.setStatus({ state: "reconnecting", reason: decision.reason, retry_in_ms: delay });
      if (this.stopped) return;
      this.timer = setTimeout(() => {
        this.connect().catch((err) => this.opts.log.error({ error: err }, "reconnecting failed"));
      }, delay);
    }
  }

  private async onMessage(msg: WAMessage, sock: WaSocket): Promise<void> {
    const user = this.me(sock);
    const mapped = await mapInbound(msg, {
      me: { phone_jid: user.phone_jid ?? undefined, lid_jid: user.lid_jid ?? undefined },
      groupMode: this.opts.groupMode,
      maxMediaBytes: this.opts.maxMediaBytes,
      download: (m) => sock.downloadMedia(m),
      phoneForLid: (lid) => sock.phoneForLid(lid),
    });
    if (!mapped) return;
    this.recent.set(mapped.id, msg);
    const key: ReceiptKey = {
      remoteJid: msg.key.remoteJid,
      id: msg.key.id,
      participant: msg.key.participant ?? null,
      fromMe: false,
    };
    this.emit("message", mapped, key);
  }

  /** Marks a message read (now, or when the connection is back). */
  markRead(key: ReceiptKey): void {
    if (this.sock && this.current.state === "connected") {
      this.sock.readMessages([key as WAMessageKey]).catch((error) => {
        this.opts.log.warn({ error }, "read receipt failed");
      });
    } else {
      this.unsentReads.push(key);
      if (this.unsentReads.length > 1000) this.unsentReads.shift();
    }
  }

  private flushReads(): void {
    const keys = this.unsentReads;
    this.unsentReads = [];
    if (keys.length > 0 && this.sock) {
      this.sock.readMessages(keys as WAMessageKey[]).catch((error) => this.opts.log.warn({ error }, "read receipts failed"));
    }
  }

  /** Sends one reply; a repeated id gets the earlier result instead of a second message. */
  send(cmd: SendCmd): Promise<SendResultMsg> {
    const running = this.inflight.get(cmd.id);
    if (running) return running;
    const p = this.doSend(cmd).finally(() => this.inflight.delete(cmd.id));
    this.inflight.set(cmd.id, p);
    return p;
  }

  private async doSend(cmd: SendCmd): Promise<SendResultMsg> {
    const fail = (error: string, retryable: boolean): SendResultMsg => ({ type: "send_result", id: cmd.id, ok: false, error, retryable });
    let jid: string;
    let parts: AnyMessageContent[];
    try {
      jid = toJid(cmd.chat_id);
      parts = buildParts(cmd);
    } catch (error) {
      return fail((error as Error).message, false);
    }
    if (parts.length === 0) return fail("nothing to send", false);
    const quoted = cmd.reply_to ? this.recent.get(cmd.reply_to) : undefined;
    const ids: string[] = [];
    for (let i = 0; i < parts.length; i++) {
      const partId = `${cmd.id}#${i}`;
      const done = this.sent.get(partId);
      if (done !== undefined) {
        ids.push(done);
        continue;
      }
      if (!this.sock || this.current.state !== "connected") return fail(`WhatsApp is not connected (${this.current.state})`, true);
      await this.opts.pacer.wait(jid);
      const sock = this.sock;
      if (!sock || this.current.state !== "connected") return fail(`WhatsApp is not connected (${this.current.state})`, true);
      try {
        const sent = await sock.sendMessage(jid, parts[i], quoted && i === 0 ? { quoted } : undefined);
        const id = sent?.key?.id ?? "";
        this.sent.set(partId, id);
        ids.push(id);
      } catch (error) {
        return fail(`sending failed: ${(error as Error).message}`, true);
      }
    }
    return { type: "send_result", id: cmd.id, ok: true, message_ids: ids };
  }
}
