import type { Logger, Pool, Sealer } from "@kilo-cloud/common";
import { sealContext } from "../handlers/seal-context.js";

export interface CallbackTargetJson {
  url: string;
  headers?: Record<string, string>;
}

export interface CallbackPayload {
  cloudAgentSessionId: string;
  kiloSessionId: string;
  executionId: string;
  status: "completed" | "failed" | "interrupted" | "expired";
  errorMessage?: string;
  branch?: string;
}

/** Sends one callback with its retries; resolves with the outcome (never throws). */
export interface CallbackSenderLike {
  send(
    target: CallbackTargetJson,
    payload: CallbackPayload,
  ): Promise<{ delivered: boolean; attempts: number; error?: string | undefined }>;
}

/**
 * Delivers the completion callbacks recorded in `session.callback_deliveries` (written in
 * the same transaction as the terminal status, so none is lost to a crash). Each row is
 * claimed by one worker (SKIP LOCKED), sent with the sender's retries, then marked
 * delivered or failed. The callback target is unsealed only for the send.
 */
export class CallbackOutbox {
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<void> | undefined;
  private again = false;

  constructor(
    private readonly deps: {
      pool: Pool;
      sealer: Sealer;
      sender: CallbackSenderLike;
      logger: Logger;
      pollIntervalMs?: number;
      concurrency?: number;
    },
  ) {}

  start(): void {
    this.timer ??= setInterval(() => this.wake(), this.deps.pollIntervalMs ?? 5_000);
    this.timer.unref();
    this.wake();
  }

  async stop(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    await this.running;
  }

  /** Looks for pending deliveries now. */
  wake(): void {
    if (this.running) {
      this.again = true;
      return;
    }
    this.running = this.drain()
      .catch((err: unknown) =>
        this.deps.logger.error({ err: (err as Error).message }, "callback outbox failed"),
      )
      .finally(() => {
        this.running = undefined;
        if (this.again) {
          this.again = false;
          this.wake();
        }
      });
  }

  private async drain(): Promise<void> {
    for (;;) {
      const batch = await this.claim(this.deps.concurrency ?? 8);
      if (batch.length === 0) return;
      await Promise.all(batch.map((row) => this.deliver(row)));
    }
  }

  /** Claims pending rows by moving them to attempts+1 inside a short transaction. */
  private async claim(limit: number): Promise<
    Array<{
      execution_id: string;
      session_id: string;
      user_id: string;
      payload: CallbackPayload;
      target: string | null;
    }>
  > {
    const { rows } = await this.deps.pool.query<{
      execution_id: string;
      session_id: string;
      user_id: string;
      payload: CallbackPayload;
      target: string | null;
    }>(
      `UPDATE session.callback_deliveries d
       SET attempts = d.attempts + 1, updated_at = now()
       FROM session.sessions s
       WHERE s.id = d.session_id
         AND d.execution_id IN (
           SELECT execution_id FROM session.callback_deliveries
           WHERE status = 'pending' AND updated_at < now() - interval '2 minutes' OR (status = 'pending' AND attempts = 0)
           ORDER BY created_at LIMIT $1 FOR UPDATE SKIP LOCKED)
       RETURNING d.execution_id, d.session_id, s.user_id, d.payload, s.callback_target_sealed AS target`,
      [limit],
    );
    return rows;
  }

  private async deliver(row: {
    execution_id: string;
    session_id: string;
    user_id: string;
    payload: CallbackPayload;
    target: string | null;
  }): Promise<void> {
    const { pool, sealer, sender, logger } = this.deps;
    if (!row.target) {
      await pool.query(
        "UPDATE session.callback_deliveries SET status = 'failed', last_error = $2 WHERE execution_id = $1",
        [row.execution_id, "the session has no callback target"],
      );
      return;
    }
    let target: CallbackTargetJson;
    try {
      target = sealer.openJson<CallbackTargetJson>(
        row.target,
        sealContext({ sessionId: row.session_id, userId: row.user_id }, "callback_target"),
      );
    } catch (err) {
      logger.error(
        { executionId: row.execution_id, err: (err as Error).message },
        "could not open the callback target",
      );
      await pool.query(
        "UPDATE session.callback_deliveries SET status = 'failed', last_error = $2 WHERE execution_id = $1",
        [row.execution_id, "the callback target could not be opened"],
      );
      return;
    }
    const result = await sender.send(target, row.payload);
    await pool.query(
      "UPDATE session.callback_deliveries SET status = $2, last_error = $3, updated_at = now() WHERE execution_id = $1",
      [
        row.execution_id,
        result.delivered ? "delivered" : "failed",
        result.delivered ? null : (result.error ?? "not delivered"),
      ],
    );
    logger.info(
      { executionId: row.execution_id, delivered: result.delivered, attempts: result.attempts },
      result.delivered ? "callback delivered" : "callback not delivered",
    );
  }
}
