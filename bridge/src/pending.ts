// Inbound messages the gateway has not acknowledged yet. One file per message, so a
// bridge restart still re-sends them; the file goes when the `ack` arrives.

import { mkdirSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";

import type { MessageMsg } from "./protocol.js";
import type { Logger } from "./log.js";

/** What a read receipt needs: Baileys' message key. */
export interface ReceiptKey {
  remoteJid?: string | null;
  id?: string | null;
  participant?: string | null;
  fromMe?: boolean | null;
}

export interface PendingEntry {
  seq: number;
  message: MessageMsg;
  key: ReceiptKey;
}

export class PendingQueue {
  private readonly entries = new Map<string, PendingEntry & { file?: string }>();
  private seq = 0;

  /** `dir` undefined keeps the queue in memory only. */
  constructor(
    private readonly dir: string | undefined,
    private readonly max: number,
    private readonly log: Logger,
  ) {
    if (dir) {
      mkdirSync(dir, { recursive: true });
      this.load(dir);
    }
  }

  private load(dir: string): void {
    const files = readdirSync(dir).filter((f) => f.endsWith(".json")).sort();
    for (const file of files) {
      try {
        const entry = JSON.parse(readFileSync(join(dir, file), "utf8")) as PendingEntry;
        this.entries.set(entry.message.id, { ...entry, file });
        this.seq = Math.max(this.seq, entry.seq);
      } catch (error) {
        this.log.warn({ error, file }, "unreadable pending message set aside");
        try {
          renameSync(join(dir, file), join(dir, file + ".bad"));
        } catch {
          /* nothing more to do */
        }
      }
    }
    if (this.entries.size > 0) this.log.info({ count: this.entries.size }, "pending messages loaded");
  }

  /** Remembers a message until it is acknowledged. A message already pending keeps its place. */
  add(message: MessageMsg, key: ReceiptKey): void {
    if (this.entries.has(message.id)) return;
    if (this.entries.size >= this.max) {
      const oldest = this.list()[0];
      this.log.error({ id: oldest.id, max: this.max }, "pending queue full: the oldest unacknowledged message is dropped");
      this.remove(oldest.id);
    }
    const entry: PendingEntry & { file?: string } = { seq: ++this.seq, message, key };
    if (this.dir) {
      const file = `${String(entry.seq).padStart(12, "0")}-${message.id.replace(/[^A-Za-z0-9_-]/g, "_")}.json`;
      const tmp = join(this.dir, file + ".tmp");
      writeFileSync(tmp, JSON.stringify({ seq: entry.seq, message, key }));
      renameSync(tmp, join(this.dir, file));
      entry.file = file;
    }
    this.entries.set(message.id, entry);
  }

  /** Forgets an acknowledged message and returns it (undefined if unknown). */
  ack(id: string): PendingEntry | undefined {
    const entry = this.entries.get(id);
    if (entry) this.remove(id);
    return entry;
  }

  private remove(id: string): void {
    const entry = this.entries.get(id);
    this.entries.delete(id);
    if (entry?.file && this.dir) rmSync(join(this.dir, entry.file), { force: true });
  }

  /** Pending messages, oldest first. */
  list(): MessageMsg[] {
    return [...this.entries.values()].sort((a, b) => a.seq - b.seq).map((e) => e.message);
  }

  get size(): number {
    return this.entries.size;
  }
}
