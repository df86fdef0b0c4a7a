import { inTransaction, type Logger, type Pool, type Sealer } from "@kilo-cloud/common";
import { legacySealContext, SEAL_VERSION, sealContext } from "../handlers/seal-context.js";
import type { SessionRow } from "./sessions.js";

const SEALED_COLUMNS = [
  ["github_token_sealed", "github_token"],
  ["git_token_sealed", "git_token"],
  ["kilo_token_sealed", "kilo_token"],
  ["env_vars_sealed", "env_vars"],
  ["setup_commands_sealed", "setup_commands"],
  ["mcp_servers_sealed", "mcp_servers"],
  ["callback_target_sealed", "callback_target"],
] as const;

/**
 * Brings rows sealed before owners were bound (seal_version 1) to the current form: each
 * sealed column is opened with its old context and sealed again bound to the owner the row
 * names now, and the envelopes kept as received are sealed. Runs at start-up, row by row
 * under the row lock, so concurrent replicas do each row once. A row whose owner had been
 * rewritten in the database before the upgrade is bound to that owner: the upgrade cannot
 * tell. A row that does not open is left as it is and reported (it cannot run).
 */
export async function resealLegacySessions(pool: Pool, sealer: Sealer, logger?: Logger): Promise<number> {
  const { rows } = await pool.query<{ id: string }>(
    "SELECT id FROM session.sessions WHERE seal_version < $1",
    [SEAL_VERSION],
  );
  let done = 0;
  for (const { id } of rows) {
    try {
      if (await resealOne(pool, sealer, id)) done++;
    } catch (err) {
      logger?.error({ sessionId: id, err: (err as Error).message }, "could not re-seal a session");
    }
  }
  if (done > 0) logger?.info({ sessions: done }, "re-sealed sessions bound to their owner");
  return done;
}

async function resealOne(pool: Pool, sealer: Sealer, id: string): Promise<boolean> {
  return inTransaction(pool, async (tx) => {
    const row = (
      await tx.query<SessionRow>(
        "SELECT * FROM session.sessions WHERE id = $1 AND seal_version < $2 FOR UPDATE",
        [id, SEAL_VERSION],
      )
    ).rows[0];
    if (!row) return false;
    const scope = { sessionId: row.id, userId: row.user_id };
    const values: (string | null)[] = SEALED_COLUMNS.map(([col, ctx]) => {
      const sealed = row[col];
      return sealed === null
        ? null
        : sealer.seal(sealer.open(sealed, legacySealContext(row.id, ctx)), sealContext(scope, ctx));
    });
    const secrets = row.encrypted_secrets ?? {};
    const count = Object.keys(secrets).length;
    const secretsSealed =
      count > 0 ? sealer.sealJson(secrets, sealContext(scope, "encrypted_secrets")) : null;
    const sets = SEALED_COLUMNS.map(([col], i) => `${col} = $${i + 2}`).join(", ");
    await tx.query(
      `UPDATE session.sessions SET ${sets}, encrypted_secrets_sealed = $9, encrypted_secret_count = $10,
         encrypted_secrets = '{}'::jsonb, seal_version = $11 WHERE id = $1`,
      [id, ...values, secretsSealed, count, SEAL_VERSION],
    );
    return true;
  });
}
