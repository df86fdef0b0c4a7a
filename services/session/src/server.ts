import { fileURLToPath } from "node:url";
import type { ConnectRouter } from "@connectrpc/connect";
import {
  createMetricsRegistry,
  createObservabilityInterceptor,
  createServiceAuthGate,
  createServiceHandler,
  createServiceTokenVerifier,
  createValidationInterceptor,
  type EventLog,
  type Logger,
  migrate,
  type NodeRequest,
  type NodeResponse,
  type OutboundPolicy,
  type Pool,
  Sealer,
  type SealingKey,
} from "@kilo-cloud/common";
import { BACKEND_ONLY_SESSION_METHODS, SessionService } from "@kilo-cloud/proto";
import { resealLegacySessions } from "./db/reseal-legacy.js";
import { DEFAULT_EXECUTION_CAPS, type ExecutionCaps } from "./dispatch/admission.js";
import { CallbackOutbox, type CallbackSenderLike } from "./dispatch/callback-outbox.js";
import {
  DEFAULT_DISPATCHER_SETTINGS,
  DEFAULT_HEARTBEAT_STALE_MS,
  Dispatcher,
  type DispatcherSettings,
} from "./dispatch/dispatcher.js";
import { startLifecycleConsumer } from "./dispatch/lifecycle.js";
import { callbackDeliveryHandlers } from "./handlers/callback-deliveries.js";
import { type QueueSettings, sessionHandlers } from "./handlers/sessions.js";
import { createSessionMetrics } from "./metrics.js";
import { createSandboxClient, type SandboxClient } from "./sandbox/client.js";

/** The audience of service tokens addressed to this service. */
export const SESSION_SERVICE_AUDIENCE = "kilo-cloud-session";

export const MIGRATIONS_DIR = fileURLToPath(new URL("./migrations", import.meta.url));

const INTERNAL_METHODS = BACKEND_ONLY_SESSION_METHODS;

export interface ExecutionDeps {
  /** sandbox-manager's base URL and the key this service signs its calls with. */
  sandboxUrl: string;
  serviceTokenPrivateKey: string;
  events: EventLog;
  dispatcher?: Partial<DispatcherSettings>;
  queue?: Partial<Omit<QueueSettings, "caps">> & { caps?: Partial<ExecutionCaps> };
  /** Completion callbacks; without a sender, callbacks are recorded but not sent. */
  callbacks?: CallbackSenderLike;
  /** Delays between a callback's attempts (hours by default: DEFAULT_RETRY_SCHEDULE_MS). */
  callbackRetryScheduleMs?: readonly number[];
  /** Where callbacks may go; checked when a session is prepared and again at connect time. */
  callbackPolicy?: OutboundPolicy;
  /** Accept http:// git URLs (tests and the offline demo only). */
  allowInsecureGit?: boolean;
  /** Hosts of git/MCP URLs exempt from the address policy (SESSION_OUTBOUND_ALLOW_HOSTS). */
  outboundAllowHosts?: readonly string[];
}

export interface SessionServiceDeps {
  pool: Pool;
  logger: Logger;
  sealingKeys: SealingKey[];
  serviceTokenPublicKey: string;
  /** Without it, sessions can be prepared and inspected but not run. */
  executions?: ExecutionDeps;
  /** Readiness of the event log (e.g. the NATS connection and the stream). */
  eventsReady?: () => Promise<void>;
}

export interface SessionServiceApp {
  handler: (req: NodeRequest, res: NodeResponse) => void;
  routes: (router: ConnectRouter) => void;
  dispatcher?: Dispatcher;
  /** Stops the dispatcher, the lifecycle consumer and the callback worker. */
  close(): Promise<void>;
}

/** Applies the schema's migrations (schema `session`). */
export function migrateSessionSchema(pool: Pool, logger?: Logger): Promise<number> {
  return migrate(pool, { schema: "session", dir: MIGRATIONS_DIR, ...(logger ? { logger } : {}) });
}

/** Builds the session service (no listening: main.ts and tests do that). */
export async function createSessionService(deps: SessionServiceDeps): Promise<SessionServiceApp> {
  const metrics = createMetricsRegistry("session");
  const sessionMetrics = createSessionMetrics(metrics, deps.pool);
  const verify = await createServiceTokenVerifier(deps.serviceTokenPublicKey, SESSION_SERVICE_AUDIENCE);
  const sealer = new Sealer(deps.sealingKeys);
  await resealLegacySessions(deps.pool, sealer, deps.logger);
  const stop = new AbortController();
  let dispatcher: Dispatcher | undefined;
  let sandbox: SandboxClient | undefined;
  let outbox: CallbackOutbox | undefined;
  let lifecycle: Promise<void> | undefined;
  const queue: QueueSettings = {
    maxWaiting: 10,
    heartbeatStaleMs: DEFAULT_HEARTBEAT_STALE_MS,
    ...deps.executions?.queue,
    caps: { ...DEFAULT_EXECUTION_CAPS, ...deps.executions?.queue?.caps },
  };
  const x = deps.executions;
  if (x) {
    sandbox = await createSandboxClient({ baseUrl: x.sandboxUrl, privateKeyPem: x.serviceTokenPrivateKey });
    if (x.callbacks) {
      outbox = new CallbackOutbox({
        pool: deps.pool,
        sealer,
        sender: x.callbacks,
        metrics: sessionMetrics,
        logger: deps.logger,
        ...(x.callbackRetryScheduleMs ? { retryScheduleMs: x.callbackRetryScheduleMs } : {}),
      });
    }
    const d = new Dispatcher({
      pool: deps.pool,
      sealer,
      sandbox,
      events: x.events,
      logger: deps.logger,
      settings: { ...DEFAULT_DISPATCHER_SETTINGS, ...x.dispatcher },
      metrics: sessionMetrics,
      ...(outbox ? { onFinished: () => outbox?.wake() } : {}),
    });
    dispatcher = d;
    d.start();
    outbox?.start();
    lifecycle = startLifecycleConsumer({
      events: x.events,
      dispatcher: d,
      logger: deps.logger,
      signal: stop.signal,
    });
  }
  const routes = (router: ConnectRouter) => {
    router.service(SessionService, {
      ...callbackDeliveryHandlers({ pool: deps.pool, onRedeliver: () => outbox?.wake() }),
      ...sessionHandlers({
        pool: deps.pool,
        sealer,
        dispatcher,
        sandbox,
        queue,
        logger: deps.logger,
        callbackPolicy: x?.callbackPolicy ?? { allowHttp: false, allowLoopback: false },
        allowInsecureGit: x?.allowInsecureGit ?? false,
        outboundAllowHosts: x?.outboundAllowHosts ?? [],
      }),
    });
  };
  const handler = createServiceHandler({
    routes,
    interceptors: [createObservabilityInterceptor(deps.logger, metrics), createValidationInterceptor()],
    requestGate: createServiceAuthGate({ verify, internalMethods: INTERNAL_METHODS }),
    metrics,
    logger: deps.logger,
    readiness: async () => {
      await deps.pool.query("SELECT 1");
      await deps.eventsReady?.();
    },
  });
  return {
    handler,
    routes,
    ...(dispatcher ? { dispatcher } : {}),
    async close() {
      stop.abort();
      dispatcher?.stop();
      await outbox?.stop();
      await lifecycle;
    },
  };
}
