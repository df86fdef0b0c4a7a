import { createPool, type Logger, type Pool } from "@kilo-cloud/common";
import type { TokenConfig } from "./config.js";
import type { MintToken } from "./github/app-tokens.js";
import { createTokenService, migrateTokenSchema, type TokenServiceApp } from "./server.js";

/** What the token service runs on, connected (main.ts makes it; tests may share theirs). */
export interface TokenInfra {
  logger: Logger;
  /** The database, migrated (schema `token`). */
  pool: Pool;
  /** Milliseconds since the epoch (tests move it). */
  now?: () => number;
  /** Replaces the GitHub App minter (tests of failure paths). */
  mint?: MintToken;
}

/** The token service's one composition root: main.ts, the one-process mode and the test stacks call it. */
export function buildToken(config: TokenConfig, infra: TokenInfra): Promise<TokenServiceApp> {
  return createTokenService({
    pool: infra.pool,
    logger: infra.logger,
    sealingKeys: config.sealingKeys,
    serviceTokenPublicKey: config.serviceTokenPublicKey,
    internalApiKey: config.internalApiSecret,
    github: {
      appId: config.githubAppId,
      privateKey: config.githubAppPrivateKey,
      apiUrl: config.githubApiUrl,
      timeoutMs: config.githubTimeoutMs,
    },
    cacheMarginMs: config.cacheMarginMs,
    ...(infra.now ? { now: infra.now } : {}),
    ...(infra.mint ? { mint: infra.mint } : {}),
  });
}

/** Connects what the config names: the database, migrated. */
export async function connectTokenInfra(
  config: TokenConfig,
  logger: Logger,
): Promise<TokenInfra & { close(): Promise<void> }> {
  const pool = createPool(config.databaseUrl, { applicationName: "kilo-cloud-token" });
  try {
    await migrateTokenSchema(pool, logger);
  } catch (err) {
    await pool.end();
    throw err;
  }
  return { logger, pool, close: () => pool.end() };
}
