import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";

import { Close } from "../src/protocol.js";
import { Client, ME, PNG, TOKEN, dmText, eventually, startBridge, type Bridge } from "./helpers.js";

describe("token auth", () => {
  let bridge: Bridge;
  before(async () => {
    bridge = await startBridge({ authTimeoutMs: 300 });
  });
  after(() => bridge.stop());

  it("the right token and version get ready, then the status", async () => {
    const c = await Client.connect(bridge.url);
    assert.deepEqual(await c.type("ready"), { type: "ready", protocol_version: 1, bridge_version: "0.1.0" });
    assert.equal((await c.type("status")).state, "connecting");
    c.close();
  });

  it("a wrong token is closed with 4001", async () => {
    const c = await Client.connect(bridge.url, "wrong-token-0123456789");
    assert.deepEqual(await c.closed, { code: Close.Unauthorized, reason: "unauthorized: wrong or missing token" });
  });

  it("a missing token is closed with 4001", async () => {
    const c = await Client.connect(bridge.url, null);
    assert.equal((await c.closed).code, Close.Unauthorized);
  });

  it("another protocol version is closed with 4002 naming both versions", async () => {
    const c = await Client.connect(bridge.url, TOKEN, 2);
    const { code, reason } = await c.closed;
    assert.equal(code, Close.UnsupportedVersion);
    assert.match(reason, /protocol_version 2; this bridge speaks 1/);
  });

  it("a first message that is not auth is closed with 4000", async () => {
    const c = new Client(bridge.url);
    await c.opened;
    c.send({ type: "ack", id: "x" });
    assert.equal((await c.closed).code, Close.BadRequest);
  });

  it("silence is closed with 4003 after the auth timeout", async () => {
    const c = new Client(bridge.url);
    await c.opened;
    assert.equal((await c.closed).code, Close.AuthTimeout);
  });

  it("the test-only control path needs the token too", async () => {
    const c = await Client.connect(bridge.url + "/_fake", "wrong-token-0123456789");
    assert.equal((await c.closed).code, Close.Unauthorized);
  });
});

describe("the gateway connection", () => {
  it("gets the QR code, then connected with the account's ids once it is scanned", async () => {
    const bridge = await startBridge();
    try {
      const c = await Client.connect(bridge.url);
      assert.deepEqual(await c.type("qr"), { type: "qr", data: "FAKE-QR-1" });
      bridge.fake.pair(ME);
      const status = await c.next((m) => m.type === "status" && m.state === "connected");
      assert.deepEqual(status.me, { phone_jid: ME.phone_jid, lid_jid: ME.lid_jid, name: "Nexus" });
      c.close();
    } finally {
      await bridge.stop();
    }
  });

  it("a gateway that connects while a QR waits is sent that QR", async () => {
    const bridge = await startBridge();
    try {
      await eventually("a QR code", () => bridge.wa.pendingQr());
      const c = await Client.connect(bridge.url);
      await c.type("ready");
      assert.equal((await c.type("qr")).data, "FAKE-QR-1");
      c.close();
    } finally {
      await bridge.stop();
    }
  });

  it("a message is re-sent after a reconnect until it is acked, and only then marked read", async () => {
    const bridge = await startBridge();
    try {
      await eventually("the QR", () => bridge.wa.pendingQr());
      bridge.fake.pair(ME);
      await eventually("connected", () => bridge.wa.status().state === "connected");
      const first = await Client.connect(bridge.url);
      bridge.fake.inbound(dmText("M1", "hello") as never);
      assert.equal((await first.type("message")).id, "M1");
      first.close();
      await first.closed;
      assert.equal(bridge.fake.reads.length, 0, "not read before the gateway acked it");

      // Arrives while no gateway is connected.
      bridge.fake.inbound(dmText("M2", "are you there?") as never);
      await eventually("M2 pending", () => bridge.pending.size === 2);

      const second = await Client.connect(bridge.url);
      assert.equal((await second.type("message")).id, "M1");
      assert.equal((await second.type("message")).id, "M2");
      second.send({ type: "ack", id: "M1" });
      await eventually("the read receipt", () => bridge.fake.reads.length === 1);
      assert.equal(bridge.fake.reads[0].id, "M1");
      assert.equal(bridge.pending.size, 1);
      second.close();

      const third = await Client.connect(bridge.url);
      assert.equal((await third.type("message")).id, "M2", "only the unacked one is re-sent");
      third.close();
    } finally {
      await bridge.stop();
    }
  });

  it("a newer gateway connection replaces the older one", async () => {
    const bridge = await startBridge();
    try {
      const old = await Client.connect(bridge.url);
      await old.type("ready");
      const fresh = await Client.connect(bridge.url);
      await fresh.type("ready");
      assert.equal((await old.closed).code, Close.Replaced);
      fresh.close();
    } finally {
      await bridge.stop();
    }
  });

  it("sends text and media, quotes the message replied to, and never sends one id twice", async () => {
    const bridge = await startBridge();
    try {
      await eventually("the QR", () => bridge.wa.pendingQr());
      bridge.fake.pair(ME);
      await eventually("connected", () => bridge.wa.status().state === "connected");
      const c = await Client.connect(bridge.url);
      bridge.fake.inbound(dmText("Q1", "question") as never);
      await c.type("message");

      const send = {
        type: "send",
        id: "reply:whatsapp:Q1",
        chat_id: "491511234567@s.whatsapp.net",
        text: "answer",
        reply_to: "Q1",
        media: [{ kind: "image", mime_type: "image/png", file_name: "a.png", data_base64: PNG.toString("base64") }],
      };
      c.send(send);
      const result = await c.type("send_result");
      assert.deepEqual(result, { type: "send_result", id: "reply:whatsapp:Q1", ok: true, message_ids: ["FAKE-OUT-1"] });
      assert.equal(bridge.fake.sends.length, 1);
      const sent = bridge.fake.sends[0];
      assert.equal(sent.jid, "491511234567@s.whatsapp.net");
      assert.deepEqual((sent.content as { image: Buffer }).image, PNG);
      assert.equal((sent.content as { caption: string }).caption, "answer");
      assert.equal(sent.options?.quoted?.key.id, "Q1");

      c.send(send);
      assert.deepEqual(await c.type("send_result"), result);
      assert.equal(bridge.fake.sends.length, 1, "a retried send is answered from memory");

      c.send({ type: "send", id: "bad", chat_id: "nobody", text: "x" });
      const bad = await c.type("send_result");
      assert.equal(bad.ok, false);
      assert.equal(bad.retryable, false);

      c.send({ type: "send", id: "broken" });
      const broken = await c.type("send_result");
      assert.equal(broken.ok, false);
      assert.match(broken.error, /chat_id/);
      c.close();
    } finally {
      await bridge.stop();
    }
  });

  it("a send while WhatsApp is not connected fails as retryable", async () => {
    const bridge = await startBridge();
    try {
      const c = await Client.connect(bridge.url);
      c.send({ type: "send", id: "early", chat_id: "491511234567@s.whatsapp.net", text: "x" });
      const r = await c.type("send_result");
      assert.equal(r.ok, false);
      assert.equal(r.retryable, true);
      assert.match(r.error, /not connected/);
      c.close();
    } finally {
      await bridge.stop();
    }
  });

  it("the control path drives the fake: pair, inbound image, recorded sends", async () => {
    const bridge = await startBridge();
    try {
      const gw = await Client.connect(bridge.url);
      await gw.type("qr");
      const ctl = await Client.connect(bridge.url + "/_fake");
      await ctl.type("fake.ok");
      await ctl.control({ type: "fake.pair", ...ME });
      await gw.next((m) => m.type === "status" && m.state === "connected");
      await ctl.control({
        type: "fake.inbound",
        message: {
          key: { remoteJid: "251100000000001@lid", id: "IMG9", fromMe: false },
          message: { imageMessage: { mimetype: "image/png", caption: "look" } },
          messageTimestamp: 5,
        },
        media_base64: PNG.toString("base64"),
        lid_to_phone: { "251100000000001@lid": "491511234567@s.whatsapp.net" },
      });
      const m = await gw.type("message");
      assert.equal(m.media.data_base64, PNG.toString("base64"));
      assert.equal(m.sender.phone_jid, "491511234567@s.whatsapp.net");
      gw.send({ type: "ack", id: "IMG9" });
      gw.send({ type: "send", id: "r-img9", chat_id: m.chat_id, text: "a pixel" });
      await gw.type("send_result");
      const sent = await ctl.control({ type: "fake.sent" });
      assert.deepEqual(sent.sends, [{ jid: "251100000000001@lid", content: { text: "a pixel" }, quoted_id: null }]);
      await eventually("the read receipt", () => bridge.fake.reads.length === 1);
      gw.close();
      ctl.close();
    } finally {
      await bridge.stop();
    }
  });
});
