import { create } from "@bufbuild/protobuf";
import { BinaryWriter, WireType } from "@bufbuild/protobuf/wire";
import { type StoredEvent, withId } from "@kilo-cloud/common";
import { type SubscribeResponse, SubscribeResponseSchema } from "@kilo-cloud/proto";

/** Field numbers of SubscribeResponse that carry events. */
const FIELD = { event: 1, events: 3 } as const;

/**
 * A SubscribeResponse whose events are the stored bytes, untouched: they ride as
 * unknown fields, which the binary serializer writes out as they are, so on the wire this
 * is exactly `{event}` (one event) or `{events: [...]}` (a batch), without decoding and
 * encoding every event again. For the binary format only (JSON has no unknown fields).
 */
export function passThroughResponse(batch: StoredEvent[], field: keyof typeof FIELD): SubscribeResponse {
  const response = create(SubscribeResponseSchema);
  response.$unknown = batch.map((stored) => {
    const bytes = withId(stored);
    // An unknown length-delimited field keeps its length prefix in `data`.
    const data = new BinaryWriter().uint32(bytes.length).raw(bytes).finish();
    return { no: FIELD[field], wireType: WireType.LengthDelimited, data };
  });
  return response;
}
