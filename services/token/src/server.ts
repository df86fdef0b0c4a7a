import { fileURLToPath } from "node:url";
import type { ConnectRouter } from "@connectrpc/connect";
import {
  createMetricsRegistry,
  createObservabilityInterceptor,
  createServiceHandler,
  createServiceTokenVerifier,
  createValidationInterceptor,
  type Logger,
  migrate,
  type NodeRequest,
  type NodeResponse,
  type Pool,
  Sealer,
  type SealingKey,
} from "@kilo-cloud/common";
import { TokenService } from "@kilo-cloud/proto/token";
import { TOKEN_SERVICE_AUDIENCE, TOKEN_SERVICE_CALLER_ISSUER } from "./audience.js";
import { createTokenAuthInterceptor } from "./auth.js";
import { createGitHubAppMinter, type MintToken } from "./github/app-tokens.js";
import { RepositoryTokenCache } from "./github/token-cache.js";
import { tokenHandlers } from "./handlers/tokens.js";

export const MIGRATIONS_DIR = fileURLToPath(new URL("./migrations", import.meta.url));

export const DEFAULT_CACHE_MARGIN_MS = 5 * 60_000;

export interface GitHubAppSettings {
  appId: string;
  /** PEM; only this service holds it. */
  privateKey: string;
  /** Default `https://api.github.com`. */
  apiUrl?: string;
  /** Deadline of one call to GitHub (default 10 s). */
  timeoutMs?: number;
}

export interface TokenServiceDeps {
  pool: Pool;
  logger: Logger;
  sealingKeys: SealingKey[];
  /** sandbox-manager's public key (PEM, Ed25519). */
  serviceTokenPublicKey: string;
  /** The `x-internal-api-key` of RegisterInstallation / RemoveInstallation. */
  internalApiKey: string;
  github: GitHubAppSettings;
  /** Reuse a cached token until this long before it expires (default 5 min). */
  cacheMarginMs?: number;
  /** Milliseconds since the epoch (tests move it). */
  now?: () => number;
  /** Replaces the GitHub App minter (tests of failure paths). */
  mint?: MintToken;
}

export interface TokenServiceApp {
  handler: (req: NodeRequest, res: NodeResponse) => void;
  routes: (router: ConnectRouter) => void;
}

/** Applies the schema's migrations (schema `token`). */
export function migrateTokenSchema(pool: Pool, logger?: Logger): Promise<number> {
  return migrate(pool, { schema: "token", dir: MIGRATIONS_DIR, ...(logger ? { logger } : {}) });
}

/** Builds the token service (no listening: main.ts and tests do that). */
export async function createTokenService(deps: TokenServiceDeps): Promise<TokenServiceApp> {
  const metrics = createMetricsRegistry("token");
  const verify = await createServiceTokenVerifier(
    deps.serviceTokenPublicKey,
    TOKEN_SERVICE_AUDIENCE,
    TOKEN_SERVICE_CALLER_ISSUER,
  );
  const mint =
    deps.mint ??
    createGitHubAppMinter({
      appId: deps.github.appId,
      privateKey: deps.github.privateKey,
      apiUrl: (deps.github.apiUrl ?? "https://api.github.com").replace(/\/+$/, ""),
      timeoutMs: deps.github.timeoutMs ?? 10_000,
      logger: deps.logger,
    });
  const cache = new RepositoryTokenCache({
    pool: deps.pool,
    sealer: new Sealer(deps.sealingKeys),
    mint,
    logger: deps.logger,
    metrics,
    marginMs: deps.cacheMarginMs ?? DEFAULT_CACHE_MARGIN_MS,
    now: deps.now ?? Date.now,
  });
  const routes = (router: ConnectRouter) => {
    router.service(TokenService, tokenHandlers({ pool: deps.pool, cache, logger: deps.logger }));
  };
  const handler = createServiceHandler({
    routes,
    interceptors: [
      createObservabilityInterceptor(deps.logger, metrics),
      createTokenAuthInterceptor({ verify, internalApiKey: deps.internalApiKey }),
      createValidationInterceptor(),
    ],
    metrics,
    logger: deps.logger,
    readiness: async () => {
      await deps.pool.query("SELECT 1");
    },
  });
  return { handler, routes };
}
