import type { EnvReader } from "./config.js";
import type { EventLog } from "./events/event-log.js";
import { JetStreamEventLog } from "./events/jetstream-event-log.js";
import { PostgresEventLog } from "./events/postgres-event-log.js";
import type { Logger } from "./logger.js";
import { createPool, type Pool } from "./pg.js";

/** How long events are kept; only the owner of the event stream applies it. */
export interface EventRetention {
  maxAgeMs: number;
  maxBytes: number;
}

/**
 * Where the events live, as every service reads it from the environment:
 *
 *   EVENTS_BACKEND          nats (default) | postgres
 *   NATS_URL                nats: the servers (default nats://127.0.0.1:4222)
 *   EVENTS_STREAM           nats: the JetStream stream (default KILO_EVENTS)
 *   EVENTS_SUBJECT_PREFIX   nats: subjects `<prefix>.<session>.<type>` (default kilo.events)
 *   EVENTS_DATABASE_URL     postgres: the database of the event log (schema `events`)
 *   EVENTS_NOTIFICATIONS    postgres: listen (default) | poll (PGlite, transaction poolers)
 *   EVENTS_MAX_AGE_MS, EVENTS_MAX_BYTES   retention; read by the stream's owner only
 *
 * sandbox-manager, the only writer, owns the stream: it creates it and applies the
 * retention (JetStream limits, or the Postgres log's pruning). Session and gateway bind.
 */
export type EventLogConfig = (
  | { kind: "nats"; natsUrl: string; stream: string; subjectPrefix: string }
  | { kind: "postgres"; databaseUrl: string; notifications: "listen" | "poll" }
) & { retention?: EventRetention | undefined };

export const DEFAULT_EVENT_RETENTION: EventRetention = {
  maxAgeMs: 7 * 24 * 3600 * 1000,
  maxBytes: 10 * 1024 ** 3,
};

/** Reads the event-log settings; `owner` also reads the retention. */
export function readEventLogConfig(r: EnvReader, opts: { owner: boolean }): EventLogConfig {
  const backend = r.oneOf("EVENTS_BACKEND", ["nats", "postgres"] as const, "nats");
  const retention = opts.owner
    ? {
        maxAgeMs: r.int("EVENTS_MAX_AGE_MS", DEFAULT_EVENT_RETENTION.maxAgeMs, { min: 60_000 }),
        maxBytes: r.int("EVENTS_MAX_BYTES", DEFAULT_EVENT_RETENTION.maxBytes, { min: 1024 * 1024 }),
      }
    : undefined;
  if (backend === "postgres") {
    return {
      kind: "postgres",
      databaseUrl: r.url("EVENTS_DATABASE_URL"),
      notifications: r.oneOf("EVENTS_NOTIFICATIONS", ["listen", "poll"] as const, "listen"),
      retention,
    };
  }
  return {
    kind: "nats",
    natsUrl: r.string("NATS_URL", "nats://127.0.0.1:4222"),
    stream: r.string("EVENTS_STREAM", "KILO_EVENTS"),
    subjectPrefix: r.string("EVENTS_SUBJECT_PREFIX", "kilo.events"),
    retention,
  };
}

/** A connected event log with its readiness check. */
export interface ConnectedEventLog {
  events: EventLog;
  /** Throws while the log cannot serve (connection closed, stream missing, database down). */
  ready(): Promise<void>;
  close(): Promise<void>;
}

/**
 * Connects to the configured event log. With a retention in the config (the owner) the
 * JetStream stream is created or brought to its limits, or the Postgres log prunes itself;
 * without one, the service only binds. `pool` reuses a pool of the same database.
 */
export async function connectEventLog(
  config: EventLogConfig,
  opts: { name: string; logger: Logger; pool?: Pool | undefined },
): Promise<ConnectedEventLog> {
  if (config.kind === "nats") {
    const log = await JetStreamEventLog.connect({
      servers: config.natsUrl,
      stream: config.stream,
      subjectPrefix: config.subjectPrefix,
      name: opts.name,
      provision: config.retention !== undefined,
      ...(config.retention ?? {}),
    });
    return { events: log, ready: () => log.checkReady(), close: () => log.close() };
  }
  const pool =
    opts.pool ?? createPool(config.databaseUrl, { applicationName: `kilo-cloud-${opts.name}-events` });
  const log = await PostgresEventLog.connect({
    pool,
    logger: opts.logger,
    notifications: config.notifications,
    ...(config.retention ? config.retention : { pruneIntervalMs: 0 }),
  });
  return {
    events: log,
    ready: async () => {
      await pool.query("SELECT 1");
    },
    async close() {
      await log.close();
      if (!opts.pool) await pool.end();
    },
  };
}
