import type { Pool, PoolClient } from "@kilo-cloud/common";

type Queryable = Pool | PoolClient;

/** A row of token.installations. */
export interface InstallationRow {
  /** bigint, as pg returns it. */
  installation_id: string;
  account_login: string;
  kilo_org_id: string | null;
  kilo_user_id: string | null;
  created_at: Date;
  updated_at: Date;
}

export type InstallationOwner = { orgId: string } | { userId: string };

export async function findInstallationByLogin(
  db: Queryable,
  accountLogin: string,
): Promise<InstallationRow | undefined> {
  const { rows } = await db.query<InstallationRow>(
    "SELECT * FROM token.installations WHERE account_login = $1",
    [accountLogin.toLowerCase()],
  );
  return rows[0];
}

/**
 * Records the installation, replacing what was known about it. Another installation on the
 * same account is removed (with its cached tokens): GitHub installs an App at most once per
 * account, so an uninstall followed by a reinstall arrives as a new id for the same login.
 * Returns the ids that were replaced.
 */
export async function upsertInstallation(
  db: PoolClient,
  installationId: bigint,
  accountLogin: string,
  owner: InstallationOwner,
): Promise<string[]> {
  const login = accountLogin.toLowerCase();
  const { rows: replaced } = await db.query<{ installation_id: string }>(
    "DELETE FROM token.installations WHERE account_login = $1 AND installation_id <> $2 RETURNING installation_id",
    [login, installationId.toString()],
  );
  await db.query(
    `INSERT INTO token.installations (installation_id, account_login, kilo_org_id, kilo_user_id)
     VALUES ($1, $2, $3, $4)
     ON CONFLICT (installation_id) DO UPDATE
       SET account_login = EXCLUDED.account_login,
           kilo_org_id = EXCLUDED.kilo_org_id,
           kilo_user_id = EXCLUDED.kilo_user_id,
           updated_at = now()`,
    [
      installationId.toString(),
      login,
      "orgId" in owner ? owner.orgId : null,
      "userId" in owner ? owner.userId : null,
    ],
  );
  return replaced.map((r) => r.installation_id);
}

/** Removes the installation and, by cascade, its cached tokens; false when unknown. */
export async function deleteInstallation(db: Queryable, installationId: bigint): Promise<boolean> {
  const { rowCount } = await db.query("DELETE FROM token.installations WHERE installation_id = $1", [
    installationId.toString(),
  ]);
  return (rowCount ?? 0) > 0;
}
