// The bridge protocol's types and parsers (PROTOCOL.md is the description).
// This module must never know Baileys: it is the wire format only.

export const PROTOCOL_VERSION = 1;
export const BRIDGE_VERSION = "0.1.0";

/** WebSocket close codes of a failed handshake. */
export const Close = {
  BadRequest: 4000,
  Unauthorized: 4001,
  UnsupportedVersion: 4002,
  AuthTimeout: 4003,
  Replaced: 4004,
  GoingAway: 1001,
} as const;

export type MediaKind = "image" | "document" | "audio" | "video" | "sticker";
export const MEDIA_KINDS: readonly MediaKind[] = ["image", "document", "audio", "video", "sticker"];

export type WaState = "connecting" | "connected" | "reconnecting" | "logged_out" | "banned" | "replaced";
export const WA_STATES: readonly WaState[] = [
  "connecting",
  "connected",
  "reconnecting",
  "logged_out",
  "banned",
  "replaced",
];

export interface Me {
  phone_jid?: string | null;
  lid_jid?: string | null;
  name?: string | null;
}

export interface Sender {
  phone_jid?: string | null;
  lid_jid?: string | null;
  name?: string | null;
}

export interface InboundMedia {
  kind: MediaKind;
  mime_type: string;
  file_name?: string | null;
  caption?: string | null;
  size_bytes: number;
  data_base64: string;
}

export interface OutboundMedia {
  kind: MediaKind;
  mime_type: string;
  file_name?: string | null;
  caption?: string | null;
  data_base64: string;
}

export interface ReplyTo {
  id: string;
  sender_jid?: string | null;
  from_me: boolean;
}

// Bridge → gateway.
export interface ReadyMsg {
  type: "ready";
  protocol_version: number;
  bridge_version: string;
}
export interface StatusMsg {
  type: "status";
  state: WaState;
  reason?: string | null;
  retry_in_ms?: number | null;
  me?: Me | null;
}
export interface QrMsg {
  type: "qr";
  data: string;
}
export interface MessageMsg {
  type: "message";
  id: string;
  chat_id: string;
  is_group: boolean;
  sender: Sender;
  text: string;
  timestamp_ms: number;
  reply_to?: ReplyTo | null;
  mentions_me: boolean;
  media?: InboundMedia | null;
  media_error?: string | null;
}
export interface SendResultMsg {
  type: "send_result";
  id: string;
  ok: boolean;
  message_ids?: string[];
  error?: string | null;
  retryable?: boolean;
}
export interface ErrorMsg {
  type: "error";
  id?: string | null;
  message: string;
}
export type ToGateway = ReadyMsg | StatusMsg | QrMsg | MessageMsg | SendResultMsg | ErrorMsg;

// Gateway → bridge.
export interface AuthCmd {
  type: "auth";
  token: string;
  protocol_version: number;
}
export interface AckCmd {
  type: "ack";
  id: string;
}
export interface SendCmd {
  type: "send";
  id: string;
  chat_id: string;
  text?: string | null;
  reply_to?: string | null;
  media?: OutboundMedia[] | null;
}
export interface LoginCmd {
  type: "login";
}
export type ToBridge = AuthCmd | AckCmd | SendCmd | LoginCmd;

/** A message that does not follow the protocol. */
export class ProtocolError extends Error {}

type Obj = Record<string, unknown>;

function fail(what: string): never {
  throw new ProtocolError(what);
}
function obj(v: unknown, what: string): Obj {
  if (typeof v !== "object" || v === null || Array.isArray(v)) fail(`${what} must be an object`);
  return v as Obj;
}
function str(o: Obj, k: string, what: string): string {
  const v = o[k];
  if (typeof v !== "string") fail(`${what}.${k} must be a string`);
  return v;
}
function nonEmpty(o: Obj, k: string, what: string): string {
  const v = str(o, k, what);
  if (v.length === 0) fail(`${what}.${k} must not be empty`);
  return v;
}
function optStr(o: Obj, k: string, what: string): string | null | undefined {
  const v = o[k];
  if (v === undefined || v === null) return v;
  if (typeof v !== "string") fail(`${what}.${k} must be a string or null`);
  return v;
}
function bool(o: Obj, k: string, what: string): boolean {
  const v = o[k];
  if (typeof v !== "boolean") fail(`${what}.${k} must be a boolean`);
  return v;
}
function num(o: Obj, k: string, what: string): number {
  const v = o[k];
  if (typeof v !== "number" || !Number.isFinite(v)) fail(`${what}.${k} must be a number`);
  return v;
}
function base64(o: Obj, k: string, what: string): string {
  const v = str(o, k, what);
  if (!/^[A-Za-z0-9+/]*={0,2}$/.test(v) || v.length % 4 !== 0) fail(`${what}.${k} must be base64`);
  return v;
}
function kind(o: Obj, what: string): MediaKind {
  const v = str(o, "kind", what);
  if (!MEDIA_KINDS.includes(v as MediaKind)) fail(`${what}.kind ${JSON.stringify(v)} is not one of ${MEDIA_KINDS.join(", ")}`);
  return v as MediaKind;
}

function parseJson(text: string): Obj {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch {
    fail("not valid JSON");
  }
  const o = obj(v, "message");
  str(o, "type", "message");
  return o;
}

function outboundMedia(v: unknown, what: string): OutboundMedia {
  const o = obj(v, what);
  return {
    kind: kind(o, what),
    mime_type: nonEmpty(o, "mime_type", what),
    file_name: optStr(o, "file_name", what),
    caption: optStr(o, "caption", what),
    data_base64: base64(o, "data_base64", what),
  };
}

/** Parses and validates one gateway → bridge message. */
export function parseToBridge(text: string): ToBridge {
  const o = parseJson(text);
  switch (o.type) {
    case "auth":
      return { type: "auth", token: str(o, "token", "auth"), protocol_version: num(o, "protocol_version", "auth") };
    case "ack":
      return { type: "ack", id: nonEmpty(o, "id", "ack") };
    case "send": {
      const media = o.media;
      if (media !== undefined && media !== null && !Array.isArray(media)) fail("send.media must be a list");
      const cmd: SendCmd = {
        type: "send",
        id: nonEmpty(o, "id", "send"),
        chat_id: nonEmpty(o, "chat_id", "send"),
        text: optStr(o, "text", "send"),
        reply_to: optStr(o, "reply_to", "send"),
        media: media ? (media as unknown[]).map((m, i) => outboundMedia(m, `send.media[${i}]`)) : null,
      };
      if (!cmd.text && !(cmd.media && cmd.media.length > 0)) fail("send needs text or media");
      return cmd;
    }
    case "login":
      return { type: "login" };
    default:
      fail(`unknown command type ${JSON.stringify(o.type)}`);
  }
}

function sender(v: unknown, what: string): Sender {
  const o = obj(v, what);
  const s: Sender = {
    phone_jid: optStr(o, "phone_jid", what),
    lid_jid: optStr(o, "lid_jid", what),
    name: optStr(o, "name", what),
  };
  if (!s.phone_jid && !s.lid_jid) fail(`${what} needs phone_jid or lid_jid`);
  if (s.phone_jid && !s.phone_jid.endsWith("@s.whatsapp.net")) fail(`${what}.phone_jid must end in @s.whatsapp.net`);
  if (s.lid_jid && !s.lid_jid.endsWith("@lid")) fail(`${what}.lid_jid must end in @lid`);
  return s;
}

/** Parses and validates one bridge → gateway message (used by tests and tools). */
export function parseToGateway(text: string): ToGateway {
  const o = parseJson(text);
  switch (o.type) {
    case "ready":
      return {
        type: "ready",
        protocol_version: num(o, "protocol_version", "ready"),
        bridge_version: str(o, "bridge_version", "ready"),
      };
    case "status": {
      const state = str(o, "state", "status");
      if (!WA_STATES.includes(state as WaState)) fail(`status.state ${JSON.stringify(state)} is unknown`);
      const me = o.me === undefined || o.me === null ? o.me : sender(o.me, "status.me");
      const retry = o.retry_in_ms === undefined || o.retry_in_ms === null ? o.retry_in_ms : num(o, "retry_in_ms", "status");
      return { type: "status", state: state as WaState, reason: optStr(o, "reason", "status"), retry_in_ms: retry, me };
    }
    case "qr":
      return { type: "qr", data: nonEmpty(o, "data", "qr") };
    case "message": {
      let reply_to: ReplyTo | null | undefined = o.reply_to as null | undefined;
      if (o.reply_to !== undefined && o.reply_to !== null) {
        const r = obj(o.reply_to, "message.reply_to");
        reply_to = {
          id: nonEmpty(r, "id", "message.reply_to"),
          sender_jid: optStr(r, "sender_jid", "message.reply_to"),
          from_me: bool(r, "from_me", "message.reply_to"),
        };
      }
      let media: InboundMedia | null | undefined = o.media as null | undefined;
      if (o.media !== undefined && o.media !== null) {
        const m = obj(o.media, "message.media");
        media = { ...outboundMedia(m, "message.media"), size_bytes: num(m, "size_bytes", "message.media") };
      }
      return {
        type: "message",
        id: nonEmpty(o, "id", "message"),
        chat_id: nonEmpty(o, "chat_id", "message"),
        is_group: bool(o, "is_group", "message"),
        sender: sender(o.sender, "message.sender"),
        text: str(o, "text", "message"),
        timestamp_ms: num(o, "timestamp_ms", "message"),
        reply_to,
        mentions_me: bool(o, "mentions_me", "message"),
        media,
        media_error: optStr(o, "media_error", "message"),
      };
    }
    case "send_result": {
      const ids = o.message_ids;
      if (ids !== undefined && (!Array.isArray(ids) || ids.some((i) => typeof i !== "string")))
        fail("send_result.message_ids must be a list of strings");
      const r: SendResultMsg = {
        type: "send_result",
        id: nonEmpty(o, "id", "send_result"),
        ok: bool(o, "ok", "send_result"),
        message_ids: ids as string[] | undefined,
        error: optStr(o, "error", "send_result"),
      };
      if (o.retryable !== undefined) r.retryable = bool(o, "retryable", "send_result");
      if (!r.ok && !r.error) fail("a failed send_result needs an error");
      return r;
    }
    case "error":
      return { type: "error", id: optStr(o, "id", "error"), message: str(o, "message", "error") };
    default:
      fail(`unknown message type ${JSON.stringify(o.type)}`);
  }
}
