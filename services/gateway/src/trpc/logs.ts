import type { EventLog } from "@kilo-cloud/common";
import type { Event } from "@kilo-cloud/proto";
import { streamFrame } from "../stream-ws/frames.js";

/** The newest part of a log that getSessionLogs / getWrapperLogs return. */
export const MAX_LOG_CHARS = 1_000_000;

/** One line of text for an event of the log (the kilo JSON lines as kilo printed them). */
function logLine(event: Event): string | undefined {
  const frame = streamFrame(event);
  const p = event.payload;
  switch (p.case) {
    case "kilocode":
      return JSON.stringify(frame.data);
    case "output":
      return p.value.content;
    case "heartbeat":
      return undefined;
    default:
      return `[${frame.timestamp}] ${frame.streamEventType} ${JSON.stringify(frame.data)}`;
  }
}

/**
 * The text log of a session (or of one of its executions), made from its stored events:
 * this server keeps no separate log files, and the events hold everything kilo printed
 * (secrets already masked). Only the newest `MAX_LOG_CHARS` are kept.
 */
export async function renderLog(
  events: EventLog,
  sessionId: string,
  executionId: string | undefined,
  signal: AbortSignal | undefined,
): Promise<string> {
  const lines: string[] = [];
  let size = 0;
  for await (const event of events.read(sessionId, { storedOnly: true, ...(signal ? { signal } : {}) })) {
    if (executionId !== undefined && event.executionId !== executionId) continue;
    const line = logLine(event);
    if (line === undefined) continue;
    lines.push(line);
    size += line.length + 1;
    while (size > MAX_LOG_CHARS && lines.length > 1) size -= (lines.shift() ?? "").length + 1;
  }
  return lines.length > 0 ? `${lines.join("\n")}\n` : "";
}
