import type { Logger, Pool, Sealer } from "@kilo-cloud/common";
import type { AttemptResult, CallbackPayload, CallbackTarget } from "../callbacks/callbacks.js";
import { DEFAULT_RETRY_SCHEDULE_MS, nextRetryDelayMs } from "../callbacks/retry-schedule.js";
import { webhookId } from "../callbacks/standard-webhooks.js";
import {
  type ClaimedDelivery,
  claimDueDeliveries,
  markDelivered,
  markFailed,
  scheduleRetry,
} from "../db/callback-deliveries.js";
import { sealContext } from "../handlers/seal-context.js";
import type { SessionMetrics } from "../metrics.js";

/** Makes one signed attempt; resolves with its outcome (never throws). */
export interface CallbackSenderLike {
  attempt(
    target: CallbackTarget,
    payload: CallbackPayload,
    id: string,
    opts?: { signal?: AbortSignal },
  ): Promise<AttemptResult>;
}

export interface CallbackOutboxDeps {
  pool: Pool;
  sealer: Sealer;
  sender: CallbackSenderLike;
  logger: Logger;
  /** How often due deliveries are looked for (1 s by default). */
  pollIntervalMs?: number;
  /** Attempts under way at once, across all receivers (8 by default). */
  concurrency?: number;
  /** Delays after each failed attempt; `DEFAULT_RETRY_SCHEDULE_MS` (hours) by default. */
  retryScheduleMs?: readonly number[];
  /** How long a claimed delivery stays with this replica while its attempt runs. */
  leaseMs?: number;
  random?: () => number;
  metrics?: SessionMetrics;
}

/**
 * Delivers the completion callbacks recorded in `session.callback_deliveries` (written in
 * the same transaction as the terminal status, so none is lost to a crash). Each due row
 * is claimed by one replica (SKIP LOCKED) for one attempt; the next attempt is scheduled
 * in the row (hours of backoff, Retry-After honoured), so retries survive restarts. A slow
 * receiver holds one of `concurrency` slots for at most one attempt's timeout: other
 * sessions' deliveries go on in the other slots. The target is unsealed only for the send.
 */
export class CallbackOutbox {
  private timer: NodeJS.Timeout | undefined;
  private claiming: Promise<void> | undefined;
  private again = false;
  private readonly inFlight = new Set<Promise<void>>();
  private readonly abort = new AbortController();

  constructor(private readonly deps: CallbackOutboxDeps) {}

  start(): void {
    this.timer ??= setInterval(() => this.wake(), this.deps.pollIntervalMs ?? 1_000);
    this.timer.unref();
    this.wake();
  }

  /** Stops claiming, aborts the attempts under way (their lease lapses; they are retried). */
  async stop(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    this.abort.abort();
    await this.claiming;
    await Promise.all(this.inFlight);
  }

  /** Looks for due deliveries now. */
  wake(): void {
    if (this.abort.signal.aborted) return;
    if (this.claiming) {
      this.again = true;
      return;
    }
    this.claiming = this.fill()
      .catch((err: unknown) => this.deps.logger.error({ err }, "callback outbox could not claim deliveries"))
      .finally(() => {
        this.claiming = undefined;
        if (this.again) {
          this.again = false;
          this.wake();
        }
      });
  }

  /** Claims as many due deliveries as there are free slots, and starts their attempts. */
  private async fill(): Promise<void> {
    const concurrency = this.deps.concurrency ?? 8;
    for (;;) {
      const free = concurrency - this.inFlight.size;
      if (free <= 0 || this.abort.signal.aborted) return;
      const batch = await claimDueDeliveries(this.deps.pool, free, this.deps.leaseMs ?? 60_000);
      if (batch.length === 0) return;
      for (const row of batch) this.track(row);
    }
  }

  private track(row: ClaimedDelivery): void {
    const running: Promise<void> = this.deliver(row)
      .catch((err: unknown) =>
        this.deps.logger.error(
          { err, executionId: row.execution_id },
          "callback delivery could not be recorded",
        ),
      )
      .finally(() => {
        this.inFlight.delete(running);
        this.wake();
      });
    this.inFlight.add(running);
  }

  private async deliver(row: ClaimedDelivery): Promise<void> {
    const { pool, sender } = this.deps;
    const target = this.openTarget(row);
    if (typeof target === "string") {
      await markFailed(pool, row.execution_id, undefined, target);
      return;
    }
    const signal = this.abort.signal;
    const result = await sender.attempt(target, row.payload, webhookId(row.execution_id), { signal });
    // Shutting down: record nothing; the lease lapses and another replica tries again.
    if (signal.aborted) return;
    await this.record(row, result);
  }

  private async record(row: ClaimedDelivery, result: AttemptResult): Promise<void> {
    const { pool, logger } = this.deps;
    const ctx = { executionId: row.execution_id, attempts: row.attempts };
    this.deps.metrics?.callbackAttempt(result.outcome);
    if (result.outcome === "delivered") {
      await markDelivered(pool, row.execution_id, result.httpStatus ?? 200);
      return;
    }
    const error = result.error ?? "not delivered";
    const delay =
      result.outcome === "retry"
        ? nextRetryDelayMs(
            this.deps.retryScheduleMs ?? DEFAULT_RETRY_SCHEDULE_MS,
            row.attempts,
            result.retryAfterMs,
            (this.deps.random ?? Math.random)(),
          )
        : undefined;
    if (delay === undefined) {
      await markFailed(pool, row.execution_id, result.httpStatus, error);
      logger.warn({ ...ctx, status: result.httpStatus }, "callback not delivered; kept as failed");
      return;
    }
    await scheduleRetry(pool, row.execution_id, delay, result.httpStatus, error);
    logger.info({ ...ctx, retryInMs: delay }, "callback attempt failed; retry scheduled");
  }

  /** The session's callback target, or why it cannot be had. */
  private openTarget(row: ClaimedDelivery): CallbackTarget | string {
    if (!row.target) return "the session has no callback target";
    try {
      return this.deps.sealer.openJson<CallbackTarget>(
        row.target,
        sealContext({ sessionId: row.session_id, userId: row.user_id }, "callback_target"),
      );
    } catch (err) {
      this.deps.logger.error({ executionId: row.execution_id, err }, "could not open the callback target");
      return "the callback target could not be opened";
    }
  }
}
