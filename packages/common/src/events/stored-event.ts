import { fromBinary } from "@bufbuild/protobuf";
import { BinaryReader, BinaryWriter, WireType } from "@bufbuild/protobuf/wire";
import { type Event, EventSchema } from "@kilo-cloud/proto";
import type { EventTypeName } from "./event-log.js";

/**
 * One event as the log stores it: `data` is `kilocode.cloudagent.v1.Event` in protobuf
 * binary with `id` unset (the log's id is the event id). A reader that only forwards
 * events (Subscribe, a WebSocket) can send these bytes as they are: see `withId`.
 */
export interface StoredEvent {
  id: bigint;
  type: EventTypeName;
  data: Uint8Array;
  /**
   * How many of the session's events were already stored after this one when it was read,
   * where the log knows (JetStream): how far the reader is behind the live head.
   */
  behind?: number;
}

/** Field numbers of kilocode.cloudagent.v1.Event that readers peek at without decoding. */
const EVENT_ID_FIELD = 1;
const EXECUTION_ID_FIELD = 3;

/** The decoded event, with its id. */
export function decodeStored(stored: StoredEvent): Event {
  const event = fromBinary(EventSchema, stored.data);
  event.id = stored.id;
  return event;
}

/**
 * The event's `execution_id`, read from the top-level fields only (no decode of the
 * payload); "" when absent.
 */
export function peekExecutionId(data: Uint8Array): string {
  const reader = new BinaryReader(data);
  while (reader.pos < reader.len) {
    const [no, wireType] = reader.tag();
    if (no === EXECUTION_ID_FIELD && wireType === WireType.LengthDelimited) return reader.string();
    // Fields are written in field-number order: the execution id comes before any payload.
    if (no > EXECUTION_ID_FIELD) return "";
    reader.skip(wireType, no);
  }
  return "";
}

/**
 * The Event bytes with `id` set: the stored bytes with the id field appended (protobuf
 * takes the last value of a scalar field, and stored events have none).
 */
export function withId(stored: StoredEvent): Uint8Array {
  const idField = new BinaryWriter().tag(EVENT_ID_FIELD, WireType.Varint).uint64(stored.id).finish();
  const out = new Uint8Array(stored.data.length + idField.length);
  out.set(stored.data, 0);
  out.set(idField, stored.data.length);
  return out;
}
