import { generateKeyPairSync, randomBytes } from "node:crypto";
import { chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import {
  connectEventLog,
  createLogger,
  createPool,
  type Env,
  generateServiceKeyPair,
  type Logger,
  listen,
  type NodeRequest,
  type NodeResponse,
  type OutboundPolicy,
  type Pool,
  startEmbeddedPostgres,
} from "@kilo-cloud/common";
import { buildGateway, loadGatewayConfig } from "@kilo-cloud/gateway";
import {
  buildSandboxManager,
  createDriver,
  type Driver,
  type KiloProvider,
  LocalDriver,
  type LocalSandboxSettings,
  loadSandboxManagerConfig,
  packagedKiloBinary,
} from "@kilo-cloud/sandbox-manager";
import { buildSession, loadSessionConfig, migrateSessionSchema } from "@kilo-cloud/session";
import { buildToken, loadTokenConfig, migrateTokenSchema } from "@kilo-cloud/token";
import { SignJWT } from "jose";

/**
 * The whole system in one process, for a laptop, a demo or a test: the four services (each
 * on its own loopback port, the gateway on the public one), PostgreSQL (embedded PGlite
 * unless a DATABASE_URL is given), the event log (on that same Postgres unless a NATS_URL is
 * given), and the local sandbox driver. Secrets it is not given are generated once and kept
 * in the data directory, so sealed data and tokens survive a restart.
 */
export interface LocalSystemOptions {
  port: number;
  host: string;
  dataDir: string;
  databaseUrl?: string | undefined;
  natsUrl?: string | undefined;
  provider: KiloProvider;
  kiloBinary?: string | undefined;
  isolation: "bwrap" | "none";
  /** Allow http:// and loopback git remotes (the offline demo's local repository). */
  allowInsecureGit: boolean;
  /** Hosts of git/MCP URLs exempt from the address policy at prepare (the demo's local git). */
  outboundAllowHosts?: readonly string[] | undefined;
  /** Where completion callbacks may go. */
  callbackPolicy: OutboundPolicy;
  /** The GitHub App for `githubRepo` sessions; without it, the session's githubToken is used. */
  github?: { appId: string; privateKey: string; apiUrl?: string | undefined } | undefined;
  /** User id of the bearer token written for the CLI. */
  devUser: string;
  /** The caller's environment: every service reads its documented variables from it. */
  env?: Env | undefined;
  logger?: Logger;
}

export interface LocalSystem {
  url: string;
  mode: string;
  /** A bearer token for `devUser`, and the internal API key (for PrepareSession). */
  token: string;
  internalKey: string;
  cliConfigPath: string;
  /** The RSA public key (PEM) a backend encrypts `encryptedSecrets` with. */
  envVarsPublicKeyPath: string;
  close(): Promise<void>;
}

type RequestHandler = (req: NodeRequest, res: NodeResponse) => void;

interface LocalSecrets {
  sessionSealingKeys: string;
  tokenSealingKeys: string;
  hs256Secret: string;
  internalApiKey: string;
  streamTicketSecret: string;
  callbackSecret: string;
  gatewayKeys: { privateKeyPem: string; publicKeyPem: string };
  sessionKeys: { privateKeyPem: string; publicKeyPem: string };
  sandboxKeys: { privateKeyPem: string; publicKeyPem: string };
  /** RSA key pair of encrypted secrets: backends seal with the public key (absent in older files). */
  agentEnvVarsKeys?: { privateKeyPem: string; publicKeyPem: string };
}

/** The public key backends encrypt `encryptedSecrets` with, next to secrets.json. */
export const AGENT_ENV_VARS_PUBLIC_KEY_FILE = "agent-env-vars-public-key.pem";

function rsaKeyPair(): { privateKeyPem: string; publicKeyPem: string } {
  const { privateKey, publicKey } = generateKeyPairSync("rsa", {
    modulusLength: 2048,
    privateKeyEncoding: { type: "pkcs8", format: "pem" },
    publicKeyEncoding: { type: "spki", format: "pem" },
  });
  return { privateKeyPem: privateKey, publicKeyPem: publicKey };
}

async function localSecrets(dataDir: string): Promise<LocalSecrets> {
  const file = join(dataDir, "secrets.json");
  if (existsSync(file)) {
    const kept = JSON.parse(readFileSync(file, "utf8")) as LocalSecrets;
    if (kept.agentEnvVarsKeys) return kept;
    // A data directory from before encrypted secrets were wired: add their key once.
    const upgraded = { ...kept, agentEnvVarsKeys: rsaKeyPair() };
    writeFileSync(file, JSON.stringify(upgraded, null, 2), { mode: 0o600 });
    return upgraded;
  }
  const secrets: LocalSecrets = {
    sessionSealingKeys: `local1:${randomBytes(32).toString("base64")}`,
    tokenSealingKeys: `local1:${randomBytes(32).toString("base64")}`,
    hs256Secret: randomBytes(32).toString("hex"),
    internalApiKey: randomBytes(24).toString("hex"),
    streamTicketSecret: randomBytes(32).toString("hex"),
    callbackSecret: randomBytes(32).toString("hex"),
    gatewayKeys: await generateServiceKeyPair(),
    sessionKeys: await generateServiceKeyPair(),
    sandboxKeys: await generateServiceKeyPair(),
    agentEnvVarsKeys: rsaKeyPair(),
  };
  writeFileSync(file, JSON.stringify(secrets, null, 2), { mode: 0o600 });
  return secrets;
}

/**
 * Each service's environment, as its Deployment would get it: the caller's variables
 * (QUEUE_*, EXECUTION_*, …) with the one-process wiring on top (loopback ports, the shared
 * secrets, the other services' URLs). Every service then reads it with its own loader.
 */
function serviceEnvs(
  opts: LocalSystemOptions,
  secrets: LocalSecrets,
  databaseUrl: string,
  embedded: boolean,
) {
  const base: Record<string, string | undefined> = {
    ...opts.env,
    HOST: "127.0.0.1",
    PORT: "0",
    ...(opts.natsUrl
      ? { EVENTS_BACKEND: "nats", NATS_URL: opts.natsUrl }
      : {
          EVENTS_BACKEND: "postgres",
          EVENTS_DATABASE_URL: databaseUrl,
          EVENTS_NOTIFICATIONS: embedded ? "poll" : "listen",
        }),
  };
  const provider: Record<string, string | undefined> =
    opts.provider.kind === "kilo"
      ? { KILO_PROVIDER: "kilo" }
      : {
          KILO_PROVIDER: "openai-compatible",
          KILO_PROVIDER_BASE_URL: opts.provider.baseUrl,
          KILO_PROVIDER_API_KEY: opts.provider.apiKey,
          KILO_PROVIDER_ID: opts.provider.id,
        };
  const policy = opts.callbackPolicy;
  return {
    token: opts.github
      ? {
          ...base,
          DATABASE_URL: databaseUrl,
          TOKEN_SEALING_KEYS: secrets.tokenSealingKeys,
          INTERNAL_API_SECRET: secrets.internalApiKey,
          SERVICE_TOKEN_PUBLIC_KEY: secrets.sandboxKeys.publicKeyPem,
          GITHUB_APP_ID: opts.github.appId,
          GITHUB_APP_PRIVATE_KEY: opts.github.privateKey,
          ...(opts.github.apiUrl ? { GITHUB_API_URL: opts.github.apiUrl } : {}),
        }
      : undefined,
    sandbox: (tokenUrl: string | undefined) => ({
      ...base,
      ...provider,
      SANDBOX_DRIVER: "local",
      SANDBOX_ROOT: join(opts.dataDir, "sandboxes"),
      SANDBOX_ISOLATION: opts.isolation,
      KILO_BIN: opts.kiloBinary ?? packagedKiloBinary(),
      GIT_ALLOW_INSECURE: String(opts.allowInsecureGit),
      SERVICE_TOKEN_PUBLIC_KEY: secrets.sessionKeys.publicKeyPem,
      TOKEN_SERVICE_URL: tokenUrl,
      SANDBOX_SERVICE_TOKEN_PRIVATE_KEY: tokenUrl ? secrets.sandboxKeys.privateKeyPem : undefined,
      AGENT_ENV_VARS_PRIVATE_KEY: secrets.agentEnvVarsKeys?.privateKeyPem,
    }),
    session: (sandboxUrl: string) => ({
      ...base,
      DATABASE_URL: databaseUrl,
      SESSION_SEALING_KEYS: secrets.sessionSealingKeys,
      SERVICE_TOKEN_PUBLIC_KEY: secrets.gatewayKeys.publicKeyPem,
      SANDBOX_MANAGER_URL: sandboxUrl,
      SESSION_SERVICE_TOKEN_PRIVATE_KEY: secrets.sessionKeys.privateKeyPem,
      CALLBACK_SIGNING_SECRET: secrets.callbackSecret,
      GIT_ALLOW_INSECURE: String(opts.allowInsecureGit),
      CALLBACK_ALLOW_HTTP: String(policy.allowHttp),
      CALLBACK_ALLOW_LOOPBACK: String(policy.allowLoopback),
      CALLBACK_ALLOW_PRIVATE: String(policy.allowPrivate ?? false),
      ...(opts.outboundAllowHosts ? { SESSION_OUTBOUND_ALLOW_HOSTS: opts.outboundAllowHosts.join(",") } : {}),
    }),
    gateway: (sessionUrl: string) => ({
      ...base,
      HOST: opts.host,
      PORT: String(opts.port),
      SESSION_SERVICE_URL: sessionUrl,
      AUTH_HS256_SECRET: secrets.hs256Secret,
      AUTH_JWKS_URL: undefined,
      INTERNAL_API_SECRET: secrets.internalApiKey,
      SERVICE_TOKEN_PRIVATE_KEY: secrets.gatewayKeys.privateKeyPem,
      STREAM_TICKET_SECRET: secrets.streamTicketSecret,
    }),
  };
}

export async function startLocalSystem(opts: LocalSystemOptions): Promise<LocalSystem> {
  const logger = opts.logger ?? createLogger({ service: "kilo-cloud" });
  const cleanup: Array<() => Promise<unknown>> = [];
  const close = async () => {
    for (const fn of cleanup.reverse())
      await fn().catch((err: unknown) => logger.warn({ err: String(err) }, "shutdown step failed"));
    cleanup.length = 0;
  };
  const serve = async (handler: RequestHandler, config: { port: number; host: string }, graceMs = 1_000) => {
    const server = await listen(handler, { port: config.port, host: config.host });
    cleanup.push(() => server.close(graceMs));
    return server;
  };
  try {
    mkdirSync(opts.dataDir, { recursive: true, mode: 0o700 });
    // As root, sandboxes run as host users of their own that must get through to their
    // directories below it: others may enter (x) but not list it; its files stay 0600.
    if (process.getuid?.() === 0) chmodSync(opts.dataDir, 0o711);
    const secrets = await localSecrets(opts.dataDir);
    const envVarsPublicKeyPath = join(opts.dataDir, AGENT_ENV_VARS_PUBLIC_KEY_FILE);
    writeFileSync(envVarsPublicKeyPath, secrets.agentEnvVarsKeys?.publicKeyPem ?? "", { mode: 0o644 });

    // PostgreSQL: the given one, or PGlite in the data directory.
    let databaseUrl = opts.databaseUrl;
    let embedded = false;
    if (!databaseUrl) {
      // A Unix socket in a directory only this user can enter, not a TCP port: PGlite
      // accepts any credentials, so nothing but the services may reach it.
      const pg = await startEmbeddedPostgres({
        dataDir: join(opts.dataDir, "postgres"),
        socketDir: join(opts.dataDir, "run"),
        logger,
      });
      cleanup.push(() => pg.close());
      databaseUrl = pg.url;
      embedded = true;
    }
    // One pool and one event log for the four services. Embedded, ONE connection: PGlite
    // runs one transaction at a time, and pglite-socket would interleave the messages of
    // concurrent connections inside a transaction; one connection cannot interleave.
    const pool: Pool = createPool(databaseUrl, {
      max: embedded ? 1 : 20,
      applicationName: "kilo-cloud-local",
    });
    cleanup.push(() => pool.end());
    await migrateSessionSchema(pool, logger);
    const envs = serviceEnvs(opts, secrets, databaseUrl, embedded);

    // token (optional) → sandbox-manager → session → gateway
    let tokenUrl: string | undefined;
    if (envs.token) {
      const config = loadTokenConfig(envs.token);
      await migrateTokenSchema(pool, logger);
      const token = await buildToken(config, { pool, logger: logger.child({ service: "token" }) });
      tokenUrl = (await serve(token.handler, config)).url;
    }

    const sandboxConfig = loadSandboxManagerConfig(envs.sandbox(tokenUrl));
    if (!sandboxConfig.kiloBinary)
      throw new Error("no kilo binary: install @kilocode/cli-linux-x64 (npm install) or set KILO_BIN");
    // The event log, provisioned with sandbox-manager's settings: it owns the stream.
    const log = await connectEventLog(sandboxConfig.events, { name: "kilo-cloud-local", logger, pool });
    cleanup.push(() => log.close());
    const events = { events: log.events, eventsReady: log.ready };
    const driver = await createDriver(sandboxConfig, logger);
    cleanup.push(() => driver.close());
    const sandboxLogger = logger.child({ service: "sandbox-manager" });
    const sandbox = await buildSandboxManager(sandboxConfig, { ...events, driver, logger: sandboxLogger });
    cleanup.push(() => sandbox.close());
    const sandboxServer = await serve(sandbox.handler, sandboxConfig);

    const sessionConfig = loadSessionConfig(envs.session(sandboxServer.url));
    const session = await buildSession(sessionConfig, {
      ...events,
      pool,
      logger: logger.child({ service: "session" }),
    });
    cleanup.push(() => session.close());
    const sessionServer = await serve(session.handler, sessionConfig);

    const gatewayConfig = loadGatewayConfig(envs.gateway(sessionServer.url));
    const gateway = await buildGateway(gatewayConfig, {
      ...events,
      logger: logger.child({ service: "gateway" }),
    });
    cleanup.push(async () => gateway.close());
    const gatewayServer = await serve(gateway.handler, gatewayConfig, 2_000);

    const token = await new SignJWT({})
      .setProtectedHeader({ alg: "HS256" })
      .setSubject(opts.devUser)
      .setIssuedAt()
      .setExpirationTime("24h") // the gateway accepts at most 24 h; each start writes a new one
      .sign(new TextEncoder().encode(secrets.hs256Secret));
    const url = gatewayServer.url.replace("0.0.0.0", "127.0.0.1");
    const cliConfigPath = join(opts.dataDir, "cli.json");
    writeFileSync(
      cliConfigPath,
      JSON.stringify({ url, token, internalKey: secrets.internalApiKey }, null, 2),
      { mode: 0o600 },
    );
    const mode = [
      embedded ? "embedded PostgreSQL (PGlite)" : "PostgreSQL",
      opts.natsUrl ? "NATS JetStream events" : "events on PostgreSQL",
      `local sandboxes (${sandboxMode(sandboxConfig.isolation, sandboxConfig.localSandbox, driver)})`,
      opts.github ? "GitHub App tokens" : "no GitHub App",
    ].join(", ");
    return {
      url,
      mode,
      token,
      internalKey: secrets.internalApiKey,
      cliConfigPath,
      envVarsPublicKeyPath,
      close,
    };
  } catch (err) {
    await close();
    throw err;
  }
}

/** How the sandboxes are confined, for the start-up line. */
function sandboxMode(isolation: "bwrap" | "none", s: LocalSandboxSettings, driver: Driver): string {
  if (isolation === "none") return "NO isolation";
  const network = s.network === "fenced" ? "network fenced" : "HOST network";
  const limits = driver instanceof LocalDriver ? `, limits: ${driver.limitsMechanism}` : "";
  return `bubblewrap, ${network}${limits}`;
}
