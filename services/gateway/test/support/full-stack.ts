import { randomBytes } from "node:crypto";
import { chmod, mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type Client, createClient, type Interceptor } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import {
  createLogger,
  createPool,
  egressPolicy,
  generateServiceKeyPair,
  JetStreamEventLog,
  listen,
  type Pool,
  parseEndpoints,
  type RunningServer,
} from "@kilo-cloud/common";
import { SessionService, StreamService } from "@kilo-cloud/proto";
import {
  createSandboxManager,
  DEFAULT_RUNNER_SETTINGS,
  LocalDriver,
  type LocalDriverOptions,
  packagedKiloBinary,
  type RunnerSettings,
} from "@kilo-cloud/sandbox-manager";
import { type CallbackSenderLike, createSessionService, migrateSessionSchema } from "@kilo-cloud/session";
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
import { createGateway } from "../../src/index.js";

export const GIT_TOKEN = `ghs_${randomBytes(18).toString("hex")}`;
export const INTERNAL_KEY = `internal-${randomBytes(12).toString("hex")}`;
export const REPO = "acme/widgets";

export interface FullStackOptions {
  /** The real kilo binary, or a replayer of captured real output (volume tests). */
  kilo: "real" | { replay: string; lineDelayMs?: number };
  runner?: Partial<RunnerSettings>;
  /** Overrides of the local driver's confinement (limits, egress policy). */
  driver?: Partial<Pick<LocalDriverOptions, "limits" | "egressPolicy">>;
  queue?: { maxWaiting?: number; heartbeatStaleMs?: number };
  dispatcher?: { queueExpiryMs?: number; staleAfterMs?: number; sweepIntervalMs?: number };
  callbacks?: CallbackSenderLike;
  /**
   * A real CallbackSender (signed POSTs with retries through safeFetch) whose outbound
   * policy allows http and loopback, so a receiver on 127.0.0.1 can be used; the session
   * service's callback-URL policy is relaxed the same way. Takes precedence over `callbacks`.
   */
  callbackSender?: { secret: string; baseDelayMs?: number; maxAttempts?: number; timeoutMs?: number };
  keepaliveMs?: number;
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
    const eventsOpts = { servers: nats.url, stream: `KILO_EVENTS_${tag}`, subjectPrefix: `ev${tag}` };
    const loopbackPolicy = { allowHttp: true, allowLoopback: true };
    const callbacks = opts.callbackSender
      ? new CallbackSender({
          secret: opts.callbackSender.secret,
          policy: loopbackPolicy,
          logger: logger("callbacks"),
          baseDelayMs: opts.callbackSender.baseDelayMs ?? 50,
          ...(opts.callbackSender.maxAttempts !== undefined
            ? { maxAttempts: opts.callbackSender.maxAttempts }
            : {}),
          ...(opts.callbackSender.timeoutMs !== undefined
            ? { timeoutMs: opts.callbackSender.timeoutMs }
            : {}),
        })
      : opts.callbacks;
    const connectEvents = async (name: string) => {
      const log = await JetStreamEventLog.connect({ ...eventsOpts, name });
      cleanup.push(() => log.close());
      return log;
    };

    const model = await startModelServer({ apiKey: "sk-stack" });
    cleanup.push(() => model.close());
    const git = await startGitServer({ auth: { username: "x-access-token", password: GIT_TOKEN } });
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
    const driver = await LocalDriver.create({
      rootDir: join(root, "sandboxes"),
      isolation: "bwrap",
      kiloBinary,
      // The fixtures listen on loopback: the git server is reached through the fence by an
      // explicit allow entry (as an operator would configure it), the model by the relay.
      egressPolicy: egressPolicy({ allow: parseEndpoints(new URL(git.url).host) }),
      providerRelay: { baseUrl: model.url, apiKey: "sk-stack" },
      ...opts.driver,
    });
    cleanup.push(() => driver.close());
    const sandbox = await createSandboxManager({
      driver,
      events: await connectEvents("sandbox-manager"),
      logger: logger("sandbox-manager"),
      serviceTokenPublicKey: sessionKeys.publicKeyPem,
      settings: {
        ...DEFAULT_RUNNER_SETTINGS,
        provider: { kind: "openai-compatible", baseUrl: model.url, apiKey: "sk-stack", id: "mock" },
        githubBaseUrl: git.url,
        allowInsecureGit: true,
        heartbeatIntervalMs: 1_000,
        ...opts.runner,
      },
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
    const session = await createSessionService({
      pool,
      logger: sessionLogger,
      sealingKeys: [{ id: "k1", key: randomBytes(32) }],
      serviceTokenPublicKey: gatewayKeys.publicKeyPem,
      executions: {
        sandboxUrl: sandboxServer.url,
        serviceTokenPrivateKey: sessionKeys.privateKeyPem,
        events: await connectEvents("session"),
        dispatcher: { sweepIntervalMs: 500, ...opts.dispatcher },
        queue: opts.queue ?? {},
        ...(callbacks ? { callbacks } : {}),
        ...(opts.callbackSender ? { callbackPolicy: loopbackPolicy } : {}),
      },
    });
    cleanup.push(() => session.close());
    const sessionServer = await listen(session.handler, { port: 0, host: "127.0.0.1" });
    cleanup.push(() => sessionServer.close(100));

    // gateway
    const hs256Secret = randomBytes(32).toString("hex");
    const gatewayEvents = await connectEvents("gateway");
    const gateway = await createGateway({
      logger: logger("gateway"),
      userTokens: { hs256Secret },
      internalApiKey: INTERNAL_KEY,
      serviceTokenPrivateKey: gatewayKeys.privateKeyPem,
      streamTicketSecret: randomBytes(32).toString("hex"),
      sessionServiceUrl: sessionServer.url,
      events: gatewayEvents,
      keepaliveMs: opts.keepaliveMs ?? 5_000,
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
        const jsm = await jetstreamManager(gatewayEvents.nc);
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
