import type { Pool } from "@kilo-cloud/common";
import type { CallbackPayload } from "../callbacks/callbacks.js";

/** A row of session.callback_deliveries. */
export interface DeliveryRow {
  execution_id: string;
  session_id: string;
  payload: CallbackPayload;
  status: "pending" | "delivered" | "failed";
  attempts: number;
  last_error: string | null;
  last_http_status: number | null;
  next_attempt_at: Date;
  created_at: Date;
  updated_at: Date;
}

/** A claimed delivery, with the session's sealed target and owner. */
export interface ClaimedDelivery {
  execution_id: string;
  session_id: string;
  user_id: string;
  payload: CallbackPayload;
  attempts: number;
  target: string | null;
}

/**
 * Claims up to `limit` due deliveries (SKIP LOCKED: each goes to one replica) and counts
 * the attempt. The next attempt time moves `leaseMs` ahead while this one is under way, so
 * a replica that dies mid-attempt leaves the delivery to be claimed again after that.
 */
export async function claimDueDeliveries(
  pool: Pool,
  limit: number,
  leaseMs: number,
): Promise<ClaimedDelivery[]> {
  const { rows } = await pool.query<ClaimedDelivery>(
    `UPDATE session.callback_deliveries d
     SET attempts = d.attempts + 1,
         next_attempt_at = now() + $2 * interval '1 millisecond',
         updated_at = now()
     FROM session.sessions s
     WHERE s.id = d.session_id
       AND d.execution_id IN (
         SELECT execution_id FROM session.callback_deliveries
         WHERE status = 'pending' AND next_attempt_at <= now()
         ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED)
     RETURNING d.execution_id, d.session_id, s.user_id, d.payload, d.attempts,
               s.callback_target_sealed AS target`,
    [limit, leaseMs],
  );
  return rows;
}

export async function markDelivered(pool: Pool, executionId: string, httpStatus: number): Promise<void> {
  await pool.query(
    `UPDATE session.callback_deliveries
     SET status = 'delivered', last_http_status = $2, last_error = NULL, updated_at = now()
     WHERE execution_id = $1`,
    [executionId, httpStatus],
  );
}

/** Another attempt in `delayMs`. */
export async function scheduleRetry(
  pool: Pool,
  executionId: string,
  delayMs: number,
  httpStatus: number | undefined,
  error: string,
): Promise<void> {
  await pool.query(
    `UPDATE session.callback_deliveries
     SET next_attempt_at = now() + $2 * interval '1 millisecond', last_http_status = $3, last_error = $4,
         updated_at = now()
     WHERE execution_id = $1`,
    [executionId, delayMs, httpStatus ?? null, error],
  );
}

/** Given up on: kept, listed, and redeliverable. */
export async function markFailed(
  pool: Pool,
  executionId: string,
  httpStatus: number | undefined,
  error: string,
): Promise<void> {
  await pool.query(
    `UPDATE session.callback_deliveries
     SET status = 'failed', last_http_status = $2, last_error = $3, updated_at = now()
     WHERE execution_id = $1`,
    [executionId, httpStatus ?? null, error],
  );
}

/** The deliveries of one user's session, newest first (none for another user's session). */
export async function listDeliveries(pool: Pool, sessionId: string, userId: string): Promise<DeliveryRow[]> {
  const { rows } = await pool.query<DeliveryRow>(
    `SELECT d.* FROM session.callback_deliveries d
     JOIN session.sessions s ON s.id = d.session_id AND s.user_id = $2
     WHERE d.session_id = $1
     ORDER BY d.created_at DESC, d.execution_id DESC`,
    [sessionId, userId],
  );
  return rows;
}

/** Starts a new series of attempts now; undefined when the user has no such delivery. */
export async function redeliver(
  pool: Pool,
  sessionId: string,
  executionId: string,
  userId: string,
): Promise<DeliveryRow | undefined> {
  const { rows } = await pool.query<DeliveryRow>(
    `UPDATE session.callback_deliveries d
     SET status = 'pending', attempts = 0, next_attempt_at = now(), last_error = NULL,
         last_http_status = NULL, updated_at = now()
     FROM session.sessions s
     WHERE d.execution_id = $2 AND d.session_id = $1 AND s.id = d.session_id AND s.user_id = $3
     RETURNING d.*`,
    [sessionId, executionId, userId],
  );
  return rows[0];
}
