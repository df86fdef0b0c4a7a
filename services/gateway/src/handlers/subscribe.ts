import type { MessageInitShape } from "@bufbuild/protobuf";
import { Code, ConnectError, type HandlerContext } from "@connectrpc/connect";
import {
  bearerToken,
  decodeStored,
  type EventLog,
  type EventTypeName,
  peekExecutionId,
  type StoredEvent,
  type UserTokenVerifier,
} from "@kilo-cloud/common";
import {
  EventType,
  type SubscribeRequest,
  type SubscribeResponse,
  type SubscribeResponseSchema,
} from "@kilo-cloud/proto";
import type { StreamSlots } from "./stream-slots.js";
import type { StreamTickets } from "./stream-tickets.js";
import { passThroughResponse } from "./subscribe-wire.js";

const TYPE_NAMES: Record<EventType, EventTypeName | undefined> = {
  [EventType.UNSPECIFIED]: undefined,
  [EventType.KILOCODE]: "kilocode",
  [EventType.STATUS]: "status",
  [EventType.OUTPUT]: "output",
  [EventType.ERROR]: "error",
  [EventType.COMPLETE]: "complete",
  [EventType.INTERRUPTED]: "interrupted",
  [EventType.HEARTBEAT]: "heartbeat",
};

export interface SubscribeDeps {
  events: EventLog;
  tickets: StreamTickets;
  verifyUser: UserTokenVerifier;
  /** Confirms that the user owns the session (NOT_FOUND otherwise). */
  checkOwner(userId: string, cloudAgentSessionId: string, signal: AbortSignal): Promise<void>;
  /** An idle stream gets a keep-alive message this often (proxies close silent streams). */
  keepaliveMs: number;
  /**
   * A stream that was live and then falls this many events behind the newest ones (its
   * client reads slower than the session produces) is ended with RESOURCE_EXHAUSTED, to be
   * resumed with `fromId` as a fast batched replay (default 50,000).
   */
  maxLagEvents?: number;
  /** Open streams per user (RESOURCE_EXHAUSTED beyond). */
  slots: StreamSlots;
}

/**
 * Handler options of StreamService: no per-message compression. Events are small and many;
 * gzip of each one separately cost a seventh of the gateway's CPU in replays and saves
 * little (compress the connection instead, e.g. at a proxy).
 */
export const STREAM_HANDLER_OPTIONS = { compressMinBytes: 2 ** 32 - 1 } as const;

const KEEPALIVE = Symbol("keepalive");
const DEFAULT_MAX_LAG_EVENTS = 50_000;
/** Event ids are signed 64-bit in every event log (Postgres bigint, JetStream sequence). */
const MAX_EVENT_ID = 2n ** 63n - 1n;

type Response = MessageInitShape<typeof SubscribeResponseSchema> | SubscribeResponse;

/**
 * StreamService.Subscribe: stored events after `fromId`, then live ones, from one cursor
 * of the event log (no gap, no duplicate at the hand-over), filtered by execution and type,
 * with keep-alive messages while idle.
 *
 * Binary clients get the stored bytes as they are (no decode and re-encode), and with
 * `batch` one message per batch the log hands over (many during a replay, one when live).
 * The log is read at the client's pace: a client that stops reading holds a bounded
 * buffer and slows nobody else.
 */
export function subscribeHandler(deps: SubscribeDeps) {
  return async function* subscribe(req: SubscribeRequest, ctx: HandlerContext): AsyncGenerator<Response> {
    const sessionId = req.cloudAgentSessionId;
    if (req.fromId !== undefined && req.fromId > MAX_EVENT_ID) {
      throw new ConnectError(
        `invalid request: from_id: must be at most ${MAX_EVENT_ID}`,
        Code.InvalidArgument,
      );
    }
    const release = deps.slots.acquire(await authorize(deps, req, ctx));
    const keep = eventFilter(req);
    const json = /json/i.test(ctx.requestHeader.get("content-type") ?? "");
    const iterator = deps.events
      .readStored(sessionId, {
        ...(req.fromId !== undefined ? { fromId: req.fromId } : {}),
        signal: ctx.signal,
      })
      [Symbol.asyncIterator]();
    const lag = new LagGuard(deps.maxLagEvents ?? DEFAULT_MAX_LAG_EVENTS, req.fromId);
    let pending = iterator.next();
    let timer: NodeJS.Timeout | undefined;
    try {
      for (;;) {
        const next = await Promise.race([
          pending,
          new Promise<typeof KEEPALIVE>((resolve) => {
            timer = setTimeout(() => resolve(KEEPALIVE), deps.keepaliveMs);
          }),
        ]);
        clearTimeout(timer);
        if (next === KEEPALIVE) {
          yield { keepalive: true };
          continue;
        }
        if (next.done) return;
        pending = iterator.next();
        lag.check(next.value);
        const batch = next.value.filter(keep);
        if (batch.length === 0) continue;
        if (req.batch)
          yield json ? { events: batch.map(decodeStored) } : passThroughResponse(batch, "events");
        else for (const stored of batch) yield json ? { event: decodeStored(stored) } : single(stored);
      }
    } finally {
      clearTimeout(timer);
      release();
      await iterator.return?.();
    }
  };
}

/**
 * Ends a live stream whose client fell too far behind. A replay (far behind from the
 * start) is not lagging: only a stream that once caught up with the newest events is.
 */
class LagGuard {
  private caughtUp = false;
  private lastId: bigint | undefined;

  constructor(
    private readonly maxLag: number,
    fromId: bigint | undefined,
  ) {
    this.lastId = fromId;
  }

  /** Called with each batch before it is sent; every earlier batch has been sent. */
  check(batch: StoredEvent[]): void {
    const behind = batch[0]?.behind;
    if (behind !== undefined && this.caughtUp && behind > this.maxLag) {
      // The resume point is the last event sent: nothing of this batch has been.
      const resume = this.lastId === undefined ? "without fromId" : `with fromId=${this.lastId}`;
      throw new ConnectError(
        `this stream fell ${behind} events behind the newest ones (the client reads more slowly than the session produces events); subscribe again ${resume} to catch up`,
        Code.ResourceExhausted,
      );
    }
    if (batch.some((s) => s.behind === 0)) this.caughtUp = true;
    this.lastId = batch.at(-1)?.id ?? this.lastId;
  }
}

function single(stored: StoredEvent): SubscribeResponse {
  return passThroughResponse([stored], "event");
}

/** The user the stream is for: a ticket's, or a bearer token's who owns the session. */
async function authorize(deps: SubscribeDeps, req: SubscribeRequest, ctx: HandlerContext): Promise<string> {
  if (req.ticket !== undefined) {
    return (await deps.tickets.verify(req.ticket, req.cloudAgentSessionId)).userId;
  }
  const token = bearerToken(ctx.requestHeader.get("authorization"));
  if (!token) {
    throw new ConnectError(
      "a stream ticket or a bearer token (Authorization: Bearer <token>) is needed",
      Code.Unauthenticated,
    );
  }
  const { userId } = await deps.verifyUser(token);
  await deps.checkOwner(userId, req.cloudAgentSessionId, ctx.signal);
  return userId;
}

/** The request's execution and type filters; only the execution id is read from the bytes. */
function eventFilter(req: SubscribeRequest): (stored: StoredEvent) => boolean {
  const types = new Set(
    req.eventTypes.map((t) => TYPE_NAMES[t]).filter((t): t is EventTypeName => t !== undefined),
  );
  const executions = new Set(req.executionIds);
  return (stored) =>
    (types.size === 0 || types.has(stored.type)) &&
    (executions.size === 0 || executions.has(peekExecutionId(stored.data)));
}
