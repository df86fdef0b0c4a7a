import {
  DEFAULT_MAX_TOKEN_LIFETIME_SECONDS,
  type Env,
  EnvReader,
  type EventLogConfig,
  readEventLogConfig,
  readServerLimits,
  type ServerLimits,
  type UserTokenConfig,
} from "@kilo-cloud/common";
import { DEFAULT_MAX_STREAMS_PER_USER } from "./handlers/stream-slots.js";

export interface GatewayConfig {
  port: number;
  host: string;
  /** Base URL of the session service (Connect over HTTP/2 cleartext). */
  sessionServiceUrl: string;
  userTokens: UserTokenConfig;
  /** The backend-to-backend key for PrepareSession, PrepareLegacySession, UpdateSession. */
  internalApiKey: string;
  /** Ed25519 private key (PKCS#8 PEM) that signs the service tokens sent to services. */
  serviceTokenPrivateKey: string;
  /** HS256 secret for stream tickets (only the gateway issues and checks them). */
  streamTicketSecret: string;
  /** Deadline of calls to the services behind the gateway. */
  upstreamTimeoutMs: number;
  /** The event log Subscribe reads (bound to, never provisioned: sandbox-manager owns it). */
  events: EventLogConfig;
  /** Open Subscribe streams per user on one gateway replica. */
  maxStreamsPerUser: number;
  /** Request size and connection timeouts of the public port. */
  limits: ServerLimits;
  logLevel: string;
  /** The hosted backend's NEXTAUTH_SECRET: its API tokens and stream tickets are accepted too. */
  hostedAuthSecret?: string;
  /** `/stream` WebSocket ping interval. */
  streamPingMs: number;
  /** Browser origins allowed on `/stream` (empty: any). */
  streamAllowedOrigins: string[];
}

export function loadGatewayConfig(env: Env): Readonly<GatewayConfig> {
  const r = new EnvReader(env);
  const hs256Secret = r.optional("AUTH_HS256_SECRET");
  const jwksUrl = r.optional("AUTH_JWKS_URL");
  if ((hs256Secret === undefined) === (jwksUrl === undefined)) {
    r.problem("set exactly one of AUTH_HS256_SECRET and AUTH_JWKS_URL (how bearer tokens are verified)");
  }
  if (hs256Secret !== undefined && Buffer.byteLength(hs256Secret) < 32) {
    r.problem("AUTH_HS256_SECRET must be at least 32 bytes");
  }
  const internalApiKey = r.string("INTERNAL_API_SECRET");
  if (internalApiKey && internalApiKey.length < 16)
    r.problem("INTERNAL_API_SECRET must be at least 16 characters");
  const streamTicketSecret = r.string("STREAM_TICKET_SECRET");
  if (streamTicketSecret && Buffer.byteLength(streamTicketSecret) < 32) {
    r.problem("STREAM_TICKET_SECRET must be at least 32 bytes");
  }
  const hostedAuthSecret = r.optional("HOSTED_AUTH_SECRET");
  if (hostedAuthSecret !== undefined && Buffer.byteLength(hostedAuthSecret) < 32) {
    r.problem("HOSTED_AUTH_SECRET must be at least 32 bytes");
  }
  const issuer = r.optional("AUTH_ISSUER");
  const audience = r.optional("AUTH_AUDIENCE");
  const config: GatewayConfig = {
    port: r.int("PORT", 8080, { min: 0, max: 65535 }),
    host: r.string("HOST", "0.0.0.0"),
    sessionServiceUrl: r.url("SESSION_SERVICE_URL", "http://127.0.0.1:8081"),
    userTokens: {
      ...(hs256Secret !== undefined ? { hs256Secret } : {}),
      ...(jwksUrl !== undefined ? { jwksUrl } : {}),
      ...(issuer !== undefined ? { issuer } : {}),
      ...(audience !== undefined ? { audience } : {}),
      userIdClaim: r.string("AUTH_USER_ID_CLAIM", "sub"),
      maxLifetimeSeconds: r.int("AUTH_MAX_TOKEN_LIFETIME_SECONDS", DEFAULT_MAX_TOKEN_LIFETIME_SECONDS, {
        min: 60,
      }),
    },
    internalApiKey,
    serviceTokenPrivateKey: r.string("SERVICE_TOKEN_PRIVATE_KEY").replace(/\\n/g, "\n"),
    streamTicketSecret,
    upstreamTimeoutMs: r.int("UPSTREAM_TIMEOUT_MS", 15_000, { min: 100 }),
    events: readEventLogConfig(r, { owner: false }),
    maxStreamsPerUser: r.int("MAX_STREAMS_PER_USER", DEFAULT_MAX_STREAMS_PER_USER, { min: 1 }),
    limits: readServerLimits(r),
    logLevel: r.string("LOG_LEVEL", "info"),
    ...(hostedAuthSecret !== undefined ? { hostedAuthSecret } : {}),
    streamPingMs: r.int("STREAM_PING_MS", 30_000, { min: 1_000 }),
    streamAllowedOrigins: (r.optional("STREAM_ALLOWED_ORIGINS") ?? "")
      .split(",")
      .map((o) => o.trim())
      .filter((o) => o !== ""),
  };
  r.done();
  return Object.freeze(config);
}
