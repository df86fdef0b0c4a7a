import {
  type ConnectedEventLog,
  connectEventLog,
  createPool,
  type EventLog,
  type Logger,
  type OutboundPolicy,
  type Pool,
} from "@kilo-cloud/common";
import { CallbackSender } from "./callbacks/callbacks.js";
import type { SessionConfig } from "./config.js";
import type { CallbackSenderLike } from "./dispatch/callback-outbox.js";
import type { DispatcherSettings } from "./dispatch/dispatcher.js";
import { createSessionService, migrateSessionSchema, type SessionServiceApp } from "./server.js";

/** What the session service runs on, connected (main.ts makes it; tests may share theirs). */
export interface SessionInfra {
  logger: Logger;
  /** The database, migrated (schema `session`). */
  pool: Pool;
  /** Required when the config runs executions (SANDBOX_MANAGER_URL). */
  events?: EventLog | undefined;
  eventsReady?: () => Promise<void>;
  /** Replaces the sender made from CALLBACK_SIGNING_SECRET (tests: fast retries, loopback receivers). */
  callbacks?: CallbackSenderLike;
  /** Replaces the configured callback policy (tests: receivers on loopback). */
  callbackPolicy?: OutboundPolicy;
  /** Knobs with no variable (tests: a fast sweeper). */
  dispatcher?: Partial<DispatcherSettings>;
}

/** The session service's one composition root: main.ts, the one-process mode and the test stacks call it. */
export function buildSession(config: SessionConfig, infra: SessionInfra): Promise<SessionServiceApp> {
  const x = config.executions;
  if (x && !infra.events) throw new Error("the session service runs executions: it needs an event log");
  const callbackPolicy = infra.callbackPolicy ?? x?.callbackPolicy;
  const callbacks =
    infra.callbacks ??
    (x?.callbackSigningSecret && callbackPolicy
      ? new CallbackSender({ secret: x.callbackSigningSecret, policy: callbackPolicy, logger: infra.logger })
      : undefined);
  return createSessionService({
    pool: infra.pool,
    logger: infra.logger,
    sealingKeys: config.sealingKeys,
    serviceTokenPublicKey: config.serviceTokenPublicKey,
    ...(infra.eventsReady ? { eventsReady: infra.eventsReady } : {}),
    ...(x && infra.events
      ? {
          executions: {
            sandboxUrl: x.sandboxManagerUrl,
            serviceTokenPrivateKey: x.serviceTokenPrivateKey,
            events: infra.events,
            dispatcher: { queueExpiryMs: x.queueExpiryMs, staleAfterMs: x.staleAfterMs, ...infra.dispatcher },
            queue: {
              maxWaiting: x.queueMaxWaiting,
              heartbeatStaleMs: x.heartbeatStaleMs,
              caps: { maxActivePerUser: x.maxActivePerUser, maxActivePerOrg: x.maxActivePerOrg },
            },
            outboundAllowHosts: x.outboundAllowHosts,
            ...(callbackPolicy ? { callbackPolicy } : {}),
            allowInsecureGit: x.allowInsecureGit,
            callbackRetryScheduleMs: x.callbackRetryScheduleMs,
            ...(callbacks ? { callbacks } : {}),
          },
        }
      : {}),
  });
}

/** Connects what the config names: the database (migrated) and, to run executions, the event log. */
export async function connectSessionInfra(
  config: SessionConfig,
  logger: Logger,
): Promise<SessionInfra & { close(): Promise<void> }> {
  const pool = createPool(config.databaseUrl, { applicationName: "kilo-cloud-session" });
  try {
    await migrateSessionSchema(pool, logger);
    const x = config.executions;
    if (!x)
      logger.warn("SANDBOX_MANAGER_URL is not set: sessions can be prepared and read, but nothing runs");
    const log: ConnectedEventLog | undefined = x
      ? await connectEventLog(x.events, { name: "session", logger })
      : undefined;
    return {
      logger,
      pool,
      ...(log ? { events: log.events, eventsReady: log.ready } : {}),
      async close() {
        await log?.close();
        await pool.end();
      },
    };
  } catch (err) {
    await pool.end();
    throw err;
  }
}
