import { randomBytes } from "node:crypto";
import type { DescService } from "@bufbuild/protobuf";
import { type Client, createClient, type Transport } from "@connectrpc/connect";
import {
  createConnectTransport,
  createGrpcTransport,
  createGrpcWebTransport,
} from "@connectrpc/connect-node";
import {
  connectEventLog,
  createLogger,
  createPool,
  generateServiceKeyPair,
  listen,
  type Pool,
  type RunningServer,
  Sealer,
} from "@kilo-cloud/common";
import { SessionService, StreamService } from "@kilo-cloud/proto";
import { buildSession, loadSessionConfig, migrateSessionSchema } from "@kilo-cloud/session";
import { createTestDatabase, type TestDatabase } from "@kilo-cloud/testing";
import { SignJWT } from "jose";
import { buildGateway, type GatewayApp, loadGatewayConfig } from "../../src/index.js";

export const INTERNAL_API_KEY = `internal-${randomBytes(16).toString("hex")}`;

export type Protocol = "connect" | "grpc" | "grpc-web";

/**
 * The gateway and the session service, each on its own loopback port as in production,
 * on a fresh Postgres database, with every log line kept for inspection.
 */
export interface Stack extends AsyncDisposable {
  gatewayUrl: string;
  sessionUrl: string;
  hs256Secret: string;
  /** The service-token key pair the gateway signs with and the session service trusts. */
  serviceKeys: { privateKeyPem: string; publicKeyPem: string };
  db: Pool;
  /** The session service's sealer (to inspect what it stores). */
  sealer: Sealer;
  logs: string[];
  /** Makes (and remembers) a valid bearer token for the user; call before sessions(). */
  login(userId: string): Promise<string>;
  /** A bearer token for the user (HS256, as the gateway is configured). */
  tokenFor(
    userId: string,
    opts?: { expiresIn?: string; issuer?: string; audience?: string },
  ): Promise<string>;
  /** A SessionService client over HTTP to the gateway, authenticated as the user. */
  sessions(
    userId: string,
    opts?: { internal?: boolean; protocol?: Protocol; headers?: Record<string, string> },
  ): Client<typeof SessionService>;
  stream(userId?: string): Client<typeof StreamService>;
  /** A raw client with exactly the given headers (for auth tests). */
  rawClient<T extends DescService>(
    service: T,
    headers: Record<string, string>,
    protocol?: Protocol,
  ): Client<T>;
}

export const TEST_ISSUER = "https://kilo.test";
export const TEST_AUDIENCE = "kilo-cloud-agent";

export interface StackOptions {
  /** Serve Subscribe from a PostgresEventLog on the test database, with these settings. */
  streams?: { keepaliveMs: number; maxStreamsPerUser?: number };
}

export async function startStack(opts: StackOptions = {}): Promise<Stack> {
  const database: TestDatabase = await createTestDatabase();
  const logs: string[] = [];
  const destination = { write: (line: string) => void logs.push(line) };
  const pool = createPool(database.url, { max: 10 });
  const keys = await generateServiceKeyPair();
  const sessionLogger = createLogger({ service: "session", level: "debug", destination });
  await migrateSessionSchema(pool, sessionLogger);
  const sealingKeys = [{ id: "k1", key: randomBytes(32) }];
  const sessionConfig = loadSessionConfig({
    DATABASE_URL: database.url,
    SESSION_SEALING_KEYS: `k1:${sealingKeys[0]?.key.toString("base64")}`,
    SERVICE_TOKEN_PUBLIC_KEY: keys.publicKeyPem,
  });
  const session = await buildSession(sessionConfig, { pool, logger: sessionLogger });
  const sessionServer: RunningServer = await listen(session.handler, { port: 0, host: "127.0.0.1" });
  const hs256Secret = randomBytes(32).toString("hex");
  // Subscribe reads the Postgres event log of the test database (no NATS in this stack).
  const gatewayLogger = createLogger({ service: "gateway", level: "debug", destination });
  const gatewayConfig = loadGatewayConfig({
    AUTH_HS256_SECRET: hs256Secret,
    AUTH_ISSUER: TEST_ISSUER,
    AUTH_AUDIENCE: TEST_AUDIENCE,
    INTERNAL_API_SECRET: INTERNAL_API_KEY,
    SERVICE_TOKEN_PRIVATE_KEY: keys.privateKeyPem,
    STREAM_TICKET_SECRET: randomBytes(32).toString("hex"),
    SESSION_SERVICE_URL: sessionServer.url,
    EVENTS_BACKEND: "postgres",
    EVENTS_DATABASE_URL: database.url,
    ...(opts.streams?.maxStreamsPerUser
      ? { MAX_STREAMS_PER_USER: String(opts.streams.maxStreamsPerUser) }
      : {}),
  });
  const events = await connectEventLog(gatewayConfig.events, {
    name: "gateway",
    logger: gatewayLogger,
    pool,
  });
  const gateway: GatewayApp = await buildGateway(gatewayConfig, {
    logger: gatewayLogger,
    events: events.events,
    eventsReady: events.ready,
    ...(opts.streams ? { keepaliveMs: opts.streams.keepaliveMs } : {}),
  });
  const gatewayServer = await listen(gateway.handler, { port: 0, host: "127.0.0.1" });

  const transport = (headers: Record<string, string>, protocol: Protocol = "connect"): Transport => {
    const interceptors = [
      (next: Parameters<import("@connectrpc/connect").Interceptor>[0]) =>
        async (req: Parameters<typeof next>[0]) => {
          for (const [k, v] of Object.entries(headers)) req.header.set(k, v);
          return next(req);
        },
    ];
    const baseUrl = gatewayServer.url;
    if (protocol === "grpc") return createGrpcTransport({ baseUrl, interceptors });
    if (protocol === "grpc-web") return createGrpcWebTransport({ baseUrl, httpVersion: "1.1", interceptors });
    return createConnectTransport({ baseUrl, httpVersion: "1.1", interceptors });
  };

  const tokenFor: Stack["tokenFor"] = (userId, opts = {}) =>
    new SignJWT({})
      .setProtectedHeader({ alg: "HS256" })
      .setSubject(userId)
      .setIssuer(opts.issuer ?? TEST_ISSUER)
      .setAudience(opts.audience ?? TEST_AUDIENCE)
      .setIssuedAt()
      .setExpirationTime(opts.expiresIn ?? "10m")
      .sign(new TextEncoder().encode(hs256Secret));

  const tokens = new Map<string, string>();
  // Tokens are made ahead so that clients can be created synchronously.
  const bearer = (userId: string): string => {
    const t = tokens.get(userId);
    if (!t) throw new Error(`call await stack.login("${userId}") first`);
    return t;
  };

  const stack: Stack = {
    gatewayUrl: gatewayServer.url,
    sessionUrl: sessionServer.url,
    hs256Secret,
    serviceKeys: keys,
    db: pool,
    sealer: new Sealer(sealingKeys),
    logs,
    tokenFor,
    async login(userId: string) {
      const t = await tokenFor(userId);
      tokens.set(userId, t);
      return t;
    },
    sessions(userId, opts = {}) {
      const headers: Record<string, string> = {
        authorization: `Bearer ${bearer(userId)}`,
        ...(opts.headers ?? {}),
      };
      if (opts.internal !== false) headers["x-internal-api-key"] = INTERNAL_API_KEY;
      return createClient(SessionService, transport(headers, opts.protocol));
    },
    stream(userId) {
      return createClient(
        StreamService,
        transport(userId ? { authorization: `Bearer ${bearer(userId)}` } : {}),
      );
    },
    rawClient(service, headers, protocol) {
      return createClient(service, transport(headers, protocol));
    },
    async [Symbol.asyncDispose]() {
      gateway.close();
      await gatewayServer.close(100);
      await sessionServer.close(100);
      await session.close();
      await events.close();
      await pool.end();
      await database.drop();
    },
  };
  return stack;
}
