import type { Event } from "@kilo-cloud/proto";
import type { StoredEvent } from "./stored-event.js";

/** The `streamEventType` of an event, as used in subjects and filters. */
export type EventTypeName = NonNullable<Event["payload"]["case"]>;

export const TERMINAL_EVENT_TYPES: readonly EventTypeName[] = ["complete", "error", "interrupted"];

/**
 * The idempotency key of an execution's terminal event, whoever publishes it (the run, or
 * the session service's reaper): the event log keeps the first, so an execution never has
 * two terminal events (JetStream within its duplicate window; the Postgres log always).
 */
export function terminalMsgId(executionId: string): string {
  return `${executionId}:end`;
}

export interface PublishInput {
  /** The event; its `id` is ignored (the log assigns ids). */
  event: Event;
  /**
   * Idempotency key, `<executionId>:<n>`: publishing the same key twice within the log's
   * duplicate window stores one event.
   */
  msgId: string;
}

export interface PublishResult {
  id: bigint;
  duplicate: boolean;
}

export interface ReadOptions {
  /** Deliver events with an id greater than this one; from the oldest retained when absent. */
  fromId?: bigint;
  /** Stop after the stored events instead of following live ones. */
  storedOnly?: boolean;
  signal?: AbortSignal;
}

/**
 * The append-only log of every session's events. Ids are strictly increasing within a
 * session. Reading delivers the stored events after `fromId` and then live ones, from one
 * cursor, so there is no gap and no duplicate at the hand-over. A `fromId` older than what
 * the log still holds fails with OUT_OF_RANGE rather than skipping silently.
 */
export interface EventLog {
  /**
   * Stores one event. Calls may overlap: the log stores overlapping publishes in the order
   * they were called, so a producer may pipeline them without awaiting each one.
   */
  publish(input: PublishInput): Promise<PublishResult>;
  /** The events decoded, one at a time (see `readStored`). */
  read(sessionId: string, opts?: ReadOptions): AsyncIterable<Event>;
  /**
   * The same events as `read`, as the stored bytes, in batches of whatever is already at
   * hand (several during a replay or a burst, one when live and quiet): the fast path of
   * readers that forward events without looking inside them. The reader pulls from the
   * log at its own pace: a slow one holds a bounded buffer and delays nobody else.
   */
  readStored(sessionId: string, opts?: ReadOptions): AsyncIterable<StoredEvent[]>;
  /**
   * Durable, at-least-once delivery of every session's events of the given types to
   * `handler`, remembered under `name` across restarts (a handler that throws gets the
   * event again later). Runs until `signal` aborts.
   */
  consume(
    name: string,
    types: readonly EventTypeName[],
    handler: (event: Event) => Promise<void>,
    signal: AbortSignal,
  ): Promise<void>;
  close(): Promise<void>;
}

export function eventTypeOf(event: Event): EventTypeName {
  const t = event.payload.case;
  if (!t) throw new Error("event has no payload");
  return t;
}
