import type { MessageInitShape } from "@bufbuild/protobuf";
import { Code, ConnectError, type HandlerContext } from "@connectrpc/connect";
import { bearerToken, type EventLog, type EventTypeName, type UserTokenVerifier } from "@kilo-cloud/common";
import { EventType, type SubscribeRequest, type SubscribeResponseSchema } from "@kilo-cloud/proto";
import type { StreamSlots } from "./stream-slots.js";
import type { StreamTickets } from "./stream-tickets.js";

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
  /** Open streams per user (RESOURCE_EXHAUSTED beyond). */
  slots: StreamSlots;
}

const KEEPALIVE = Symbol("keepalive");
/** Event ids are signed 64-bit in every event log (Postgres bigint, JetStream sequence). */
const MAX_EVENT_ID = 2n ** 63n - 1n;

/**
 * StreamService.Subscribe: stored events after `fromId`, then live ones, from one cursor
 * of the event log (no gap, no duplicate at the hand-over), filtered by execution and type,
 * with keep-alive messages while idle.
 */
export function subscribeHandler(deps: SubscribeDeps) {
  return async function* subscribe(
    req: SubscribeRequest,
    ctx: HandlerContext,
  ): AsyncGenerator<MessageInitShape<typeof SubscribeResponseSchema>> {
    const sessionId = req.cloudAgentSessionId;
    if (req.fromId !== undefined && req.fromId > MAX_EVENT_ID) {
      throw new ConnectError(
        `invalid request: from_id: must be at most ${MAX_EVENT_ID}`,
        Code.InvalidArgument,
      );
    }
    let userId: string;
    if (req.ticket !== undefined) {
      ({ userId } = await deps.tickets.verify(req.ticket, sessionId));
    } else {
      const token = bearerToken(ctx.requestHeader.get("authorization"));
      if (!token) {
        throw new ConnectError(
          "a stream ticket or a bearer token (Authorization: Bearer <token>) is needed",
          Code.Unauthenticated,
        );
      }
      ({ userId } = await deps.verifyUser(token));
      await deps.checkOwner(userId, sessionId, ctx.signal);
    }
    const release = deps.slots.acquire(userId);
    try {
      yield* follow(deps, req, ctx);
    } finally {
      release();
    }
  };
}

/** The session's events from `fromId` on, filtered, with keep-alives while idle. */
async function* follow(
  deps: SubscribeDeps,
  req: SubscribeRequest,
  ctx: HandlerContext,
): AsyncGenerator<MessageInitShape<typeof SubscribeResponseSchema>> {
  const sessionId = req.cloudAgentSessionId;
  const types = new Set(
    req.eventTypes.map((t) => TYPE_NAMES[t]).filter((t): t is EventTypeName => t !== undefined),
  );
  const executions = new Set(req.executionIds);
  const iterator = deps.events
    .read(sessionId, { ...(req.fromId !== undefined ? { fromId: req.fromId } : {}), signal: ctx.signal })
    [Symbol.asyncIterator]();
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
      const event = next.value;
      if (executions.size > 0 && !executions.has(event.executionId)) continue;
      if (types.size > 0 && !types.has(event.payload.case as EventTypeName)) continue;
      yield { event };
    }
  } finally {
    clearTimeout(timer);
    await iterator.return?.();
  }
}
