import { describe, expect, it } from "vitest";
import { OrderedPublisher, type Sent } from "../src/index.js";

/**
 * The ordering rule of OrderedPublisher against an adversarial connection, deterministic
 * where a real server restart is left to chance (see the sandbox-manager's
 * event-publishing test for the same through real NATS): the connection drops with
 * publishes in flight, of which the server kept only a prefix and answered none.
 */
class FlakyConnection {
  readonly stored: string[] = [];
  private readonly seqOf = new Map<string, number>();
  private queue: { msgId: string; resolve: (s: Sent) => void; reject: (e: Error) => void }[] = [];
  up = true;

  send = (_subject: string, _data: Uint8Array, msgId: string): Promise<Sent> => {
    if (!this.up) return Promise.reject(new Error("disconnected"));
    return new Promise<Sent>((resolve, reject) => {
      this.queue.push({ msgId, resolve, reject });
      // The server works through what it received a few at a time.
      setImmediate(() => this.process(3));
    });
  };

  private store(msgId: string): Sent {
    const seen = this.seqOf.get(msgId);
    if (seen !== undefined) return { seq: BigInt(seen), duplicate: true };
    this.stored.push(msgId);
    this.seqOf.set(msgId, this.stored.length);
    return { seq: BigInt(this.stored.length), duplicate: false };
  }

  private process(n: number): void {
    for (const m of this.queue.splice(0, n)) m.resolve(this.store(m.msgId));
  }

  /** The connection drops: the server kept `kept` of what was in flight; no answer arrives. */
  drop(kept: number): void {
    this.up = false;
    const inFlight = this.queue;
    this.queue = [];
    inFlight.forEach((m, i) => {
      if (i < kept) this.store(m.msgId);
      m.reject(new Error("connection lost"));
    });
  }
}

describe("OrderedPublisher", () => {
  it("keeps publish order, stores each once and answers every publish through a dropped connection", async () => {
    const conn = new FlakyConnection();
    const publisher = new OrderedPublisher({ send: conn.send, closed: () => false, retryForMs: 10_000 });
    const n = 2_000;
    const results: Promise<Sent>[] = [];
    let drops = 0;
    for (let i = 0; i < n; i++) {
      results.push(publisher.publish("s", new Uint8Array(), `m${i}`));
      if (i % 500 === 250) {
        // Publishes keep coming while the connection is down and after it is back.
        await new Promise((r) => setImmediate(r));
        conn.drop(drops++ * 7);
        publisher.disconnected();
        setTimeout(() => {
          conn.up = true;
          publisher.reconnected();
        }, 5);
      }
      if (i % 7 === 0) await new Promise((r) => setImmediate(r));
    }
    const sent = await Promise.all(results);
    expect(drops).toBe(4);
    expect(conn.stored).toEqual(Array.from({ length: n }, (_, i) => `m${i}`));
    expect(sent.map((s) => Number(s.seq))).toEqual(Array.from({ length: n }, (_, i) => i + 1));
  });

  it("rejects a publish that keeps failing after its retry time, and goes on with the next", async () => {
    let fail = true;
    const publisher = new OrderedPublisher({
      send: async (_s, _d, msgId) => {
        if (fail && msgId === "bad") throw new Error("refused");
        return { seq: 1n, duplicate: false };
      },
      closed: () => false,
      retryForMs: 50,
    });
    const bad = publisher.publish("s", new Uint8Array(), "bad");
    const good = publisher.publish("s", new Uint8Array(), "good");
    await expect(bad).rejects.toThrow("refused");
    await expect(good).resolves.toEqual({ seq: 1n, duplicate: false });
    fail = false;
  });
});
