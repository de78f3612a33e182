import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";
import { describe, it } from "node:test";

import { ProtocolError, parseToBridge, parseToGateway } from "../src/protocol.js";

const dir = new URL("../../protocol/examples/", import.meta.url);
const files = readdirSync(dir).filter((f) => f.endsWith(".json"));

describe("protocol examples", () => {
  it("cover every message type in both directions", () => {
    const types = new Set(files.map((f) => f.split(".").slice(0, 2).join(".")));
    for (const t of ["ready", "status", "qr", "message", "send_result", "error"]) assert.ok(types.has(`to-gateway.${t}`), t);
    for (const t of ["auth", "ack", "send", "login"]) assert.ok(types.has(`to-bridge.${t}`), t);
  });

  for (const file of files) {
    it(`${file} parses and keeps its type`, () => {
      const text = readFileSync(new URL(file, dir), "utf8");
      const expected = file.split(".")[1];
      if (file.startsWith("to-gateway.")) {
        assert.equal(parseToGateway(text).type, expected);
      } else if (file.startsWith("to-bridge.")) {
        assert.equal(parseToBridge(text).type, expected);
      } else {
        assert.fail(`${file} must start with to-gateway. or to-bridge.`);
      }
    });
  }
});

describe("protocol parsing", () => {
  it("refuses malformed messages with a reason", () => {
    const bad: [(t: string) => unknown, string, RegExp][] = [
      [parseToBridge, "not json", /JSON/],
      [parseToBridge, '{"type":"frobnicate"}', /unknown command/],
      [parseToBridge, '{"type":"ack"}', /ack.id/],
      [parseToBridge, '{"type":"send","id":"x","chat_id":"y"}', /text or media/],
      [parseToBridge, '{"type":"send","id":"x","chat_id":"y","media":[{"kind":"gif","mime_type":"a","data_base64":""}]}', /kind/],
      [parseToBridge, '{"type":"send","id":"x","chat_id":"y","media":[{"kind":"image","mime_type":"a","data_base64":"!!"}]}', /base64/],
      [parseToGateway, '{"type":"status","state":"sleepy"}', /state/],
      [parseToGateway, '{"type":"message","id":"1","chat_id":"c","is_group":false,"sender":{},"text":"","timestamp_ms":1,"mentions_me":false}', /phone_jid or lid_jid/],
      [parseToGateway, '{"type":"send_result","id":"1","ok":false}', /needs an error/],
    ];
    for (const [parse, text, reason] of bad) {
      assert.throws(() => parse(text), (e: unknown) => e instanceof ProtocolError && reason.test(e.message), text);
    }
  });
});
