import {
  type Env,
  EnvReader,
  type EventLogConfig,
  type OutboundPolicy,
  parseSealingKeys,
  readEventLogConfig,
  type SealingKey,
} from "@kilo-cloud/common";
import { DEFAULT_RETRY_SCHEDULE_MS, parseRetrySchedule } from "./callbacks/retry-schedule.js";
import { webhookKey } from "./callbacks/standard-webhooks.js";
import { DEFAULT_EXECUTION_CAPS } from "./dispatch/admission.js";
import { DEFAULT_DISPATCHER_SETTINGS, DEFAULT_HEARTBEAT_STALE_MS } from "./dispatch/dispatcher.js";

export interface SessionConfig {
  port: number;
  host: string;
  databaseUrl: string;
  sealingKeys: SealingKey[];
  /** The gateway's public key (PEM, Ed25519) for the service tokens it signs. */
  serviceTokenPublicKey: string;
  /** Running executions; absent when SANDBOX_MANAGER_URL is not set. */
  executions?: {
    sandboxManagerUrl: string;
    /** This service's Ed25519 private key (PKCS#8 PEM) for its calls to sandbox-manager. */
    serviceTokenPrivateKey: string;
    /** The event log (bound to; sandbox-manager owns the stream and its retention). */
    events: EventLogConfig;
    queueMaxWaiting: number;
    /** Sessions per user / per organization running or waiting to start at once. */
    maxActivePerUser: number;
    maxActivePerOrg: number;
    queueExpiryMs: number;
    staleAfterMs: number;
    heartbeatStaleMs: number;
    callbackSigningSecret?: string | undefined;
    /** Delays between a callback's attempts (CALLBACK_RETRY_SCHEDULE, e.g. `5s,5m,30m,2h`). */
    callbackRetryScheduleMs: number[];
    callbackPolicy: OutboundPolicy;
    allowInsecureGit: boolean;
    /** Hosts of git/MCP URLs exempt from the address policy at prepare (tests, demo). */
    outboundAllowHosts: string[];
  };
  logLevel: string;
}

export function loadSessionConfig(env: Env): Readonly<SessionConfig> {
  const r = new EnvReader(env);
  const sealing = r.string("SESSION_SEALING_KEYS");
  let sealingKeys: SealingKey[] = [];
  if (sealing) {
    try {
      sealingKeys = parseSealingKeys(sealing);
    } catch (err) {
      r.problem(`SESSION_SEALING_KEYS: ${(err as Error).message}`);
    }
  }
  const sandboxManagerUrl = r.optional("SANDBOX_MANAGER_URL");
  const callbackSigningSecret = r.optional("CALLBACK_SIGNING_SECRET");
  if (callbackSigningSecret !== undefined) {
    try {
      webhookKey(callbackSigningSecret);
    } catch (err) {
      r.problem(`CALLBACK_SIGNING_SECRET: ${(err as Error).message}`);
    }
  }
  let callbackRetryScheduleMs: number[] = [...DEFAULT_RETRY_SCHEDULE_MS];
  const schedule = r.optional("CALLBACK_RETRY_SCHEDULE");
  if (schedule !== undefined) {
    try {
      callbackRetryScheduleMs = parseRetrySchedule(schedule);
    } catch (err) {
      r.problem(`CALLBACK_RETRY_SCHEDULE: ${(err as Error).message}`);
    }
  }
  const config: SessionConfig = {
    port: r.int("PORT", 8081, { min: 0, max: 65535 }),
    host: r.string("HOST", "0.0.0.0"),
    databaseUrl: r.url("DATABASE_URL"),
    sealingKeys,
    serviceTokenPublicKey: r.string("SERVICE_TOKEN_PUBLIC_KEY").replace(/\\n/g, "\n"),
    ...(sandboxManagerUrl
      ? {
          executions: {
            sandboxManagerUrl: r.url("SANDBOX_MANAGER_URL"),
            serviceTokenPrivateKey: r.string("SESSION_SERVICE_TOKEN_PRIVATE_KEY").replace(/\\n/g, "\n"),
            events: readEventLogConfig(r, { owner: false }),
            queueMaxWaiting: r.int("QUEUE_MAX_WAITING", 10, { min: 1, max: 10_000 }),
            maxActivePerUser: r.int("MAX_RUNNING_PER_USER", DEFAULT_EXECUTION_CAPS.maxActivePerUser, {
              min: 1,
            }),
            maxActivePerOrg: r.int("MAX_RUNNING_PER_ORG", DEFAULT_EXECUTION_CAPS.maxActivePerOrg, { min: 1 }),
            queueExpiryMs: r.int("QUEUE_EXPIRY_MS", 60 * 60_000, { min: 1_000 }),
            staleAfterMs: r.int("EXECUTION_STALE_MS", DEFAULT_DISPATCHER_SETTINGS.staleAfterMs, {
              min: 1_000,
            }),
            heartbeatStaleMs: r.int("HEARTBEAT_STALE_MS", DEFAULT_HEARTBEAT_STALE_MS, { min: 100 }),
            callbackSigningSecret,
            callbackRetryScheduleMs,
            allowInsecureGit: r.bool("GIT_ALLOW_INSECURE", false),
            outboundAllowHosts: (r.optional("SESSION_OUTBOUND_ALLOW_HOSTS") ?? "")
              .split(",")
              .map((h) =>
                h
                  .trim()
                  .toLowerCase()
                  .replace(/^\[|\]$/g, ""),
              )
              .filter((h) => h !== ""),
            callbackPolicy: {
              allowHttp: r.bool("CALLBACK_ALLOW_HTTP", false),
              allowLoopback: r.bool("CALLBACK_ALLOW_LOOPBACK", false),
              allowPrivate: r.bool("CALLBACK_ALLOW_PRIVATE", false),
            },
          },
        }
      : {}),
    logLevel: r.string("LOG_LEVEL", "info"),
  };
  r.done();
  return Object.freeze(config);
}
