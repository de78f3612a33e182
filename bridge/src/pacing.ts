// Outbound pacing: token buckets per chat and overall, so a burst of replies is
// spread out instead of looking like spam (lower ban risk). Sends wait; none is dropped.

import type { RateConfig } from "./config.js";

export type Clock = () => number;
export type Sleep = (ms: number) => Promise<void>;

export const realSleep: Sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** A token bucket that hands out reservations: FIFO-fair, never refuses. */
export class TokenBucket {
  private tokens: number;
  private last: number;

  constructor(
    private readonly perMs: number,
    private readonly burst: number,
    private readonly now: Clock = Date.now,
  ) {
    this.tokens = burst;
    this.last = now();
  }

  static perMinute(perMin: number, burst: number, now: Clock = Date.now): TokenBucket {
    return new TokenBucket(perMin / 60_000, burst, now);
  }

  /** Takes one token and returns how long to wait (ms) before using it. */
  reserve(): number {
    const t = this.now();
    this.tokens = Math.min(this.burst, this.tokens + (t - this.last) * this.perMs);
    this.last = t;
    this.tokens -= 1;
    return this.tokens >= 0 ? 0 : Math.ceil(-this.tokens / this.perMs);
  }

  /** Whether the bucket is full (idle long enough to be forgotten). */
  idle(): boolean {
    const t = this.now();
    return Math.min(this.burst, this.tokens + (t - this.last) * this.perMs) >= this.burst;
  }
}

/** Per-chat and global limits; sends of one chat keep their order. */
export class Pacer {
  private readonly global: TokenBucket;
  private readonly chats = new Map<string, { bucket: TokenBucket; tail: Promise<void> }>();

  constructor(
    private readonly rate: RateConfig,
    private readonly now: Clock = Date.now,
    private readonly sleep: Sleep = realSleep,
  ) {
    this.global = TokenBucket.perMinute(rate.globalPerMin, rate.globalBurst, now);
  }

  /** Resolves when a message to `chatId` may be sent. */
  wait(chatId: string): Promise<void> {
    let chat = this.chats.get(chatId);
    if (!chat) {
      this.forgetIdle();
      chat = { bucket: TokenBucket.perMinute(this.rate.chatPerMin, this.rate.chatBurst, this.now), tail: Promise.resolve() };
      this.chats.set(chatId, chat);
    }
    const c = chat;
    const turn = c.tail.then(async () => {
      const perChat = c.bucket.reserve();
      if (perChat > 0) await this.sleep(perChat);
      const overall = this.global.reserve();
      if (overall > 0) await this.sleep(overall);
    });
    c.tail = turn.catch(() => undefined);
    return turn;
  }

  private forgetIdle(): void {
    if (this.chats.size < 1000) return;
    for (const [id, c] of this.chats) if (c.bucket.idle()) this.chats.delete(id);
  }
}
