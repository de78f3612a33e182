import assert from "node:assert/strict";
import { mkdtempSync, readdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";

import { backoffDelay, decideOnClose } from "../src/whatsapp.js";
import { Client, ME, eventually, startBridge, type Msg } from "./helpers.js";

describe("reconnect policy", () => {
  it("transient closes reconnect, logout, ban and replacement stop", () => {
    assert.equal(decideOnClose(428, true).action, "reconnect");
    assert.equal(decideOnClose(500, true).action, "reconnect");
    assert.equal(decideOnClose(undefined, true).action, "reconnect");
    assert.deepEqual(decideOnClose(515, true), { action: "reconnect", immediate: true, reason: "restart required (515)" });
    assert.equal(decideOnClose(408, true).action, "reconnect", "a lost connection of a logged-in account comes back");
    assert.deepEqual(
      [401, 403, 440].map((c) => {
        const d = decideOnClose(c, true);
        return d.action === "stop" ? d.state : d.action;
      }),
      ["logged_out", "banned", "replaced"],
    );
    const expired = decideOnClose(408, false);
    assert.equal(expired.action, "stop", "an expired QR does not loop");
  });

  it("backoff doubles up to the cap", () => {
    const full = () => 1;
    assert.deepEqual([0, 1, 2, 3, 10].map((a) => backoffDelay(a, 100, 1000, full)), [100, 200, 400, 800, 1000]);
    assert.equal(backoffDelay(2, 100, 1000, () => 0), 300);
  });

  it("a transient close reconnects with growing delays, a logout stops until login", async () => {
    const bridge = await startBridge({ backoffInitialMs: 20 });
    try {
      const c = await Client.connect(bridge.url);
      await c.type("qr");
      bridge.fake.pair(ME);
      const connected = (m: Msg) => m.type === "status" && m.state === "connected";
      await c.next(connected);

      // The connection comes back and drops again at once (a flapping network):
      // the backoff keeps growing because no connection stayed up for long.
      const delays: number[] = [];
      for (let i = 0; i < 3; i++) {
        bridge.fake.close(428);
        const r = await c.next((m) => m.type === "status" && m.state === "reconnecting");
        delays.push(r.retry_in_ms);
        await c.next(connected);
      }
      assert.deepEqual(delays, [20, 40, 80]);

      const sockets = bridge.fake.sockets.length;
      bridge.fake.close(401);
      const out = await c.next((m) => m.type === "status" && m.state !== "connected");
      assert.equal(out.state, "logged_out");
      assert.match(out.reason, /send login/);
      // A later status or socket would show a loop; a login restarts pairing instead.
      c.send({ type: "login" });
      assert.equal((await c.type("qr")).data, "FAKE-QR-2");
      assert.equal(bridge.fake.sockets.length, sockets + 1, "exactly one new socket, created by login");
      assert.equal(
        readdirSync(bridge.authDir).filter((f) => f.endsWith(".json")).length,
        0,
        "old credentials were removed for the new pairing",
      );
      c.close();
    } finally {
      await bridge.stop();
    }
  });

  it("a connection that stayed up starts the backoff over", async () => {
    const bridge = await startBridge({ backoffInitialMs: 20, stableMs: 0 });
    try {
      const c = await Client.connect(bridge.url);
      await c.type("qr");
      bridge.fake.pair(ME);
      const connected = (m: Msg) => m.type === "status" && m.state === "connected";
      await c.next(connected);
      const delays: number[] = [];
      for (let i = 0; i < 2; i++) {
        bridge.fake.close(428);
        delays.push((await c.next((m) => m.type === "status" && m.state === "reconnecting")).retry_in_ms);
        await c.next(connected);
      }
      assert.deepEqual(delays, [20, 20]);
      c.close();
    } finally {
      await bridge.stop();
    }
  });

  it("a ban stops reconnecting and is reported", async () => {
    const bridge = await startBridge();
    try {
      await eventually("the QR", () => bridge.wa.pendingQr());
      bridge.fake.pair(ME);
      await eventually("connected", () => bridge.wa.status().state === "connected");
      const c = await Client.connect(bridge.url);
      await c.type("status");
      const sockets = bridge.fake.sockets.length;
      bridge.fake.close(403);
      const s = await c.next((m) => m.type === "status" && m.state !== "connected");
      assert.equal(s.state, "banned");
      c.send({ type: "ack", id: "nothing" });
      assert.equal(bridge.fake.sockets.length, sockets);
      c.close();
    } finally {
      await bridge.stop();
    }
  });

  it("a login while connected changes nothing and answers with the status", async () => {
    const bridge = await startBridge();
    try {
      await eventually("the QR", () => bridge.wa.pendingQr());
      bridge.fake.pair(ME);
      await eventually("connected", () => bridge.wa.status().state === "connected");
      const c = await Client.connect(bridge.url);
      await c.type("status");
      const sockets = bridge.fake.sockets.length;
      c.send({ type: "login" });
      assert.equal((await c.type("status")).state, "connected");
      assert.equal(bridge.fake.sockets.length, sockets);
      c.close();
    } finally {
      await bridge.stop();
    }
  });

  it("a restarted bridge reconnects from the saved session without a new QR", async () => {
    const authDir = mkdtempSync(join(tmpdir(), "wa-bridge-session-"));
    const first = await startBridge({ authDir });
    await eventually("the QR", () => first.wa.pendingQr());
    first.fake.pair(ME);
    await eventually("connected", () => first.wa.status().state === "connected");
    first.fake.inbound({ key: { remoteJid: "491511234567@s.whatsapp.net", id: "KEEP", fromMe: false }, message: { conversation: "x" } } as never);
    await eventually("pending", () => first.pending.size === 1);
    await first.stop();
    // Baileys' file writes are asynchronous; wait until the credentials are on disk.
    await eventually("creds.json", () => readdirSync(authDir).includes("creds.json"));

    const second = await startBridge({ authDir });
    try {
      const c = await Client.connect(second.url);
      const seen: Msg[] = [];
      const connected = await c.next((m) => {
        seen.push(m);
        return m.type === "status" && m.state === "connected";
      });
      assert.equal(connected.me.phone_jid, ME.phone_jid);
      assert.equal(second.fake.qrCount, 0, "no QR was needed");
      assert.ok(!seen.some((m) => m.type === "qr"));
      assert.equal(second.pending.size, 1, "the unacked message survived the restart");
      c.close();
    } finally {
      await second.stop();
    }
  });
});
