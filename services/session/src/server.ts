import { fileURLToPath } from "node:url";
import type { ConnectRouter } from "@connectrpc/connect";
import {
  createMetricsRegistry,
  createObservabilityInterceptor,
  createServiceAuthInterceptor,
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
import { SessionService } from "@kilo-cloud/proto";
import { sessionHandlers } from "./handlers/sessions.js";

/** The audience of service tokens addressed to this service. */
export const SESSION_SERVICE_AUDIENCE = "kilo-cloud-session";

export const MIGRATIONS_DIR = fileURLToPath(new URL("./migrations", import.meta.url));

/** Methods only backends may call (the gateway checked the internal API key). */
const INTERNAL_METHODS = new Set(
  ["PrepareSession", "PrepareLegacySession", "UpdateSession"].map((m) => `${SessionService.typeName}/${m}`),
);

export interface SessionServiceDeps {
  pool: Pool;
  logger: Logger;
  sealingKeys: SealingKey[];
  serviceTokenPublicKey: string;
}

export interface SessionServiceApp {
  handler: (req: NodeRequest, res: NodeResponse) => void;
  routes: (router: ConnectRouter) => void;
}

/** Applies the schema's migrations (schema `session`). */
export function migrateSessionSchema(pool: Pool, logger?: Logger): Promise<number> {
  return migrate(pool, { schema: "session", dir: MIGRATIONS_DIR, ...(logger ? { logger } : {}) });
}

/** Builds the session service (no listening: main.ts and tests do that). */
export async function createSessionService(deps: SessionServiceDeps): Promise<SessionServiceApp> {
  const metrics = createMetricsRegistry("session");
  const verify = await createServiceTokenVerifier(deps.serviceTokenPublicKey, SESSION_SERVICE_AUDIENCE);
  const sealer = new Sealer(deps.sealingKeys);
  const routes = (router: ConnectRouter) => {
    router.service(SessionService, sessionHandlers({ pool: deps.pool, sealer }));
  };
  const handler = createServiceHandler({
    routes,
    interceptors: [
      createObservabilityInterceptor(deps.logger, metrics),
      createServiceAuthInterceptor({ verify, internalMethods: INTERNAL_METHODS }),
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
