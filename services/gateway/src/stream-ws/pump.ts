import { setTimeout as sleep } from "node:timers/promises";
import { Code, ConnectError } from "@connectrpc/connect";
import type { EventLog, Logger } from "@kilo-cloud/common";
import { WebSocket } from "ws";
import { streamFrame } from "./frames.js";
import { matches, type StreamQuery } from "./query.js";

/** Close codes of `/stream` (the hosted product itself never closes a stream). */
export const CLOSE = {
  /** The gateway is shutting down: reconnect with `fromId`. */
  goingAway: 1001,
  internal: 1011,
  /** The client read too slowly; its buffer was dropped: reconnect with `fromId`. */
  tooSlow: 1013,
  /** `fromId` is older than the retained events. */
  outOfRange: 4416,
} as const;

export interface PumpSettings {
  /** A WebSocket ping this often; a socket that did not answer the previous one is cut. */
  pingMs: number;
  /** Above this many unsent bytes, reading the log pauses until the client catches up. */
  highWaterBytes: number;
  /** A client that stays above the high-water mark this long is closed (CLOSE.tooSlow). */
  slowClientMs: number;
}

export const DEFAULT_PUMP_SETTINGS: PumpSettings = {
  pingMs: 30_000,
  highWaterBytes: 1024 * 1024,
  slowClientMs: 30_000,
};

/** Waits until the socket's send buffer is under the high-water mark; false on timeout. */
async function drained(ws: WebSocket, s: PumpSettings, signal: AbortSignal): Promise<boolean> {
  const deadline = Date.now() + s.slowClientMs;
  while (ws.bufferedAmount > s.highWaterBytes) {
    if (Date.now() >= deadline || signal.aborted) return false;
    await sleep(20);
  }
  return true;
}

/** Pings the socket; cuts it when the previous ping got no pong. */
function keepAlive(ws: WebSocket, pingMs: number): () => void {
  let alive = true;
  ws.on("pong", () => {
    alive = true;
  });
  const timer = setInterval(() => {
    if (!alive) {
      ws.terminate();
      return;
    }
    alive = false;
    ws.ping();
  }, pingMs);
  return () => clearInterval(timer);
}

/**
 * Sends the session's events to one socket: stored ones after `fromId`, then live ones,
 * from one cursor of the event log (the same reading Subscribe does, so no gap and no
 * duplicate), filtered. One frame is in flight at a time and reading pauses while the
 * client is behind, so a socket holds at most about `highWaterBytes` of the gateway's memory.
 */
export async function pumpEvents(
  ws: WebSocket,
  q: StreamQuery,
  deps: { events: EventLog; logger: Logger; settings: PumpSettings; shutdown: AbortSignal },
): Promise<void> {
  const abort = new AbortController();
  const stop = () => abort.abort();
  ws.once("close", stop);
  deps.shutdown.addEventListener("abort", stop, { once: true });
  const stopPing = keepAlive(ws, deps.settings.pingMs);
  try {
    const opts = { signal: abort.signal, ...(q.fromId !== undefined ? { fromId: q.fromId } : {}) };
    for await (const event of deps.events.read(q.cloudAgentSessionId, opts)) {
      if (!matches(q, event)) continue;
      if (ws.readyState !== WebSocket.OPEN) return;
      ws.send(JSON.stringify(streamFrame(event)));
      if (!(await drained(ws, deps.settings, abort.signal))) {
        if (!abort.signal.aborted) ws.close(CLOSE.tooSlow, "client too slow: reconnect with fromId");
        return;
      }
    }
  } catch (err) {
    if (abort.signal.aborted) return;
    const ce = ConnectError.from(err);
    if (ce.code === Code.OutOfRange) {
      ws.send(JSON.stringify({ type: "error", code: "WS_OUT_OF_RANGE", message: ce.rawMessage }));
      ws.close(CLOSE.outOfRange, "fromId is older than the retained events");
      return;
    }
    deps.logger.error({ err: ce.message, session: q.cloudAgentSessionId }, "stream socket failed");
    ws.send(JSON.stringify({ type: "error", code: "WS_INTERNAL_ERROR", message: "Failed to read events" }));
    ws.close(CLOSE.internal, "internal error");
  } finally {
    stopPing();
    deps.shutdown.removeEventListener("abort", stop);
    if (deps.shutdown.aborted && ws.readyState === WebSocket.OPEN)
      ws.close(CLOSE.goingAway, "server shutting down");
  }
}
