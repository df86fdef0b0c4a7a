import { randomBytes, randomUUID } from "node:crypto";
import { createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import {
  createLogger,
  createPool,
  createServiceTokenSigner,
  generateServiceKeyPair,
  listen,
  type Pool,
  type RunningServer,
} from "@kilo-cloud/common";
import { TokenService } from "@kilo-cloud/proto/token";
import {
  createTestDatabase,
  defaultScript,
  type GitHubApi,
  generateGitHubAppKey,
  startGitHubApi,
  type TestDatabase,
} from "@kilo-cloud/testing";
import { createTokenService, migrateTokenSchema } from "@kilo-cloud/token";
import { createTokenClient, TOKEN_SERVICE_CALLER_ISSUER } from "@kilo-cloud/token/client";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { describeEvent, type Harness, type StartInit, startHarness } from "./support/harness.js";

/**
 * A `githubRepo` session end to end with GitHub App tokens: sandbox-manager asks the real
 * token service, which mints installation tokens from a GitHub API double (it checks the
 * App JWT like GitHub); the git server accepts only tokens the double issued, for their
 * repository. Real kilo, real bwrap, real git over HTTP.
 */
describe("githubRepo with GitHub App tokens", { timeout: 180_000 }, () => {
  const APP_ID = 424242;
  const INTERNAL_KEY = randomBytes(16).toString("hex");
  let github: GitHubApi;
  let database: TestDatabase;
  let pool: Pool;
  let tokenServer: RunningServer;
  let h: Harness;
  const logs: string[] = [];

  beforeAll(async () => {
    const appKey = await generateGitHubAppKey();
    github = await startGitHubApi({
      appId: APP_ID,
      publicKeyPem: appKey.publicKeyPem,
      installations: { "77": { account: "acme", accountType: "Organization", repositories: ["widgets"] } },
    });
    database = await createTestDatabase();
    pool = createPool(database.url);
    const logger = createLogger({
      service: "token",
      destination: { write: (l: string) => void logs.push(l) },
    });
    await migrateTokenSchema(pool, logger);
    const sandboxKeys = await generateServiceKeyPair();
    const app = await createTokenService({
      pool,
      logger,
      sealingKeys: [{ id: "t1", key: randomBytes(32) }],
      serviceTokenPublicKey: sandboxKeys.publicKeyPem,
      internalApiKey: INTERNAL_KEY,
      github: { appId: String(APP_ID), privateKey: appKey.privateKeyPem, apiUrl: github.url },
    });
    tokenServer = await listen(app.handler, { port: 0, host: "127.0.0.1" });
    const admin = createClient(
      TokenService,
      createConnectTransport({ baseUrl: tokenServer.url, httpVersion: "1.1" }),
    );
    await admin.registerInstallation(
      { installationId: 77n, accountLogin: "acme", owner: { case: "kiloOrgId", value: "org-a" } },
      { headers: { "x-internal-api-key": INTERNAL_KEY } },
    );
    const tokens = createTokenClient({
      baseUrl: tokenServer.url,
      sign: await createServiceTokenSigner(sandboxKeys.privateKeyPem, TOKEN_SERVICE_CALLER_ISSUER),
    });
    h = await startHarness({ gitAuth: github.gitAuth(), tokens });
    await h.git.createBareRepo("acme/widgets", { files: { "README.md": "# widgets\n" } });
    h.model.setScript(defaultScript());
  });
  afterAll(async () => {
    await h?.[Symbol.asyncDispose]();
    await tokenServer?.close(100);
    await pool?.end();
    await database?.drop();
    await github?.close();
  });

  const start = (over: Partial<StartInit>): StartInit => ({
    executionId: `exec_${randomUUID()}`,
    cloudAgentSessionId: `agent_${randomUUID()}`,
    kiloSessionId: randomUUID(),
    sandbox: { userId: "user-1", orgId: "org-a" },
    repository: { case: "githubRepo", value: "acme/widgets" },
    prompt: "Write the greeting",
    mode: "code",
    model: "mock-model",
    autoCommit: true,
    firstExecution: true,
    ...over,
  });

  it("clones and pushes with minted installation tokens that the git server checks", async () => {
    const req = start({});
    await h.start(req);
    const events = await h.untilEnd(req.cloudAgentSessionId!, req.executionId!);
    const last = events.at(-1)!;
    if (last.payload.case !== "complete") throw new Error(describeEvent(last));
    expect(last.payload.value.exitCode).toBe(0);
    expect(last.payload.value.commitSha).toMatch(/^[0-9a-f]{40}$/);
    expect(await h.git.readFile("acme/widgets", `session/${req.cloudAgentSessionId}`, "hello1.txt")).toBe(
      "hello from mock\n",
    );

    // The git server let in only tokens GitHub (the double) issued: the clone read with one,
    // the push wrote with one.
    const ok = h.git.authAttempts.filter((a) => a.ok);
    expect(ok.some((a) => !a.write)).toBe(true);
    expect(ok.some((a) => a.write)).toBe(true);
    for (const a of ok) expect(github.issuedTokens.has(a.password)).toBe(true);
    // The clone and the push shared one cached token: one upstream mint.
    expect(github.tokens).toHaveLength(1);
    // No minted token in events, logs or the workspace's git config.
    const minted = github.tokens[0]!.token;
    expect(minted).toMatch(/^ghs_/);
    const everything = JSON.stringify(events, (_, v) => (typeof v === "bigint" ? v.toString() : v));
    expect(everything).not.toContain(minted);
    expect([...h.logs, ...logs].join("\n")).not.toContain(minted);
  });

  it("a caller of another org gets no token, and the execution says so", async () => {
    const before = github.calls;
    const req = start({ sandbox: { userId: "user-2", orgId: "org-b" } });
    await h.start(req);
    const events = await h.untilEnd(req.cloudAgentSessionId!, req.executionId!);
    const last = events.at(-1)!;
    expect(describeEvent(last)).toMatch(/^error:could not get a GitHub token for acme\/widgets/);
    expect(github.calls).toBe(before);
    expect(events.some((e) => e.payload.case === "kilocode")).toBe(false);
  });
});
