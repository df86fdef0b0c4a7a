import { generateKeyPairSync, randomBytes } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import {
  createLogger,
  createPool,
  createServiceTokenSigner,
  type EventLog,
  generateServiceKeyPair,
  JetStreamEventLog,
  type Logger,
  listen,
  type OutboundPolicy,
  type Pool,
  PostgresEventLog,
  parseSealingKeys,
  type RunningServer,
  startEmbeddedPostgres,
} from "@kilo-cloud/common";
import { createGateway } from "@kilo-cloud/gateway";
import {
  createSandboxManager,
  DEFAULT_RUNNER_SETTINGS,
  type KiloProvider,
  LocalDriver,
  packagedKiloBinary,
  type RepositoryTokens,
} from "@kilo-cloud/sandbox-manager";
import { CallbackSender, createSessionService, migrateSessionSchema } from "@kilo-cloud/session";
import { createTokenService, migrateTokenSchema } from "@kilo-cloud/token";
import { createTokenClient, TOKEN_SERVICE_CALLER_ISSUER } from "@kilo-cloud/token/client";
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

export async function startLocalSystem(opts: LocalSystemOptions): Promise<LocalSystem> {
  const logger = opts.logger ?? createLogger({ service: "kilo-cloud" });
  const cleanup: Array<() => Promise<unknown>> = [];
  const close = async () => {
    for (const fn of cleanup.reverse())
      await fn().catch((err: unknown) => logger.warn({ err: String(err) }, "shutdown step failed"));
    cleanup.length = 0;
  };
  try {
    mkdirSync(opts.dataDir, { recursive: true, mode: 0o700 });
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
    const pool: Pool = createPool(databaseUrl, {
      max: embedded ? 16 : 20,
      applicationName: "kilo-cloud-local",
    });
    cleanup.push(() => pool.end());
    await migrateSessionSchema(pool, logger);

    // The event log: JetStream when NATS_URL is given, else a table of that Postgres.
    let events: EventLog;
    if (opts.natsUrl) {
      events = await JetStreamEventLog.connect({ servers: opts.natsUrl, name: "kilo-cloud-local" });
    } else {
      events = await PostgresEventLog.connect({ pool, notifications: embedded ? "poll" : "listen", logger });
    }
    cleanup.push(() => events.close());

    // token (optional) → sandbox-manager → session → gateway
    let tokens: RepositoryTokens | undefined;
    if (opts.github) {
      await migrateTokenSchema(pool, logger);
      const token = await createTokenService({
        pool,
        logger: logger.child({ service: "token" }),
        sealingKeys: parseSealingKeys(secrets.tokenSealingKeys),
        serviceTokenPublicKey: secrets.sandboxKeys.publicKeyPem,
        internalApiKey: secrets.internalApiKey,
        github: { appId: opts.github.appId, privateKey: opts.github.privateKey, apiUrl: opts.github.apiUrl },
      });
      const tokenServer = await listen(token.handler, { port: 0, host: "127.0.0.1" });
      cleanup.push(() => tokenServer.close(1_000));
      tokens = createTokenClient({
        baseUrl: tokenServer.url,
        sign: await createServiceTokenSigner(secrets.sandboxKeys.privateKeyPem, TOKEN_SERVICE_CALLER_ISSUER),
      });
    }

    const kiloBinary = opts.kiloBinary ?? packagedKiloBinary();
    if (!kiloBinary)
      throw new Error("no kilo binary: install @kilocode/cli-linux-x64 (npm install) or set KILO_BIN");
    const driver = await LocalDriver.create({
      rootDir: join(opts.dataDir, "sandboxes"),
      isolation: opts.isolation,
      kiloBinary,
      logger,
    });
    cleanup.push(() => driver.close());
    const sandbox = await createSandboxManager({
      driver,
      events,
      logger: logger.child({ service: "sandbox-manager" }),
      serviceTokenPublicKey: secrets.sessionKeys.publicKeyPem,
      tokens,
      settings: {
        ...DEFAULT_RUNNER_SETTINGS,
        provider: opts.provider,
        secretsPrivateKey: secrets.agentEnvVarsKeys?.privateKeyPem,
        allowInsecureGit: opts.allowInsecureGit,
      },
    });
    cleanup.push(() => sandbox.close());
    const sandboxServer: RunningServer = await listen(sandbox.handler, { port: 0, host: "127.0.0.1" });
    cleanup.push(() => sandboxServer.close(1_000));

    const sessionLogger = logger.child({ service: "session" });
    const session = await createSessionService({
      pool,
      logger: sessionLogger,
      sealingKeys: parseSealingKeys(secrets.sessionSealingKeys),
      serviceTokenPublicKey: secrets.gatewayKeys.publicKeyPem,
      executions: {
        sandboxUrl: sandboxServer.url,
        serviceTokenPrivateKey: secrets.sessionKeys.privateKeyPem,
        events,
        callbackPolicy: opts.callbackPolicy,
        allowInsecureGit: opts.allowInsecureGit,
        outboundAllowHosts: opts.outboundAllowHosts ?? [],
        callbacks: new CallbackSender({
          secret: secrets.callbackSecret,
          policy: opts.callbackPolicy,
          logger: sessionLogger,
        }),
      },
    });
    cleanup.push(() => session.close());
    const sessionServer = await listen(session.handler, { port: 0, host: "127.0.0.1" });
    cleanup.push(() => sessionServer.close(1_000));

    const gateway = await createGateway({
      logger: logger.child({ service: "gateway" }),
      userTokens: { hs256Secret: secrets.hs256Secret },
      internalApiKey: secrets.internalApiKey,
      serviceTokenPrivateKey: secrets.gatewayKeys.privateKeyPem,
      streamTicketSecret: secrets.streamTicketSecret,
      sessionServiceUrl: sessionServer.url,
      events,
    });
    cleanup.push(async () => gateway.close());
    const gatewayServer = await listen(gateway.handler, { port: opts.port, host: opts.host });
    cleanup.push(() => gatewayServer.close(2_000));

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
      `local sandboxes (${opts.isolation === "bwrap" ? "bubblewrap" : "NO isolation"})`,
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
