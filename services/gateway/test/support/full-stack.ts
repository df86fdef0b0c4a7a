import { randomBytes } from "node:crypto";
import { chmod, mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type Client, createClient, type Interceptor } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import {
  connectEventLog,
  createLogger,
  createPool,
  type EventLogConfig,
  generateServiceKeyPair,
  type JetStreamEventLog,
  listen,
  type Pool,
  type RunningServer,
} from "@kilo-cloud/common";
import { SessionService, StreamService } from "@kilo-cloud/proto";
import {
  buildSandboxManager,
  createDriver,
  type Driver,
  loadSandboxManagerConfig,
  packagedKiloBinary,
  type RunnerSettings,
} from "@kilo-cloud/sandbox-manager";
import {
  buildSession,
  type CallbackSenderLike,
  loadSessionConfig,
  migrateSessionSchema,
} from "@kilo-cloud/session";
import {
  capturedKiloStream,
  createTestDatabase,
  type GitServer,
  type ModelServer,
  startGitServer,
  startModelServer,
  startNats,
  type TestDatabase,
  type TestNats,
  writeKiloReplayer,
} from "@kilo-cloud/testing";
import { jetstreamManager } from "@nats-io/jetstream";
import { SignJWT } from "jose";
import { CallbackSender } from "../../../session/src/callbacks/callbacks.js";
import { buildGateway, loadGatewayConfig } from "../../src/index.js";
import type { PumpSettings } from "../../src/stream-ws/pump.js";

export const GIT_TOKEN = `ghs_${randomBytes(18).toString("hex")}`;
export const INTERNAL_KEY = `internal-${randomBytes(12).toString("hex")}`;
export const REPO = "acme/widgets";

export interface FullStackOptions {
  /** The real kilo binary, or a replayer of captured real output (volume tests). */
  kilo: "real" | { replay: string; lineDelayMs?: number };
  runner?: Partial<RunnerSettings>;
  /** More of sandbox-manager's environment, e.g. the local sandboxes' limits (SANDBOX_PIDS, SANDBOX_MEMORY_MB). */
  sandboxEnv?: Record<string, string>;
  queue?: { maxWaiting?: number; heartbeatStaleMs?: number };
  dispatcher?: { queueExpiryMs?: number; staleAfterMs?: number; sweepIntervalMs?: number };
  callbacks?: CallbackSenderLike;
  /**
   * A real CallbackSender (Standard Webhooks POSTs through safeFetch; retries by the outbox on
   * `retryScheduleMs`) whose outbound
   * policy allows http and loopback, so a receiver on 127.0.0.1 can be used; the session
   * service's callback-URL policy is relaxed the same way. Takes precedence over `callbacks`.
   */
  callbackSender?: { secret: string; timeoutMs?: number; retryScheduleMs?: number[] };
  keepaliveMs?: number;
  /** Extra gateway settings (the hosted backend's secret and the /stream ping as variables; pump knobs). */
  gateway?: { hostedAuthSecret?: string; streamPingMs?: number; streamSocket?: Partial<PumpSettings> };
  /**
   * The sandboxes' driver instead of bwrap sandboxes on this machine (the cluster tier passes
   * a KubernetesDriver); it is closed with the stack.
   */
  driver?: () => Promise<Driver>;
  /** Where the model and git servers listen (default 127.0.0.1), e.g. a cluster's bridge address. */
  serversHost?: string;
}

/**
 * The whole system on loopback, each service on its own port with its own NATS and
 * Postgres connections, as in production: gateway → session → sandbox-manager (bwrap
 * sandboxes) → JetStream → gateway. A scripted model server and a git server that checks
 * the token stand in for the outside world.
 */
export interface FullStack extends AsyncDisposable {
  gatewayUrl: string;
  nats: TestNats;
  model: ModelServer;
  git: GitServer;
  db: Pool;
  logs: string[];
  /** The JetStream stream that holds the events. */
  eventsStream: string;
  /**
   * Purges the stored events with an id (stream sequence) below `beforeId`, as retention
   * would; returns the id of the oldest event still retained.
   */
  purgeEvents(beforeId: bigint): Promise<bigint>;
  login(userId: string): Promise<string>;
  sessions(userId: string): Client<typeof SessionService>;
  stream(userId?: string): Client<typeof StreamService>;
}

export async function startFullStack(opts: FullStackOptions): Promise<FullStack> {
  const cleanup: Array<() => Promise<unknown>> = [];
  const logs: string[] = [];
  const logger = (service: string) =>
    createLogger({ service, level: "info", destination: { write: (l: string) => void logs.push(l) } });
  try {
    const nats = await startNats();
    cleanup.push(async () => nats[Symbol.asyncDispose]());
    const tag = randomBytes(4).toString("hex");
    const loopbackPolicy = { allowHttp: true, allowLoopback: true };
    const callbacks = opts.callbackSender
      ? new CallbackSender({
          secret: opts.callbackSender.secret,
          policy: loopbackPolicy,
          logger: logger("callbacks"),
          ...(opts.callbackSender.timeoutMs !== undefined
            ? { timeoutMs: opts.callbackSender.timeoutMs }
            : {}),
        })
      : opts.callbacks;
    const eventEnv = {
      NATS_URL: nats.url,
      EVENTS_STREAM: `KILO_EVENTS_${tag}`,
      EVENTS_SUBJECT_PREFIX: `ev${tag}`,
    };
    const eventsOpts = { stream: eventEnv.EVENTS_STREAM };
    // Each service its own connection, as in production; sandbox-manager's provisions.
    const connectEvents = async (config: EventLogConfig, name: string) => {
      const log = await connectEventLog(config, { name, logger: logger(name) });
      cleanup.push(() => log.close());
      return { events: log.events, eventsReady: log.ready };
    };

    const serversHost = opts.serversHost ? { host: opts.serversHost } : {};
    const model = await startModelServer({ apiKey: "sk-stack", ...serversHost });
    cleanup.push(() => model.close());
    const git = await startGitServer({
      auth: { username: "x-access-token", password: GIT_TOKEN },
      ...serversHost,
    });
    cleanup.push(() => git.close());
    await git.createBareRepo(REPO, { files: { "README.md": "# widgets\n" } });

    const root = await mkdtemp(join(tmpdir(), "kc-stack-"));
    cleanup.push(() => rm(root, { recursive: true, force: true }));
    // The sandboxes' own host users (the manager runs as root) must get through to theirs.
    await chmod(root, 0o711);
    const kiloBinary =
      opts.kilo === "real"
        ? packagedKiloBinary()
        : await writeKiloReplayer(join(root, "bin"), await capturedKiloStream(opts.kilo.replay), {
            lineDelayMs: opts.kilo.lineDelayMs ?? 0,
          });
    if (!kiloBinary) throw new Error("the kilo binary is not installed");

    const gatewayKeys = await generateServiceKeyPair();
    const sessionKeys = await generateServiceKeyPair();

    // sandbox-manager
    const sandboxConfig = loadSandboxManagerConfig({
      ...eventEnv,
      SANDBOX_DRIVER: "local",
      SANDBOX_ROOT: join(root, "sandboxes"),
      SANDBOX_ISOLATION: "bwrap",
      KILO_BIN: kiloBinary,
      KILO_PROVIDER: "openai-compatible",
      KILO_PROVIDER_BASE_URL: model.url,
      KILO_PROVIDER_API_KEY: "sk-stack",
      KILO_PROVIDER_ID: "mock",
      GITHUB_GIT_BASE_URL: git.url,
      GIT_ALLOW_INSECURE: "true",
      HEARTBEAT_INTERVAL_MS: "1000",
      SERVICE_TOKEN_PUBLIC_KEY: sessionKeys.publicKeyPem,
      // The fixtures listen on loopback: the git server is reached through the fence by an
      // explicit allow entry (as an operator would configure it), the model by the relay.
      SANDBOX_EGRESS_ALLOW: new URL(git.url).host,
      ...opts.sandboxEnv,
    });
    const driver = opts.driver
      ? await opts.driver()
      : await createDriver(sandboxConfig, logger("sandbox-manager"));
    cleanup.push(() => driver.close());
    const sandbox = await buildSandboxManager(sandboxConfig, {
      ...(await connectEvents(sandboxConfig.events, "sandbox-manager")),
      driver,
      logger: logger("sandbox-manager"),
      ...(opts.runner ? { settings: opts.runner } : {}),
    });
    cleanup.push(() => sandbox.close());
    const sandboxServer: RunningServer = await listen(sandbox.handler, { port: 0, host: "127.0.0.1" });
    cleanup.push(() => sandboxServer.close(100));

    // session
    const database: TestDatabase = await createTestDatabase();
    cleanup.push(() => database.drop());
    const pool = createPool(database.url, { max: 10 });
    cleanup.push(() => pool.end());
    const sessionLogger = logger("session");
    await migrateSessionSchema(pool, sessionLogger);
    const sessionConfig = loadSessionConfig({
      ...eventEnv,
      DATABASE_URL: database.url,
      SESSION_SEALING_KEYS: `k1:${randomBytes(32).toString("base64")}`,
      SERVICE_TOKEN_PUBLIC_KEY: gatewayKeys.publicKeyPem,
      SANDBOX_MANAGER_URL: sandboxServer.url,
      SESSION_SERVICE_TOKEN_PRIVATE_KEY: sessionKeys.privateKeyPem,
      ...(opts.queue?.maxWaiting !== undefined ? { QUEUE_MAX_WAITING: String(opts.queue.maxWaiting) } : {}),
      ...(opts.queue?.heartbeatStaleMs !== undefined
        ? { HEARTBEAT_STALE_MS: String(opts.queue.heartbeatStaleMs) }
        : {}),
      ...(opts.dispatcher?.queueExpiryMs !== undefined
        ? { QUEUE_EXPIRY_MS: String(opts.dispatcher.queueExpiryMs) }
        : {}),
      ...(opts.dispatcher?.staleAfterMs !== undefined
        ? { EXECUTION_STALE_MS: String(opts.dispatcher.staleAfterMs) }
        : {}),
      ...(opts.callbackSender?.retryScheduleMs
        ? { CALLBACK_RETRY_SCHEDULE: opts.callbackSender.retryScheduleMs.map((ms) => `${ms}ms`).join(",") }
        : {}),
    });
    const session = await buildSession(sessionConfig, {
      ...(await connectEvents(sessionConfig.executions?.events ?? sandboxConfig.events, "session")),
      pool,
      logger: sessionLogger,
      dispatcher: { sweepIntervalMs: opts.dispatcher?.sweepIntervalMs ?? 500 },
      ...(callbacks ? { callbacks } : {}),
      ...(opts.callbackSender ? { callbackPolicy: loopbackPolicy } : {}),
    });
    cleanup.push(() => session.close());
    const sessionServer = await listen(session.handler, { port: 0, host: "127.0.0.1" });
    cleanup.push(() => sessionServer.close(100));

    // gateway
    const hs256Secret = randomBytes(32).toString("hex");
    const gatewayConfig = loadGatewayConfig({
      ...eventEnv,
      AUTH_HS256_SECRET: hs256Secret,
      INTERNAL_API_SECRET: INTERNAL_KEY,
      SERVICE_TOKEN_PRIVATE_KEY: gatewayKeys.privateKeyPem,
      STREAM_TICKET_SECRET: randomBytes(32).toString("hex"),
      SESSION_SERVICE_URL: sessionServer.url,
      ...(opts.gateway?.hostedAuthSecret ? { HOSTED_AUTH_SECRET: opts.gateway.hostedAuthSecret } : {}),
      ...(opts.gateway?.streamPingMs ? { STREAM_PING_MS: String(opts.gateway.streamPingMs) } : {}),
    });
    const gatewayEvents = await connectEvents(gatewayConfig.events, "gateway");
    const gateway = await buildGateway(gatewayConfig, {
      ...gatewayEvents,
      logger: logger("gateway"),
      keepaliveMs: opts.keepaliveMs ?? 5_000,
      ...(opts.gateway?.streamSocket ? { streamSocket: opts.gateway.streamSocket } : {}),
    });
    cleanup.push(async () => gateway.close());
    const gatewayServer = await listen(gateway.handler, { port: 0, host: "127.0.0.1" });
    cleanup.push(() => gatewayServer.close(100));

    const tokens = new Map<string, string>();
    const headers =
      (h: () => Record<string, string>): Interceptor =>
      (next) =>
      async (req) => {
        for (const [k, v] of Object.entries(h())) req.header.set(k, v);
        return next(req);
      };
    const transport = (h: () => Record<string, string>) =>
      createConnectTransport({ baseUrl: gatewayServer.url, httpVersion: "1.1", interceptors: [headers(h)] });
    const bearer = (userId: string) => {
      const t = tokens.get(userId);
      if (!t) throw new Error(`login("${userId}") first`);
      return t;
    };
    return {
      gatewayUrl: gatewayServer.url,
      nats,
      model,
      git,
      db: pool,
      logs,
      eventsStream: eventsOpts.stream,
      async purgeEvents(beforeId) {
        const jsm = await jetstreamManager((gatewayEvents.events as JetStreamEventLog).nc);
        await jsm.streams.purge(eventsOpts.stream, { seq: Number(beforeId) });
        return BigInt((await jsm.streams.info(eventsOpts.stream)).state.first_seq);
      },
      async login(userId) {
        const t = await new SignJWT({})
          .setProtectedHeader({ alg: "HS256" })
          .setSubject(userId)
          .setIssuedAt()
          .setExpirationTime("1h")
          .sign(new TextEncoder().encode(hs256Secret));
        tokens.set(userId, t);
        return t;
      },
      sessions: (userId) =>
        createClient(
          SessionService,
          transport(() => ({
            authorization: `Bearer ${bearer(userId)}`,
            "x-internal-api-key": INTERNAL_KEY,
          })),
        ),
      stream: (userId) =>
        createClient(
          StreamService,
          transport(
            (): Record<string, string> => (userId ? { authorization: `Bearer ${bearer(userId)}` } : {}),
          ),
        ),
      async [Symbol.asyncDispose]() {
        for (const fn of cleanup.reverse()) await fn().catch(() => undefined);
      },
    };
  } catch (err) {
    for (const fn of cleanup.reverse()) await fn().catch(() => undefined);
    throw err;
  }
}
