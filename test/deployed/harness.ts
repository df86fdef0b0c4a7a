import { randomBytes } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type Client, createClient, type Interceptor } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { generateServiceKeyPair, INTERNAL_API_KEY_HEADER } from "@kilo-cloud/common";
import { SessionService, StreamService } from "@kilo-cloud/proto";
import { TokenService } from "@kilo-cloud/proto/token";
import {
  createTestDatabase,
  freePort,
  type GitHubApi,
  type GitServer,
  generateGitHubAppKey,
  generateSecretKeyPair,
  type ModelScript,
  type ModelServer,
  startGitHubApi,
  startGitServer,
  startModelServer,
  startNats,
  type TestDatabase,
  type TestNats,
} from "@kilo-cloud/testing";
import { SignJWT } from "jose";
import {
  componentName,
  deploymentEnvs,
  renderForTest,
  SERVICES,
  type ServiceEnv,
  type ServiceName,
} from "./chart-env.js";
import { type ServiceProcess, serviceProcess } from "./service-process.js";

export const GIT_TOKEN = `ghs_${randomBytes(18).toString("hex")}`;
const GITHUB_APP_ID = 424242;
/** The App installation on account `acme` that the GitHub double knows. */
export const INSTALLATION_ID = 77;
export const REPO_NAME = "acme/widgets";
const MODEL_KEY = `sk-${randomBytes(8).toString("hex")}`;

/**
 * The system as the Helm chart deploys it, on loopback: the chart rendered with `helm
 * template` (bundled NATS and PostgreSQL replaced by a real nats-server and a real
 * PostgreSQL database), each Deployment's environment taken from it (ConfigMap values and
 * Secret references filled with generated secrets, service DNS names mapped to loopback
 * ports), and the four services started as separate processes from their main.ts.
 *
 * Deviations from a cluster, all in `loopbackOverrides`: HOST/PORT (loopback ports),
 * sandbox-manager's driver (local bubblewrap sandboxes instead of pods; the K8S_* settings
 * dropped), the model and git hosts (a scripted model server, a git server on loopback).
 */
export interface DeployedSystem extends AsyncDisposable {
  gatewayUrl: string;
  services: Record<ServiceName, ServiceProcess>;
  /** Generated Secret values, by key of the chart's Secret. */
  secrets: Record<string, string>;
  nats: TestNats;
  database: TestDatabase;
  model: ModelServer;
  git: GitServer;
  github: GitHubApi;
  /** Registers the App installation of account `acme` for a user (RegisterInstallation on the token service, as an operator). */
  registerInstallation(owner: { userId: string } | { orgId: string }): Promise<void>;
  /** Starts the services not running (sandbox-manager and token first: they own the stream / have no deps). */
  startAll(): Promise<void>;
  /** A bearer token for the user, as the gateway's HS256 secret signs it. */
  tokenFor(userId: string): Promise<string>;
  /** SessionService through the gateway, as `userId` (with the internal key for PrepareSession). */
  sessions(userId: string): Promise<Client<typeof SessionService>>;
  /** StreamService through the gateway, unauthenticated (a ticket goes in the request). */
  stream(): Client<typeof StreamService>;
  /** Every log line of every service, for failure messages and leak checks. */
  allLogs(): string;
}

export interface DeployedOptions {
  /** Extra `helm template --set`s. */
  sets?: string[];
  /** Changes to a service's environment after the chart's (undefined removes a variable). */
  env?: Partial<Record<ServiceName, Record<string, string | undefined>>>;
  /** The model's script (default: the scripted model server's default). */
  model?: ModelScript;
  /**
   * The services' database (default: a fresh database on the shared test server). A chaos
   * test that stops PostgreSQL passes a private one (`startPrivatePostgres`).
   */
  databaseUrl?: string;
  /** Do not start the processes (the test calls startAll or starts them one by one). */
  deferStart?: boolean;
}

/** Values for every Secret key the chart references (one install's generated secrets). */
async function generateSecrets(databaseUrl: string, appPrivateKey: string): Promise<Record<string, string>> {
  const gateway = await generateServiceKeyPair();
  const session = await generateServiceKeyPair();
  const sandbox = await generateServiceKeyPair();
  return {
    "internal-api-secret": randomBytes(24).toString("hex"),
    "service-token-private-key": gateway.privateKeyPem,
    "service-token-public-key": gateway.publicKeyPem,
    "stream-ticket-secret": randomBytes(32).toString("hex"),
    "auth-hs256-secret": randomBytes(32).toString("hex"),
    "session-sealing-keys": `k1:${randomBytes(32).toString("base64")}`,
    "session-service-token-private-key": session.privateKeyPem,
    "session-service-token-public-key": session.publicKeyPem,
    "callback-signing-secret": randomBytes(32).toString("hex"),
    "sandbox-service-token-private-key": sandbox.privateKeyPem,
    "sandbox-service-token-public-key": sandbox.publicKeyPem,
    "agent-env-vars-private-key": generateSecretKeyPair().privateKeyPem,
    "github-app-private-key": appPrivateKey,
    "token-sealing-keys": `k1:${randomBytes(32).toString("base64")}`,
    "database-url": databaseUrl,
    "model-api-key": MODEL_KEY,
  };
}

/** Chart values of the test install: an OpenAI-compatible model (the scripted server), an App id. */
const TEST_SETS = [
  "kiloProvider.kind=openai-compatible",
  "kiloProvider.baseUrl=http://model.test.invalid/v1",
  "services.sandbox-manager.secretEnv.KILO_PROVIDER_API_KEY.key=model-api-key",
  `services.token.env.GITHUB_APP_ID=${GITHUB_APP_ID}`,
];

interface Loopback {
  ports: Record<ServiceName, number>;
  natsUrl: string;
  modelUrl: string;
  gitUrl: string;
  githubApiUrl: string;
  sandboxRoot: string;
}

/** Service DNS names to loopback ports, and the few settings a cluster-less run must change. */
function loopbackOverrides(service: ServiceName, env: ServiceEnv, lb: Loopback): ServiceEnv {
  const out: ServiceEnv = {};
  for (const [k, v] of Object.entries(env)) {
    let value = v;
    for (const s of SERVICES) {
      value = value.replace(
        new RegExp(`http://${componentName(s)}:\\d+`, "g"),
        `http://127.0.0.1:${lb.ports[s]}`,
      );
    }
    out[k] = value;
  }
  out.HOST = "127.0.0.1";
  out.PORT = String(lb.ports[service]);
  if (out.NATS_URL) out.NATS_URL = lb.natsUrl;
  if (service === "token") out.GITHUB_API_URL = lb.githubApiUrl;
  if (service === "sandbox-manager") {
    for (const k of Object.keys(out)) if (k.startsWith("K8S_")) delete out[k];
    out.SANDBOX_DRIVER = "local";
    out.SANDBOX_ISOLATION = "bwrap";
    out.SANDBOX_ROOT = lb.sandboxRoot;
    out.KILO_PROVIDER_BASE_URL = lb.modelUrl;
    out.GITHUB_GIT_BASE_URL = lb.gitUrl;
    out.GIT_ALLOW_INSECURE = "true";
    // The git fixture is on this host's loopback: the fenced sandboxes reach that one port
    // by an operator's allow entry (the model is reached through the provider relay).
    out.SANDBOX_EGRESS_ALLOW = new URL(lb.gitUrl).host;
  }
  return out;
}

export async function startDeployedSystem(opts: DeployedOptions = {}): Promise<DeployedSystem> {
  const cleanup: Array<() => Promise<unknown>> = [];
  const dispose = async () => {
    for (const fn of cleanup.reverse()) await fn().catch(() => undefined);
  };
  try {
    const nats = await startNats();
    cleanup.push(async () => nats[Symbol.asyncDispose]());
    const database = await createTestDatabase("kc_deployed");
    cleanup.push(() => database.drop());
    const databaseUrl = opts.databaseUrl ?? database.url;
    const model = await startModelServer({
      apiKey: MODEL_KEY,
      ...(opts.model ? { script: opts.model } : {}),
    });
    cleanup.push(() => model.close());
    // The chart always runs the token service: githubRepo sessions clone with App tokens
    // it mints from the GitHub API double, and the git server accepts only those.
    const appKey = await generateGitHubAppKey();
    const github = await startGitHubApi({
      appId: GITHUB_APP_ID,
      publicKeyPem: appKey.publicKeyPem,
      installations: { [String(INSTALLATION_ID)]: { account: "acme", accountType: "Organization" } },
    });
    cleanup.push(() => github.close());
    const git = await startGitServer({ auth: github.gitAuth() });
    cleanup.push(() => git.close());
    await git.createBareRepo(REPO_NAME, { files: { "README.md": "# widgets\n" } });
    const sandboxRoot = await mkdtemp(join(tmpdir(), "kc-deployed-"));
    cleanup.push(() => rm(sandboxRoot, { recursive: true, force: true }));

    const secrets = await generateSecrets(databaseUrl, appKey.privateKeyPem);
    const envs = deploymentEnvs(renderForTest([...TEST_SETS, ...(opts.sets ?? [])]), secrets);
    const ports = {} as Record<ServiceName, number>;
    for (const s of SERVICES) ports[s] = await freePort();
    const lb: Loopback = {
      ports,
      natsUrl: nats.url,
      modelUrl: model.url,
      gitUrl: git.url,
      githubApiUrl: github.url,
      sandboxRoot,
    };
    const services = {} as Record<ServiceName, ServiceProcess>;
    for (const s of SERVICES) {
      const env = loopbackOverrides(s, envs[s], lb);
      for (const [k, v] of Object.entries(opts.env?.[s] ?? {})) {
        if (v === undefined) delete env[k];
        else env[k] = v;
      }
      services[s] = serviceProcess(s, ports[s], env);
    }
    cleanup.push(async () => {
      for (const s of [...SERVICES].reverse()) await services[s].stop();
    });

    const hs256 = new TextEncoder().encode(secrets["auth-hs256-secret"]);
    const tokenFor = (userId: string) =>
      new SignJWT({})
        .setProtectedHeader({ alg: "HS256" })
        .setSubject(userId)
        .setIssuedAt()
        .setExpirationTime("1h")
        .sign(hs256);
    const gatewayUrl = services.gateway.url;
    const transport = (headers: Record<string, string>) => {
      const set: Interceptor = (next) => async (req) => {
        for (const [k, v] of Object.entries(headers)) req.header.set(k, v);
        return next(req);
      };
      return createConnectTransport({ baseUrl: gatewayUrl, httpVersion: "1.1", interceptors: [set] });
    };
    const system: DeployedSystem = {
      gatewayUrl,
      services,
      secrets,
      nats,
      database,
      model,
      git,
      github,
      async registerInstallation(owner) {
        const admin = createClient(
          TokenService,
          createConnectTransport({ baseUrl: services.token.url, httpVersion: "1.1" }),
        );
        await admin.registerInstallation(
          {
            installationId: BigInt(INSTALLATION_ID),
            accountLogin: "acme",
            owner:
              "orgId" in owner
                ? { case: "kiloOrgId", value: owner.orgId }
                : { case: "kiloUserId", value: owner.userId },
          },
          { headers: { [INTERNAL_API_KEY_HEADER]: secrets["internal-api-secret"] ?? "" } },
        );
      },
      async startAll() {
        // sandbox-manager provisions the event stream the others bind to.
        await Promise.all(
          (["sandbox-manager", "token"] as const)
            .filter((s) => !services[s].running)
            .map((s) => services[s].start()),
        );
        for (const s of ["session", "gateway"] as const) if (!services[s].running) await services[s].start();
      },
      tokenFor,
      async sessions(userId) {
        return createClient(
          SessionService,
          transport({
            authorization: `Bearer ${await tokenFor(userId)}`,
            [INTERNAL_API_KEY_HEADER]: secrets["internal-api-secret"] ?? "",
          }),
        );
      },
      stream: () => createClient(StreamService, transport({})),
      allLogs: () => SERVICES.map((s) => `--- ${s}\n${services[s].logs.join("")}`).join("\n"),
      [Symbol.asyncDispose]: dispose,
    };
    if (!opts.deferStart) await system.startAll();
    return system;
  } catch (err) {
    await dispose();
    throw err;
  }
}
