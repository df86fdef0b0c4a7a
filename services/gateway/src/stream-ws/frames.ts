import { timestampDate, timestampMs } from "@bufbuild/protobuf/wkt";
import { type Event, OutputSource } from "@kilo-cloud/proto";

/** The hosted `/stream` frame: one event of the log, its payload under `data` (V2 shapes). */
export interface StreamFrame {
  eventId: number;
  executionId: string;
  sessionId: string;
  streamEventType: string;
  timestamp: string;
  data: Record<string, unknown>;
}

export const sourceName = (s: OutputSource) => (s === OutputSource.STDERR ? "stderr" : "stdout");

/** The V2 `data` of an event, as the hosted wrapper shapes it (our extra facts added). */
export function v2Data(event: Event): Record<string, unknown> {
  const p = event.payload;
  switch (p.case) {
    case "kilocode":
      return p.value.payload ?? {};
    case "status":
      return { message: p.value.message, ...(p.value.step ? { step: p.value.step } : {}) };
    case "output":
      return { content: p.value.content, source: sourceName(p.value.source) };
    case "error":
      // Every error event of ours ends its execution, so each is fatal.
      return { error: p.value.error, fatal: true, ...(p.value.details ? { details: p.value.details } : {}) };
    case "interrupted":
      return { reason: p.value.reason };
    case "complete":
      return {
        exitCode: p.value.exitCode,
        ...(p.value.branch ? { currentBranch: p.value.branch } : {}),
        ...(p.value.commitSha ? { commitSha: p.value.commitSha } : {}),
        executionTimeMs: Number(p.value.executionTimeMs),
      };
    case "heartbeat":
      return { executionId: event.executionId };
    default:
      return {};
  }
}

export function eventTimeMs(event: Event): number {
  return event.timestamp ? timestampMs(event.timestamp) : 0;
}

export function streamFrame(event: Event): StreamFrame {
  return {
    eventId: Number(event.id),
    executionId: event.executionId,
    sessionId: event.cloudAgentSessionId,
    streamEventType: event.payload.case ?? "unknown",
    timestamp: event.timestamp ? timestampDate(event.timestamp).toISOString() : new Date(0).toISOString(),
    data: v2Data(event),
  };
}
