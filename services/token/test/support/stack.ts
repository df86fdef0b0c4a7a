import { randomBytes } from "node:crypto";
import { type Client, createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import {
  createLogger,
  createPool,
  createServiceTokenSigner,
  generateServiceKeyPair,
  INTERNAL_API_KEY_HEADER,
  listen,
  type Pool,
  type RunningServer,
  type SealingKey,
  type ServiceTokenSigner,
} from "@kilo-cloud/common";
import { TokenService } from "@kilo-cloud/proto/token";
import {
  createTestDatabase,
  type GitHubApi,
  type GitHubInstallation,
  generateGitHubAppKey,
  startGitHubApi,
  type TestDatabase,
} from "@kilo-cloud/testing";
import { createTokenClient, type TokenClient } from "../../src/client.js";
import {
  buildToken,
  loadTokenConfig,
  migrateTokenSchema,
  TOKEN_SERVICE_CALLER_ISSUER,
} from "../../src/index.js";

export const APP_ID = "123456";
export const INTERNAL_API_KEY = `internal-${randomBytes(16).toString("hex")}`;

export interface TokenReplica extends AsyncDisposable {
  url: string;
  /** A client that signs as sandbox-manager. */
  client: TokenClient;
  close(): Promise<void>;
}

/**
 * The token service on loopback, on a fresh Postgres database, in front of the GitHub API
 * double; a clock the test moves; every log line (of every replica) kept for inspection.
 */
export interface TokenStack extends AsyncDisposable {
  url: string;
  github: GitHubApi;
  db: Pool;
  logs: string[];
  clock: { now: number };
  /** The GitHub App key (PKCS#1, as GitHub hands it out). */
  appKey: { privateKeyPem: string; publicKeyPem: string };
  /** sandbox-manager's service-token keys; the token service trusts the public half. */
  callerKeys: { privateKeyPem: string; publicKeyPem: string };
  sealingKeys: SealingKey[];
  /** Signs as sandbox-manager. */
  sign: ServiceTokenSigner;
  /** The client sandbox-manager uses. */
  client: TokenClient;
  /** A raw client: the test sets the headers of each call. */
  raw: Client<typeof TokenService>;
  /** Headers of an internal (operator/backend) call. */
  internal: Record<string, string>;
  register(
    installationId: number,
    accountLogin: string,
    owner: { orgId: string } | { userId: string },
  ): Promise<void>;
  /** Another replica on the same database (a restart, or a second pod), its variables changed by `env`. */
  replica(env?: Record<string, string>): Promise<TokenReplica>;
}

export async function startTokenStack(
  opts: { installations?: Record<string, GitHubInstallation> } = {},
): Promise<TokenStack> {
  const database: TestDatabase = await createTestDatabase("kc_token");
  const logs: string[] = [];
  const destination = { write: (line: string) => void logs.push(line) };
  const pool = createPool(database.url, { max: 10 });
  const clock = { now: Date.now() };
  const appKey = await generateGitHubAppKey();
  const callerKeys = await generateServiceKeyPair();
  const sealingKeys = [{ id: "k1", key: randomBytes(32) }];
  const github = await startGitHubApi({
    appId: APP_ID,
    publicKeyPem: appKey.publicKeyPem,
    installations: opts.installations ?? {},
    now: () => clock.now,
  });
  const logger = createLogger({ service: "token", level: "debug", destination });
  await migrateTokenSchema(pool, logger);
  const sign = await createServiceTokenSigner(callerKeys.privateKeyPem, TOKEN_SERVICE_CALLER_ISSUER);
  const servers: RunningServer[] = [];

  const baseEnv = {
    DATABASE_URL: database.url,
    TOKEN_SEALING_KEYS: sealingKeys.map((k) => `${k.id}:${k.key.toString("base64")}`).join(","),
    SERVICE_TOKEN_PUBLIC_KEY: callerKeys.publicKeyPem,
    INTERNAL_API_SECRET: INTERNAL_API_KEY,
    GITHUB_APP_ID: APP_ID,
    GITHUB_APP_PRIVATE_KEY: appKey.privateKeyPem,
    GITHUB_API_URL: github.url,
    GITHUB_TIMEOUT_MS: "5000",
  };
  const replica = async (env: Record<string, string> = {}): Promise<TokenReplica> => {
    const config = loadTokenConfig({ ...baseEnv, ...env });
    const app = await buildToken(config, { pool, logger, now: () => clock.now });
    const server = await listen(app.handler, { port: 0, host: "127.0.0.1" });
    servers.push(server);
    const close = () => server.close(100);
    return {
      url: server.url,
      client: createTokenClient({ baseUrl: server.url, sign }),
      close,
      [Symbol.asyncDispose]: close,
    };
  };

  const main = await replica();
  const raw = createClient(TokenService, createConnectTransport({ baseUrl: main.url, httpVersion: "1.1" }));
  const internal = { [INTERNAL_API_KEY_HEADER]: INTERNAL_API_KEY };
  const dispose = async () => {
    for (const s of servers) await s.close(100);
    await github.close();
    await pool.end();
    await database.drop();
  };
  return {
    url: main.url,
    github,
    db: pool,
    logs,
    clock,
    appKey,
    callerKeys,
    sealingKeys,
    sign,
    client: main.client,
    raw,
    internal,
    async register(installationId, accountLogin, owner) {
      await raw.registerInstallation(
        {
          installationId: BigInt(installationId),
          accountLogin,
          owner:
            "orgId" in owner
              ? { case: "kiloOrgId", value: owner.orgId }
              : { case: "kiloUserId", value: owner.userId },
        },
        { headers: internal },
      );
    },
    replica,
    [Symbol.asyncDispose]: dispose,
  };
}
