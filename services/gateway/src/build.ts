import { type ConnectedEventLog, connectEventLog, type EventLog, type Logger } from "@kilo-cloud/common";
import type { GatewayConfig } from "./config.js";
import { createGateway, type GatewayApp } from "./server.js";
import type { PumpSettings } from "./stream-ws/pump.js";

/** What the gateway runs on, connected: main.ts makes it from the config, tests may share theirs. */
export interface GatewayInfra {
  logger: Logger;
  events: EventLog;
  eventsReady?: () => Promise<void>;
  /** Keepalive of Subscribe streams (default 15 s). */
  keepaliveMs?: number;
  /** `/stream` knobs with no variable (tests: a small high-water mark, a short patience). */
  streamSocket?: Partial<PumpSettings>;
}

/** The gateway's one composition root: main.ts, the one-process mode and the test stacks call it. */
export function buildGateway(config: GatewayConfig, infra: GatewayInfra): Promise<GatewayApp> {
  return createGateway({
    logger: infra.logger,
    userTokens: config.userTokens,
    internalApiKey: config.internalApiKey,
    serviceTokenPrivateKey: config.serviceTokenPrivateKey,
    streamTicketSecret: config.streamTicketSecret,
    sessionServiceUrl: config.sessionServiceUrl,
    upstreamTimeoutMs: config.upstreamTimeoutMs,
    maxStreamsPerUser: config.maxStreamsPerUser,
    limits: config.limits,
    events: infra.events,
    ...(infra.eventsReady ? { eventsReady: infra.eventsReady } : {}),
    ...(infra.keepaliveMs !== undefined ? { keepaliveMs: infra.keepaliveMs } : {}),
    ...(config.hostedAuthSecret !== undefined ? { hostedAuthSecret: config.hostedAuthSecret } : {}),
    streamPingMs: config.streamPingMs,
    streamAllowedOrigins: config.streamAllowedOrigins,
    ...(infra.streamSocket ? { streamSocket: infra.streamSocket } : {}),
  });
}

/** Connects what the config names (the event log, bound only). */
export async function connectGatewayInfra(
  config: GatewayConfig,
  logger: Logger,
): Promise<GatewayInfra & { close(): Promise<void> }> {
  const log: ConnectedEventLog = await connectEventLog(config.events, { name: "gateway", logger });
  return { logger, events: log.events, eventsReady: log.ready, close: log.close };
}
