import type { Pool, PoolClient } from "@kilo-cloud/common";

type Queryable = Pool | PoolClient;

/** A row of token.cached_tokens (the token stays sealed here). */
export interface CachedTokenRow {
  installation_id: string;
  repository: string;
  token_sealed: string;
  expires_at: Date;
  created_at: Date;
}

export async function readCachedToken(
  db: Queryable,
  installationId: string,
  repository: string,
): Promise<CachedTokenRow | undefined> {
  const { rows } = await db.query<CachedTokenRow>(
    "SELECT * FROM token.cached_tokens WHERE installation_id = $1 AND repository = $2",
    [installationId, repository],
  );
  return rows[0];
}

/**
 * Stores a minted token unless a replica already stored one that lives longer (two
 * replicas that missed at once both mint; the later expiry wins).
 */
export async function writeCachedToken(
  db: Queryable,
  row: Pick<CachedTokenRow, "installation_id" | "repository" | "token_sealed" | "expires_at">,
): Promise<void> {
  await db.query(
    `INSERT INTO token.cached_tokens (installation_id, repository, token_sealed, expires_at)
     VALUES ($1, $2, $3, $4)
     ON CONFLICT (installation_id, repository) DO UPDATE
       SET token_sealed = EXCLUDED.token_sealed,
           expires_at = EXCLUDED.expires_at,
           created_at = now()
       WHERE token.cached_tokens.expires_at < EXCLUDED.expires_at`,
    [row.installation_id, row.repository, row.token_sealed, row.expires_at],
  );
}

/** Drops tokens that expired before `before`; they can never be served again. */
export async function deleteExpiredTokens(db: Queryable, before: Date): Promise<number> {
  const { rowCount } = await db.query("DELETE FROM token.cached_tokens WHERE expires_at < $1", [before]);
  return rowCount ?? 0;
}
