import { type Client, Code, ConnectError } from "@connectrpc/connect";
import type {
  Event,
  EventType,
  StreamService,
} from "../../proto/src/gen/kilocode/cloudagent/v1/stream_pb.js";
import { backoffDelay, type RetryOptions, sleep } from "./retry.js";

/** What to follow of a session's events. */
export interface SubscribeOptions {
  /** Start after this event id (exclusive); without it, from the session's first event. */
  fromId?: bigint;
  /** Only these executions' events. */
  executionIds?: string[];
  /** Only these event types. */
  types?: EventType[];
  /** A stream ticket (from createStreamTicket) instead of the bearer token. */
  ticket?: string;
  /** Ends the iteration (the loop then finishes without an error). */
  signal?: AbortSignal;
  /** Reconnect patience: attempts in a row without an event before giving up (default 30). */
  reconnect?: RetryOptions;
}

/** A dropped connection, a gateway restart or a proxy cut: worth reconnecting. */
const TRANSIENT = new Set([
  Code.Unavailable,
  Code.Unknown,
  Code.Internal,
  Code.DeadlineExceeded,
  Code.Aborted,
]);

/**
 * A session's events, live: replays from `fromId`, then follows. A dropped connection (or a
 * stream the server ends) reconnects by itself with back-off, from the last event id
 * delivered, so no event is skipped; ids at or below it are never yielded twice. Keep-alives
 * are not yielded. Errors that are not transient (PERMISSION_DENIED, NOT_FOUND,
 * OUT_OF_RANGE, …) end the iteration by throwing.
 */
export async function* subscribeEvents(
  stream: Client<typeof StreamService>,
  sessionId: string,
  options: SubscribeOptions = {},
): AsyncGenerator<Event, void, undefined> {
  let last = options.fromId;
  let failures = 0;
  const maxAttempts = options.reconnect?.maxAttempts ?? 30;
  // Our own controller, so that leaving the loop early also cancels the HTTP stream.
  const abort = new AbortController();
  const onAbort = () => abort.abort();
  options.signal?.addEventListener("abort", onAbort, { once: true });
  if (options.signal?.aborted) abort.abort();
  try {
    while (!abort.signal.aborted) {
      try {
        const responses = stream.subscribe(
          {
            cloudAgentSessionId: sessionId,
            ...(last !== undefined ? { fromId: last } : {}),
            ...(options.ticket ? { ticket: options.ticket } : {}),
            executionIds: options.executionIds ?? [],
            eventTypes: options.types ?? [],
          },
          { signal: abort.signal },
        );
        for await (const { event } of responses) {
          failures = 0;
          if (!event || (last !== undefined && event.id <= last)) continue;
          last = event.id;
          yield event;
        }
      } catch (err) {
        if (abort.signal.aborted) return;
        const code = ConnectError.from(err).code;
        if (code === Code.Canceled || !TRANSIENT.has(code) || failures + 1 >= maxAttempts) throw err;
      }
      // Ended or dropped: reconnect from the last id, after a pause that grows while it fails.
      failures++;
      await sleep(backoffDelay(failures, { baseDelayMs: 250, ...options.reconnect }), abort.signal).catch(
        () => {},
      );
    }
  } finally {
    abort.abort();
    options.signal?.removeEventListener("abort", onAbort);
  }
}
