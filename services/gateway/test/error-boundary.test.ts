import { randomBytes } from "node:crypto";
import { type Client, Code, ConnectError, createClient, type Interceptor } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import {
  type ConnectedEventLog,
  connectEventLog,
  createLogger,
  createMetricsRegistry,
  createObservabilityInterceptor,
  createPool,
  createServiceHandler,
  createServiceTokenSigner,
  generateServiceKeyPair,
  listen,
  type Pool,
  type RunningServer,
} from "@kilo-cloud/common";
import { SessionService, StreamService } from "@kilo-cloud/proto";
import {
  buildSession,
  loadSessionConfig,
  migrateSessionSchema,
  SESSION_SERVICE_AUDIENCE,
} from "@kilo-cloud/session";
import { type PrivatePostgres, startPrivatePostgres } from "@kilo-cloud/testing";
import { SignJWT } from "jose";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { buildGateway, type GatewayApp, loadGatewayConfig } from "../src/index.js";

/**
 * Errors cross one boundary: with its PostgreSQL stopped under it, the system answers
 * INTERNAL/UNAVAILABLE with neutral messages, never SQL, a host name, a port or a stack; the
 * cause is logged once with its stack and the request id. A private PostgreSQL is stopped,
 * never the shared one.
 */

/** What must never reach a client: SQL, addresses, driver errors, stacks. */
const LEAK =
  /\b(SELECT|INSERT|UPDATE|DELETE|FROM|WHERE)\b|127\.0\.0\.1|localhost|ECONNREFUSED|ECONNRESET|postgres|terminating connection|:\d{4,5}\b|\n\s+at /i;

describe("errors cross one boundary (PostgreSQL stopped under the services)", { timeout: 180_000 }, () => {
  let pg: PrivatePostgres;
  let pool: Pool;
  let log: ConnectedEventLog;
  let sessionServer: RunningServer;
  let gatewayServer: RunningServer;
  let gateway: GatewayApp;
  let close: () => Promise<void>;
  const logs: string[] = [];
  let bearer: string;
  let direct: Client<typeof SessionService>;

  beforeAll(async () => {
    pg = await startPrivatePostgres();
    const destination = { write: (l: string) => void logs.push(l) };
    const keys = await generateServiceKeyPair();
    pool = createPool(pg.url, { max: 4 });
    const sessionLogger = createLogger({ service: "session", destination });
    await migrateSessionSchema(pool, sessionLogger);
    const session = await buildSession(
      loadSessionConfig({
        DATABASE_URL: pg.url,
        SESSION_SEALING_KEYS: `k1:${randomBytes(32).toString("base64")}`,
        SERVICE_TOKEN_PUBLIC_KEY: keys.publicKeyPem,
      }),
      { pool, logger: sessionLogger },
    );
    sessionServer = await listen(session.handler, { port: 0, host: "127.0.0.1" });
    const hs256 = randomBytes(32).toString("hex");
    const gatewayConfig = loadGatewayConfig({
      AUTH_HS256_SECRET: hs256,
      INTERNAL_API_SECRET: randomBytes(16).toString("hex"),
      SERVICE_TOKEN_PRIVATE_KEY: keys.privateKeyPem,
      STREAM_TICKET_SECRET: randomBytes(32).toString("hex"),
      SESSION_SERVICE_URL: sessionServer.url,
      EVENTS_BACKEND: "postgres",
      EVENTS_DATABASE_URL: pg.url,
    });
    const gatewayLogger = createLogger({ service: "gateway", destination });
    log = await connectEventLog(gatewayConfig.events, { name: "gateway", logger: gatewayLogger, pool });
    gateway = await buildGateway(gatewayConfig, {
      logger: gatewayLogger,
      events: log.events,
      keepaliveMs: 200,
    });
    gatewayServer = await listen(gateway.handler, { port: 0, host: "127.0.0.1" });
    bearer = await new SignJWT({})
      .setProtectedHeader({ alg: "HS256" })
      .setSubject("alice")
      .setExpirationTime("1h")
      .sign(new TextEncoder().encode(hs256));
    // The session service called directly, as the gateway calls it (a service token).
    const sign = await createServiceTokenSigner(keys.privateKeyPem);
    const asGateway: Interceptor = (next) => async (req) => {
      req.header.set(
        "authorization",
        `Bearer ${await sign(SESSION_SERVICE_AUDIENCE, { userId: "alice", internal: true })}`,
      );
      return next(req);
    };
    direct = createClient(
      SessionService,
      createConnectTransport({ baseUrl: sessionServer.url, httpVersion: "2", interceptors: [asGateway] }),
    );
    close = async () => {
      gateway.close();
      await gatewayServer.close(100);
      await sessionServer.close(100);
      await session.close();
      await log.close().catch(() => undefined);
      await pool.end().catch(() => undefined);
    };
  });
  afterAll(async () => {
    await close?.();
    await pg?.dispose();
  });

  const viaGateway = <T extends typeof SessionService | typeof StreamService>(service: T) =>
    createClient(
      service,
      createConnectTransport({
        baseUrl: gatewayServer.url,
        httpVersion: "1.1",
        interceptors: [
          (next) => async (req) => {
            req.header.set("authorization", `Bearer ${bearer}`);
            return next(req);
          },
        ],
      }),
    );

  const failure = async (call: Promise<unknown>) => {
    const err = await call.then(
      () => undefined,
      (e: unknown) => ConnectError.from(e),
    );
    if (!err) throw new Error("the call succeeded with the database stopped");
    return err;
  };

  it("the services answer neutral errors (INTERNAL/UNAVAILABLE) through the gateway and directly", async () => {
    const { cloudAgentSessionId: sessionId } = await direct.prepareSession({
      prompt: "anything",
      mode: "code",
      model: "mock-model",
      repository: { case: "githubRepo", value: "acme/widgets" },
    });
    await pg.stop("fast");

    const errors: ConnectError[] = [];
    errors.push(await failure(direct.getSession({ cloudAgentSessionId: sessionId })));
    errors.push(await failure(direct.listSessions({})));
    errors.push(await failure(viaGateway(SessionService).getSession({ cloudAgentSessionId: sessionId })));

    for (const e of errors) {
      expect([Code.Internal, Code.Unavailable]).toContain(e.code);
      expect(e.code).not.toBe(Code.Unknown);
      expect(e.rawMessage).not.toMatch(LEAK);
    }
  });

  it("an error a handler lets escape (unary or inside a stream) becomes INTERNAL (UNAVAILABLE for an outage), logged once with its stack and ids, and counted", async () => {
    const raw = createPool(pg.url, { max: 1 });
    const logger = createLogger({
      service: "probe",
      destination: { write: (l: string) => void logs.push(l) },
    });
    const metrics = createMetricsRegistry("probe");
    const sessionId = "agent_123e4567-e89b-12d3-a456-426614174000";
    const handler = createServiceHandler({
      routes: (router) => {
        router.service(SessionService, {
          // The driver's error is not wrapped: the boundary must still not leak it.
          async getSession() {
            await raw.query("SELECT id, owner_user_id FROM session.sessions WHERE id = 'x'");
            throw new Error("unreachable");
          },
        });
        router.service(StreamService, {
          async *subscribe() {
            yield { payload: { case: "keepalive", value: {} } } as never;
            // Not an outage: a plain error whose text names SQL and a host.
            throw new Error(
              'relation "events.events" does not exist (SELECT * FROM events.events at db.internal:5432)',
            );
          },
        });
      },
      interceptors: [createObservabilityInterceptor(logger, metrics)],
      metrics,
      logger,
      readiness: async () => undefined,
    });
    const server = await listen(handler, { port: 0, host: "127.0.0.1" });
    try {
      const transport = createConnectTransport({ baseUrl: server.url, httpVersion: "1.1" });
      const unary = await failure(
        createClient(SessionService, transport).getSession(
          { cloudAgentSessionId: sessionId },
          { headers: { "x-request-id": "req-unary-1" } },
        ),
      );
      const streamed = await failure(
        (async () => {
          for await (const _ of createClient(StreamService, transport).subscribe(
            { cloudAgentSessionId: sessionId },
            { headers: { "x-request-id": "req-stream-1" } },
          )) {
            // the first message, then the error
          }
        })(),
      );
      // The database is down (the test before stopped it): an outage escaping the handler
      // answers the retryable UNAVAILABLE; any other escaping error INTERNAL. Both neutral.
      for (const [e, id, rpc, code, text] of [
        [unary, "req-unary-1", /GetSession$/, Code.Unavailable, "temporarily unavailable, retry"],
        [streamed, "req-stream-1", /Subscribe$/, Code.Internal, "internal error"],
      ] as const) {
        expect(e.code).toBe(code);
        expect(e.rawMessage).toBe(`${text} (request ${id})`);
        expect(e.rawMessage).not.toMatch(LEAK);
        const lines = logs.filter((l) => l.includes(id)).map((l) => JSON.parse(l));
        expect(lines).toHaveLength(1);
        expect(lines[0]).toMatchObject({ rpc: expect.stringMatching(rpc), requestId: id, level: 50 });
        expect(lines[0].err.stack).toMatch(/\n\s+at /);
      }
      expect(JSON.parse(logs.find((l) => l.includes("req-unary-1"))!).sessionId).toBe(sessionId);
      const text = await metrics.metrics();
      expect(text).toMatch(
        /rpc_requests_total\{[^}]*rpc_method="Subscribe"[^}]*rpc_code="Internal"[^}]*\} 1/,
      );
      expect(text).toMatch(
        /rpc_requests_total\{[^}]*rpc_method="GetSession"[^}]*rpc_code="Unavailable"[^}]*\} 1/,
      );
    } finally {
      await server.close(100);
      await raw.end();
    }
  });
});
