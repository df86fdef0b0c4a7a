import { timestampDate } from "@bufbuild/protobuf/wkt";
import type { EventLog, Logger } from "@kilo-cloud/common";
import type { Event } from "@kilo-cloud/proto";
import type { Dispatcher } from "./dispatcher.js";

/** The durable consumer's name: every session replica shares it (each event is handled once). */
export const LIFECYCLE_CONSUMER = "session-lifecycle";

/**
 * What the session service learns from the event stream: terminal events end executions
 * (and start the next), heartbeats keep running ones alive. The consumer is durable, so
 * events published while the session service was down are handled when it comes back.
 */
export async function handleLifecycleEvent(dispatcher: Dispatcher, event: Event): Promise<void> {
  const id = event.executionId;
  switch (event.payload.case) {
    case "complete": {
      const c = event.payload.value;
      await dispatcher.finish(
        id,
        c.exitCode === 0 ? "completed" : "failed",
        c.exitCode === 0 ? undefined : `kilo exited with code ${c.exitCode}`,
        {
          exitCode: c.exitCode,
          branch: c.branch,
        },
      );
      return;
    }
    case "error":
      await dispatcher.finish(id, "failed", event.payload.value.error);
      return;
    case "interrupted":
      await dispatcher.finish(id, "interrupted", "interrupted by the user");
      return;
    case "heartbeat":
      await dispatcher.heartbeat(id, event.timestamp ? timestampDate(event.timestamp) : new Date());
      return;
    default:
      return;
  }
}

/** Pause before consuming again after the consumer failed (NATS or the database away). */
const RESTART_DELAY_MS = 1_000;

/**
 * Consumes until `signal` aborts. A failure of the consumer itself (the event log
 * unreachable when it binds, or lost later) is logged and the consumer starts again after a
 * pause: the durable state keeps its place, so nothing is skipped.
 */
export async function startLifecycleConsumer(opts: {
  events: EventLog;
  dispatcher: Dispatcher;
  logger: Logger;
  signal: AbortSignal;
}): Promise<void> {
  while (!opts.signal.aborted) {
    try {
      await opts.events.consume(
        LIFECYCLE_CONSUMER,
        ["complete", "error", "interrupted", "heartbeat"],
        (e) => handleLifecycleEvent(opts.dispatcher, e),
        opts.signal,
      );
    } catch (err) {
      if (opts.signal.aborted) return;
      opts.logger.warn({ err }, "lifecycle consumer failed; starting it again");
      await new Promise((r) => setTimeout(r, RESTART_DELAY_MS));
    }
  }
}
