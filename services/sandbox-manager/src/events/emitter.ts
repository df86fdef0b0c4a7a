import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { timestampNow } from "@bufbuild/protobuf/wkt";
import type { EventLog, Logger } from "@kilo-cloud/common";
import { EventSchema } from "@kilo-cloud/proto";
import type { SecretMasker } from "../kilo/output.js";

type EventInit = Exclude<MessageInitShape<typeof EventSchema>, { $typeName: string }>;
/** The payload of an event, as plain init objects (`{case: "status", value: {...}}`). */
export type EventPayload = NonNullable<EventInit["payload"]>;

/**
 * Publishes one execution's events in order, each with the idempotency key
 * `<executionId>:<n>` (a retried publish never stores an event twice). Secret values are
 * masked (`***`) in every text and kilo payload before anything leaves the process.
 */
export class ExecutionEvents {
  private n = 0;
  private chain: Promise<unknown> = Promise.resolve();
  private failed: unknown;

  constructor(
    private readonly log: EventLog,
    private readonly sessionId: string,
    private readonly executionId: string,
    private readonly logger: Logger,
    private masker?: SecretMasker,
  ) {}

  setMasker(masker: SecretMasker): void {
    this.masker = masker;
  }

  /** Queues an event; publishing happens in order in the background. */
  emit(payload: EventPayload): void {
    const event = create(EventSchema, {
      cloudAgentSessionId: this.sessionId,
      executionId: this.executionId,
      timestamp: timestampNow(),
      payload: this.mask(payload),
    });
    const msgId = `${this.executionId}:${this.n++}`;
    this.chain = this.chain.then(() =>
      this.log.publish({ event, msgId }).catch((err: unknown) => {
        this.failed ??= err;
        this.logger.error(
          { err: err instanceof Error ? err.message : String(err), msgId },
          "event publish failed",
        );
      }),
    );
  }

  /** Waits until everything emitted so far is stored; throws if any publish failed. */
  async flush(): Promise<void> {
    await this.chain;
    if (this.failed) throw this.failed;
  }

  status(message: string, step: string): void {
    this.emit({ case: "status", value: { message, step } });
  }

  error(message: string, details?: Record<string, unknown>): void {
    this.emit({
      case: "error",
      value: { error: message, ...(details ? { details: details as Record<string, never> } : {}) },
    });
  }

  private mask(payload: EventPayload): EventPayload {
    const m = this.masker;
    if (!m?.active) return payload;
    switch (payload.case) {
      case "kilocode":
        return {
          case: "kilocode",
          value: {
            ...payload.value,
            payload: m.maskJson(payload.value.payload ?? {}) as Record<string, never>,
          },
        };
      case "output":
        return {
          case: "output",
          value: { ...payload.value, content: m.maskString(payload.value.content ?? "") },
        };
      case "status":
        return {
          case: "status",
          value: { ...payload.value, message: m.maskString(payload.value.message ?? "") },
        };
      case "error":
        return {
          case: "error",
          value: {
            ...payload.value,
            error: m.maskString(payload.value.error ?? ""),
            ...(payload.value.details
              ? { details: m.maskJson(payload.value.details) as Record<string, never> }
              : {}),
          },
        };
      default:
        return payload;
    }
  }
}
