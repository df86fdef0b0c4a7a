import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { timestampNow } from "@bufbuild/protobuf/wkt";
import { type EventLog, type Logger, TERMINAL_EVENT_TYPES, terminalMsgId } from "@kilo-cloud/common";
import { type Event, EventSchema } from "@kilo-cloud/proto";
import type { SecretMasker } from "../kilo/output.js";

type EventInit = Exclude<MessageInitShape<typeof EventSchema>, { $typeName: string }>;
/** The payload of an event, as plain init objects (`{case: "status", value: {...}}`). */
export type EventPayload = NonNullable<EventInit["payload"]>;

/** Most events of one execution being published at once (default of `window`). */
export const DEFAULT_PUBLISH_WINDOW = 256;

interface Pending {
  event: Event;
  msgId: string;
  terminal: boolean;
}

/**
 * Publishes one execution's events in order, each with the idempotency key
 * `<executionId>:<n>` (a retried publish never stores an event twice). Secret values are
 * masked (`***`) in every text and kilo payload before anything leaves the process.
 *
 * Up to `window` publishes are in flight at once (the log stores overlapping publishes in
 * call order); beyond that, events wait here and `backpressure()` tells the producer to
 * stop reading kilo's output until there is room again. A terminal event (complete, error,
 * interrupted) is published only once everything before it is acknowledged.
 */
export class ExecutionEvents {
  private n = 0;
  /** Events not yet handed to the log: `queue[head..]` (shift() would be O(n) per event). */
  private queue: Pending[] = [];
  private head = 0;
  private inflight = 0;
  private failed: unknown;
  private roomWaiters: (() => void)[] = [];
  private idleWaiters: (() => void)[] = [];

  constructor(
    private readonly log: EventLog,
    private readonly sessionId: string,
    private readonly executionId: string,
    private readonly logger: Logger,
    private masker?: SecretMasker,
    private readonly window = DEFAULT_PUBLISH_WINDOW,
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
    const terminal = (TERMINAL_EVENT_TYPES as readonly string[]).includes(payload.case ?? "");
    const msgId = terminal ? terminalMsgId(this.executionId) : `${this.executionId}:${this.n++}`;
    this.queue.push({ event, msgId, terminal });
    this.pump();
  }

  /**
   * Undefined while there is room; otherwise a promise that resolves once there is. A
   * reader of kilo's output awaits it before reading on, so a burst waits in kilo's pipe
   * instead of in this process's memory.
   */
  backpressure(): Promise<void> | undefined {
    if (this.queued + this.inflight < this.window) return undefined;
    return new Promise((resolve) => this.roomWaiters.push(resolve));
  }

  /** Waits until everything emitted so far is stored; throws if any publish failed. */
  async flush(): Promise<void> {
    if (this.queued > 0 || this.inflight > 0) {
      await new Promise<void>((resolve) => this.idleWaiters.push(resolve));
    }
    if (this.failed) throw this.failed;
  }

  private pump(): void {
    while (this.queued > 0 && this.inflight < this.window) {
      const next = this.queue[this.head]!;
      // A terminal event waits for every acknowledgement before it.
      if (next.terminal && this.inflight > 0) return;
      this.head++;
      this.publish(next);
    }
    if (this.head > 1024 && this.head * 2 > this.queue.length) {
      this.queue = this.queue.slice(this.head);
      this.head = 0;
    }
  }

  private get queued(): number {
    return this.queue.length - this.head;
  }

  private publish({ event, msgId }: Pending): void {
    this.inflight++;
    this.log
      .publish({ event, msgId })
      .catch((err: unknown) => {
        this.failed ??= err;
        this.logger.error(
          { err: err instanceof Error ? err.message : String(err), msgId },
          "event publish failed",
        );
      })
      .finally(() => {
        this.inflight--;
        this.pump();
        this.wake();
      });
  }

  private wake(): void {
    if (this.queued + this.inflight < this.window) {
      const waiters = this.roomWaiters;
      this.roomWaiters = [];
      for (const w of waiters) w();
    }
    if (this.queued === 0 && this.inflight === 0) {
      const waiters = this.idleWaiters;
      this.idleWaiters = [];
      for (const w of waiters) w();
    }
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
