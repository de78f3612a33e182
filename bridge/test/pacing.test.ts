import assert from "node:assert/strict";
import { describe, it } from "node:test";

import { Pacer, TokenBucket } from "../src/pacing.js";

describe("pacing", () => {
  it("a token bucket allows its burst, then one send per interval", () => {
    let now = 0;
    const bucket = TokenBucket.perMinute(60, 2, () => now); // one per second, burst 2
    assert.deepEqual([bucket.reserve(), bucket.reserve(), bucket.reserve(), bucket.reserve()], [0, 0, 1000, 2000]);
    now = 10_000; // refilled, but never above the burst
    assert.deepEqual([bucket.reserve(), bucket.reserve(), bucket.reserve()], [0, 0, 1000]);
  });

  it("sends to one chat wait for the per-chat limit, other chats only for the global one", async () => {
    let now = 0;
    const waits: string[] = [];
    const pacer = new Pacer({ chatPerMin: 60, chatBurst: 1, globalPerMin: 600, globalBurst: 10 }, () => now, async (ms) => {
      waits.push(`${ms}`);
      now += ms;
    });
    await Promise.all([pacer.wait("a"), pacer.wait("a"), pacer.wait("a"), pacer.wait("b")]);
    // "a": first free, then 1 s each; "b" starts with its own bucket and is not held up by "a".
    assert.deepEqual(waits, ["1000", "1000"]);
  });

  it("the global limit holds across chats", async () => {
    let now = 0;
    const waits: number[] = [];
    const pacer = new Pacer({ chatPerMin: 600, chatBurst: 10, globalPerMin: 60, globalBurst: 2 }, () => now, async (ms) => {
      waits.push(ms);
      now += ms;
    });
    for (const chat of ["a", "b", "c", "d"]) await pacer.wait(chat);
    assert.deepEqual(waits, [1000, 1000]);
  });
});
