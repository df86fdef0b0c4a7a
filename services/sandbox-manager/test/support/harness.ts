import { randomBytes } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { type Client, createClient, type Interceptor } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import {
  connectEventLog,
  createLogger,
  createServiceTokenSigner,
  generateServiceKeyPair,
  type JetStreamEventLog,
  listen,
  type RunningServer,
  TERMINAL_EVENT_TYPES,
} from "@kilo-cloud/common";
import type { Event } from "@kilo-cloud/proto";
import { SandboxService, type StartExecutionRequestSchema } from "@kilo-cloud/proto/sandbox";
import {
  type GitServer,
  generateSecretKeyPair,
  type ModelServer,
  startGitServer,
  startModelServer,
  startNats,
  type TestNats,
} from "@kilo-cloud/testing";
import { buildSandboxManager, createDriver } from "../../src/build.js";
import { loadSandboxManagerConfig } from "../../src/config.js";
import type { RepositoryTokens, RunnerSettings } from "../../src/execution/runner.js";
import { packagedKiloBinary } from "../../src/kilo/command.js";
import {
  SANDBOX_SERVICE_AUDIENCE,
  type SandboxManagerApp,
  SESSION_SERVICE_ISSUER,
} from "../../src/server.js";

// GitHub takes installation tokens as the password of user x-access-token.
export const GIT_USER = "x-access-token";
export const GIT_TOKEN = `gho_${randomBytes(12).toString("hex")}`;
export const MODEL_KEY = `sk-${randomBytes(8).toString("hex")}`;

export type StartInit = Exclude<MessageInitShape<typeof StartExecutionRequestSchema>, { $typeName: string }>;

/**
 * sandbox-manager as in production (Connect on a loopback port, real bwrap sandboxes, the
 * real kilo binary, events on a real JetStream), with a scripted model server and a git
 * smart-HTTP server that checks credentials.
 */
export interface Harness extends AsyncDisposable {
  app: SandboxManagerApp;
  client: Client<typeof SandboxService>;
  /** A client whose service token always names `userId`, whatever the request says. */
  clientFor(userId: string): Client<typeof SandboxService>;
  events: JetStreamEventLog;
  model: ModelServer;
  git: GitServer;
  nats: TestNats;
  rootDir: string;
  logs: string[];
  secretKeys: { publicKeyPem: string; privateKeyPem: string };
  /** Starts an execution as the session service would, for `userId`. */
  start(req: StartInit): Promise<void>;
  /** Every event of the execution, up to and including its terminal event. */
  untilEnd(sessionId: string, executionId: string, timeoutMs?: number): Promise<Event[]>;
}

export interface HarnessOptions {
  settings?: Partial<RunnerSettings>;
  /** How the git server checks credentials (default: user x-access-token with GIT_TOKEN). */
  gitAuth?: Parameters<typeof startGitServer>[0] extends infer O
    ? O extends { auth?: infer A }
      ? A
      : never
    : never;
  tokens?: RepositoryTokens;
}

export async function startHarness(opts: HarnessOptions = {}): Promise<Harness> {
  const kilo = packagedKiloBinary();
  if (!kilo) throw new Error("the kilo binary (@kilocode/cli-linux-x64) is not installed");
  const nats = await startNats();
  const tag = randomBytes(4).toString("hex");
  const model = await startModelServer({ apiKey: MODEL_KEY });
  const git = await startGitServer({ auth: opts.gitAuth ?? { username: GIT_USER, password: GIT_TOKEN } });
  const rootDir = await mkdtemp(join(tmpdir(), "kc-sbx-"));
  const logs: string[] = [];
  const logger = createLogger({
    service: "sandbox-manager",
    level: "debug",
    destination: { write: (l: string) => void logs.push(l) },
  });
  const keys = await generateServiceKeyPair();
  const secretKeys = generateSecretKeyPair();
  const config = loadSandboxManagerConfig({
    NATS_URL: nats.url,
    EVENTS_STREAM: `EV_${tag}`,
    EVENTS_SUBJECT_PREFIX: `ev${tag}`,
    SANDBOX_DRIVER: "local",
    SANDBOX_ROOT: rootDir,
    SANDBOX_ISOLATION: "bwrap",
    KILO_BIN: kilo,
    KILO_PROVIDER: "openai-compatible",
    KILO_PROVIDER_BASE_URL: model.url,
    KILO_PROVIDER_API_KEY: MODEL_KEY,
    KILO_PROVIDER_ID: "mock",
    AGENT_ENV_VARS_PRIVATE_KEY: secretKeys.privateKeyPem,
    GITHUB_GIT_BASE_URL: git.url,
    GIT_ALLOW_INSECURE: "true",
    HEARTBEAT_INTERVAL_MS: "2000",
    SERVICE_TOKEN_PUBLIC_KEY: keys.publicKeyPem,
    // The git fixture listens on loopback: reached through the fence by an explicit allow
    // entry, as an operator would configure it. The model server is reached by the relay.
    SANDBOX_EGRESS_ALLOW: new URL(git.url).host,
  });
  const log = await connectEventLog(config.events, { name: "sandbox-manager", logger });
  const events = log.events as JetStreamEventLog;
  const driver = await createDriver(config, logger);
  const app = await buildSandboxManager(config, {
    driver,
    events,
    eventsReady: log.ready,
    logger,
    ...(opts.tokens ? { tokens: opts.tokens } : {}),
    ...(opts.settings ? { settings: opts.settings } : {}),
  });
  const server: RunningServer = await listen(app.handler, { port: 0, host: "127.0.0.1" });
  const sign = await createServiceTokenSigner(keys.privateKeyPem, SESSION_SERVICE_ISSUER);
  const authAs =
    (fixed?: string): Interceptor =>
    (next) =>
    async (req) => {
      const userId =
        fixed ?? (req.message as { sandbox?: { userId?: string } }).sandbox?.userId ?? "anonymous";
      req.header.set(
        "authorization",
        `Bearer ${await sign(SANDBOX_SERVICE_AUDIENCE, { userId, internal: true })}`,
      );
      return next(req);
    };
  const clientFor = (userId?: string) =>
    createClient(
      SandboxService,
      createConnectTransport({ baseUrl: server.url, httpVersion: "2", interceptors: [authAs(userId)] }),
    );
  const client = clientFor();
  return {
    app,
    client,
    clientFor,
    events,
    model,
    git,
    nats,
    rootDir,
    logs,
    secretKeys,
    async start(req) {
      await client.startExecution(req);
    },
    async untilEnd(sessionId, executionId, timeoutMs = 120_000) {
      const abort = new AbortController();
      const timer = setTimeout(() => abort.abort(), timeoutMs);
      const out: Event[] = [];
      try {
        for await (const e of events.read(sessionId, { signal: abort.signal })) {
          if (e.executionId !== executionId) continue;
          out.push(e);
          if (TERMINAL_EVENT_TYPES.includes(e.payload.case as never)) return out;
        }
      } finally {
        clearTimeout(timer);
      }
      throw new Error(
        `no terminal event for ${executionId} within ${timeoutMs} ms; got ${out.map((e) => e.payload.case).join(",")}`,
      );
    },
    async [Symbol.asyncDispose]() {
      await app.close();
      await server.close(100);
      await events.close();
      await driver.close();
      await model.close();
      await git.close();
      await nats[Symbol.asyncDispose]();
      await rm(rootDir, { recursive: true, force: true });
    },
  };
}

/** The text of an event, for assertions. */
export function describeEvent(e: Event): string {
  switch (e.payload.case) {
    case "status":
      return `status:${e.payload.value.step}:${e.payload.value.message}`;
    case "error":
      return `error:${e.payload.value.error}`;
    case "output":
      return `output:${e.payload.value.content}`;
    case "kilocode":
      return `kilocode:${String((e.payload.value.payload as { type?: string } | undefined)?.type)}`;
    default:
      return String(e.payload.case);
  }
}
