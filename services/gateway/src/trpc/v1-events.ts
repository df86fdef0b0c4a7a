import { timestampDate } from "@bufbuild/protobuf/wkt";
import { type EventLog, TERMINAL_EVENT_TYPES } from "@kilo-cloud/common";
import type { Event } from "@kilo-cloud/proto";
import { sourceName } from "../stream-ws/frames.js";

/**
 * The deprecated SSE procedures' flat V1 events (no envelope, no event id), made from the
 * same events the V2 stream carries. Heartbeats have no V1 form and are skipped.
 */
export interface V1Event {
  streamEventType: "status" | "output" | "kilocode" | "error" | "interrupted" | "complete";
  sessionId: string;
  [field: string]: unknown;
}

export function v1Event(event: Event): V1Event | undefined {
  const sessionId = event.cloudAgentSessionId;
  const timestamp = (event.timestamp ? timestampDate(event.timestamp) : new Date()).toISOString();
  const p = event.payload;
  switch (p.case) {
    case "status":
      return { streamEventType: "status", message: p.value.message, timestamp, sessionId };
    case "output":
      return {
        streamEventType: "output",
        content: p.value.content,
        source: sourceName(p.value.source),
        timestamp,
        sessionId,
      };
    case "kilocode":
      return { streamEventType: "kilocode", payload: p.value.payload ?? {}, sessionId };
    case "error":
      return {
        streamEventType: "error",
        error: p.value.error,
        ...(p.value.details ? { details: p.value.details } : {}),
        timestamp,
        sessionId,
      };
    case "interrupted":
      return { streamEventType: "interrupted", reason: p.value.reason, timestamp, sessionId };
    case "complete": {
      const c = p.value;
      return {
        streamEventType: "complete",
        sessionId,
        exitCode: c.exitCode,
        metadata: {
          executionTimeMs: Number(c.executionTimeMs),
          workspace: c.workspace,
          userId: c.userId,
          startedAt: c.startedAt ? timestampDate(c.startedAt).getTime() : undefined,
          completedAt: c.completedAt ? timestampDate(c.completedAt).getTime() : undefined,
        },
      };
    }
    default:
      return undefined;
  }
}

/** One execution's events from the log, up to and including its terminal event. */
export async function* executionEvents(
  events: EventLog,
  sessionId: string,
  executionId: string,
  signal: AbortSignal | undefined,
): AsyncGenerator<Event> {
  for await (const event of events.read(sessionId, signal ? { signal } : {})) {
    if (event.executionId !== executionId) continue;
    yield event;
    if ((TERMINAL_EVENT_TYPES as readonly string[]).includes(event.payload.case ?? "")) return;
  }
}
