import type { Client } from "@connectrpc/connect";
import type { Event, StreamService, SubscribeRequest } from "@kilo-cloud/proto";

export const TERMINAL = new Set(["complete", "error", "interrupted"]);

export interface Received {
  event: Event;
  /** Date.now() when the Subscribe client got it. */
  receivedAt: number;
}

/**
 * One Subscribe client that records every event with its arrival time and lets callers
 * wait for a particular one (e.g. the terminal event of an execution).
 */
export class StreamRecorder {
  readonly received: Received[] = [];
  readonly done: Promise<void>;
  #waiters: { pred: (r: Received) => boolean; resolve: (r: Received) => void }[] = [];
  #abort = new AbortController();
  #error: unknown;

  constructor(
    client: Client<typeof StreamService>,
    req: Partial<Omit<SubscribeRequest, "$typeName">> & { cloudAgentSessionId: string },
  ) {
    this.done = (async () => {
      try {
        for await (const res of client.subscribe(req, { signal: this.#abort.signal })) {
          if (!res.event) continue;
          const r = { event: res.event, receivedAt: Date.now() };
          this.received.push(r);
          this.#waiters = this.#waiters.filter((w) => {
            if (!w.pred(r)) return true;
            w.resolve(r);
            return false;
          });
        }
      } catch (err) {
        if (!this.#abort.signal.aborted) this.#error = err;
      }
    })();
  }

  /** Resolves with the first received event (past or future) matching `pred`. */
  waitFor(pred: (r: Received) => boolean, timeoutMs: number): Promise<Received> {
    const seen = this.received.find(pred);
    if (seen) return Promise.resolve(seen);
    return new Promise<Received>((resolve, reject) => {
      const timer = setTimeout(() => {
        reject(
          new Error(
            `no matching event within ${timeoutMs} ms${this.#error ? `: ${String(this.#error)}` : ""}`,
          ),
        );
      }, timeoutMs);
      this.#waiters.push({
        pred,
        resolve: (r) => {
          clearTimeout(timer);
          resolve(r);
        },
      });
    });
  }

  terminalOf(executionId: string, timeoutMs: number): Promise<Received> {
    return this.waitFor(
      (r) => r.event.executionId === executionId && TERMINAL.has(r.event.payload.case ?? ""),
      timeoutMs,
    );
  }

  eventsOf(executionId: string): Received[] {
    return this.received.filter((r) => r.event.executionId === executionId);
  }

  close(): Promise<void> {
    this.#abort.abort();
    return this.done;
  }
}

/** Milliseconds since the epoch of an event's timestamp. */
export function eventMs(e: Event): number {
  const t = e.timestamp;
  return t ? Number(t.seconds) * 1000 + Math.floor(t.nanos / 1e6) : Number.NaN;
}
