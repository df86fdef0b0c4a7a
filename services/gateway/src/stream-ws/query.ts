import { SESSION_ID_PATTERN } from "@kilo-cloud/common";
import type { Event } from "@kilo-cloud/proto";
import { eventTimeMs } from "./frames.js";

/** The `/stream` query, as the hosted product reads it. */
export interface StreamQuery {
  cloudAgentSessionId: string;
  ticket: string;
  /** Replay events with an id above this one; all stored events when absent. */
  fromId?: bigint;
  executionIds: ReadonlySet<string>;
  eventTypes: ReadonlySet<string>;
  startMs?: number;
  endMs?: number;
}

/** A refusal before the upgrade: the HTTP status and a plain-text body. */
export class HandshakeError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

const MAX_LIST_ITEMS = 100;

function list(value: string | null, name: string): Set<string> {
  const items = (value ?? "")
    .split(",")
    .map((s) => s.trim())
    .filter((s) => s !== "");
  if (items.length > MAX_LIST_ITEMS)
    throw new HandshakeError(400, `${name}: at most ${MAX_LIST_ITEMS} items`);
  return new Set(items);
}

/** An integer of milliseconds or an ISO-8601 date. */
function time(value: string | null, name: string): number | undefined {
  if (value === null || value === "") return undefined;
  const ms = /^\d+$/.test(value) ? Number(value) : Date.parse(value);
  if (!Number.isFinite(ms))
    throw new HandshakeError(400, `${name}: must be milliseconds or an ISO-8601 date`);
  return ms;
}

export function parseStreamQuery(url: URL): StreamQuery {
  const q = url.searchParams;
  const cloudAgentSessionId = q.get("cloudAgentSessionId");
  if (!cloudAgentSessionId) throw new HandshakeError(400, "Missing cloudAgentSessionId parameter");
  if (!SESSION_ID_PATTERN.test(cloudAgentSessionId)) {
    throw new HandshakeError(400, "cloudAgentSessionId: must be a session id of the form agent_<uuid>");
  }
  const ticket = q.get("ticket");
  if (!ticket) throw new HandshakeError(401, "Missing ticket");
  const fromId = q.get("fromId");
  if (fromId !== null && !/^\d{1,19}$/.test(fromId)) {
    throw new HandshakeError(400, "fromId: must be a non-negative integer");
  }
  const startMs = time(q.get("startTime"), "startTime");
  const endMs = time(q.get("endTime"), "endTime");
  return {
    cloudAgentSessionId,
    ticket,
    ...(fromId !== null ? { fromId: BigInt(fromId) } : {}),
    executionIds: list(q.get("executionIds"), "executionIds"),
    eventTypes: list(q.get("eventTypes"), "eventTypes"),
    ...(startMs !== undefined ? { startMs } : {}),
    ...(endMs !== undefined ? { endMs } : {}),
  };
}

/** The filters apply to replay and live events alike (inclusive time range). */
export function matches(q: StreamQuery, event: Event): boolean {
  if (q.executionIds.size > 0 && !q.executionIds.has(event.executionId)) return false;
  if (q.eventTypes.size > 0 && !q.eventTypes.has(event.payload.case ?? "")) return false;
  const at = eventTimeMs(event);
  if (q.startMs !== undefined && at < q.startMs) return false;
  if (q.endMs !== undefined && at > q.endMs) return false;
  return true;
}
