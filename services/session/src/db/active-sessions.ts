import type { PoolClient } from "@kilo-cloud/common";

/**
 * Serialises admissions of one owner (and one organization) until the transaction ends,
 * so two concurrent InitiateSession calls cannot both take the last slot.
 */
export async function lockAdmission(tx: PoolClient, scope: "user" | "org", id: string): Promise<void> {
  await tx.query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", [
    `session-admission:${scope}:${id}`,
  ]);
}

/** Sessions of the user (or org), other than `exceptSessionId`, with a message queued or running. */
export async function countActiveSessions(
  tx: PoolClient,
  scope: "user" | "org",
  id: string,
  exceptSessionId: string,
): Promise<number> {
  const column = scope === "user" ? "user_id" : "org_id";
  const { rows } = await tx.query<{ n: number }>(
    `SELECT count(DISTINCT e.session_id)::int AS n
     FROM session.executions e JOIN session.sessions s ON s.id = e.session_id
     WHERE s.${column} = $1 AND e.session_id <> $2 AND e.status IN ('queued', 'started')`,
    [id, exceptSessionId],
  );
  return rows[0]?.n ?? 0;
}

/** Whether the session already has a message queued or running. */
export async function hasActiveWork(tx: PoolClient, sessionId: string): Promise<boolean> {
  const { rows } = await tx.query(
    "SELECT 1 FROM session.executions WHERE session_id = $1 AND status IN ('queued', 'started') LIMIT 1",
    [sessionId],
  );
  return rows.length > 0;
}
