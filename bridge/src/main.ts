// Entry point: configuration from the environment, the WhatsApp connection (real
// Baileys, or the fake with BRIDGE_FAKE_SOCKET=1), the pending queue and the server.

import { join } from "node:path";

import qrcode from "qrcode-terminal";

import { ConfigError, loadConfig } from "./config.js";
import { FakeWhatsApp } from "./fake-socket.js";
import { createLogger } from "./log.js";
import { Pacer } from "./pacing.js";
import { PendingQueue } from "./pending.js";
import { startServer } from "./server.js";
import { WhatsApp, baileysSocket } from "./whatsapp.js";

async function main(): Promise<void> {
  let config;
  try {
    config = loadConfig();
  } catch (error) {
    if (error instanceof ConfigError) {
      process.stderr.write(`whatsapp-bridge: ${error.message}\n`);
      process.exit(1);
    }
    throw error;
  }
  const log = createLogger(config.logLevel, { service: "whatsapp-bridge" });
  const verbose = config.logLevel === "debug" || config.logLevel === "trace";
  const baileysLog = createLogger(verbose ? config.logLevel : "warn", { service: "whatsapp-bridge", component: "baileys" });
  const fake = config.fakeSocket ? new FakeWhatsApp() : undefined;
  if (fake) log.warn("BRIDGE_FAKE_SOCKET is set: talking to a fake WhatsApp, not the real one");

  const wa = new WhatsApp({
    authDir: config.authDir,
    factory: fake?.factory ?? baileysSocket,
    log,
    baileysLog,
    groupMode: config.groupMode,
    maxMediaBytes: config.maxMediaBytes,
    backoffInitialMs: config.backoffInitialMs,
    backoffMaxMs: config.backoffMaxMs,
    pacer: new Pacer(config.rate),
  });
  wa.on("qr", (qr) => {
    qrcode.generate(qr, { small: true }, (art) => {
      process.stdout.write(`Scan this QR code with WhatsApp (Settings → Linked devices → Link a device):\n${art}\n`);
    });
  });
  wa.on("status", (s) => log.info({ state: s.state, reason: s.reason ?? undefined }, "WhatsApp status"));

  const pending = new PendingQueue(join(config.authDir, "pending"), config.pendingMax, log);
  const server = await startServer({
    host: config.host,
    port: config.port,
    token: config.token,
    authTimeoutMs: config.authTimeoutMs,
    wa,
    pending,
    log,
    fake,
  });
  log.info({ host: config.host, port: server.port, group_mode: config.groupMode }, "listening");
  await wa.start();

  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    log.info({ signal }, "shutting down");
    wa.stop();
    server.close().then(
      () => process.exit(0),
      () => process.exit(1),
    );
  };
  process.on("SIGTERM", () => stop("SIGTERM"));
  process.on("SIGINT", () => stop("SIGINT"));
}

main().catch((error) => {
  process.stderr.write(`whatsapp-bridge: ${(error as Error)?.stack ?? error}\n`);
  process.exit(1);
});
