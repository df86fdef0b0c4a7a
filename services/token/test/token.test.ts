import { createServer } from "node:net";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import { createServiceTokenSigner, generateServiceKeyPair } from "@kilo-cloud/common";
import { generateGitHubAppKey, isGitHubInstallationToken } from "@kilo-cloud/testing";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { TOKEN_SERVICE_AUDIENCE, TOKEN_SERVICE_CALLER_ISSUER } from "../src/index.js";
import { startTokenStack, type TokenStack } from "./support/stack.js";

const ORG = "org_acme";
const OTHER_ORG = "org_globex";
const ALICE = "user_alice";
const BOB = "user_bob";
const MINUTE = 60_000;

let stack: TokenStack;

beforeAll(async () => {
  stack = await startTokenStack({
    installations: {
      "1001": { account: "Acme" },
      "1002": { account: "alice-dev", accountType: "User" },
      "1003": { account: "globex", repositories: ["site"] },
      "1004": { account: "gone" },
    },
  });
  await stack.register(1001, "Acme", { orgId: ORG });
  await stack.register(1002, "alice-dev", { userId: ALICE });
  await stack.register(1003, "globex", { orgId: OTHER_ORG });
  await stack.register(1004, "gone", { orgId: ORG });
});

afterAll(async () => {
  // Whatever happened in the file, no token, App key or JWT reached a log line.
  const text = stack.logs.join("");
  expect(stack.github.tokens.length).toBeGreaterThan(0);
  for (const t of stack.github.tokens) expect(text).not.toContain(t.token);
  expect(text).not.toMatch(/ghs_[0-9A-Za-z]{10}/);
  expect(text).not.toMatch(/eyJ[A-Za-z0-9_-]{10}/);
  expect(text).not.toContain("PRIVATE KEY");
  expect(text).not.toContain(stack.appKey.privateKeyPem.split("\n")[1]);
  await stack[Symbol.asyncDispose]();
});

beforeEach(() => {
  stack.clock.now = Date.now();
  stack.github.failWith(undefined);
  stack.github.setLatency(0);
});

async function codeOf(p: Promise<unknown>): Promise<ConnectError> {
  try {
    await p;
  } catch (err) {
    return ConnectError.from(err);
  }
  throw new Error("expected the call to fail");
}

describe("GetRepositoryToken", () => {
  it("mints a ghs_ token scoped to the one repository with the agent's permissions", async () => {
    const before = stack.github.calls;
    const { token, expiresAt } = await stack.client.getWithExpiry("acme/widgets", {
      userId: ALICE,
      orgId: ORG,
    });
    expect(isGitHubInstallationToken(token)).toBe(true);
    expect(expiresAt.getTime() - Date.now()).toBeGreaterThan(59 * MINUTE);
    expect(stack.github.calls).toBe(before + 1);
    expect(stack.github.issuedTokens.get(token)).toMatchObject({
      installationId: 1001,
      repositories: ["widgets"],
      permissions: { contents: "write", pull_requests: "write", metadata: "read" },
    });
    // What git will be given works against the forge, for this repository only.
    expect(stack.github.checkToken(token, "acme/widgets", "write")).toBeDefined();
    expect(stack.github.checkToken(token, "acme/other")).toBeUndefined();
  });

  it("reuses the token within the cache window: N requests, one upstream call", async () => {
    const before = stack.github.calls;
    const first = await stack.client.get("acme/cached", { userId: ALICE, orgId: ORG });
    for (let i = 0; i < 10; i++) {
      // Case does not matter to GitHub, so it does not split the cache.
      const repo = i % 2 ? "ACME/Cached" : "acme/cached";
      expect(await stack.client.get(repo, { userId: BOB, orgId: ORG })).toBe(first);
    }
    expect(stack.github.calls).toBe(before + 1);
  });

  it("mints a new token once the cached one is within 5 minutes of expiring", async () => {
    const before = stack.github.calls;
    const first = await stack.client.getWithExpiry("acme/clock", { userId: ALICE, orgId: ORG });
    stack.clock.now = first.expiresAt.getTime() - 5 * MINUTE - 1_000;
    expect(await stack.client.get("acme/clock", { userId: ALICE, orgId: ORG })).toBe(first.token);
    expect(stack.github.calls).toBe(before + 1);
    stack.clock.now = first.expiresAt.getTime() - 5 * MINUTE + 1_000;
    const second = await stack.client.getWithExpiry("acme/clock", { userId: ALICE, orgId: ORG });
    expect(second.token).not.toBe(first.token);
    expect(second.expiresAt.getTime()).toBeGreaterThan(first.expiresAt.getTime());
    expect(stack.github.calls).toBe(before + 2);
    // And the new one is cached in turn.
    expect(await stack.client.get("acme/clock", { userId: ALICE, orgId: ORG })).toBe(second.token);
    expect(stack.github.calls).toBe(before + 2);
  });

  it("shares one upstream call among 100 concurrent requests", async () => {
    stack.github.setLatency(300);
    const before = stack.github.calls;
    const tokens = await Promise.all(
      Array.from({ length: 100 }, () => stack.client.get("acme/rush", { userId: ALICE, orgId: ORG })),
    );
    expect(new Set(tokens).size).toBe(1);
    expect(stack.github.calls).toBe(before + 1);
  });

  it("keeps tokens per repository: another repository of the installation is another token", async () => {
    const a = await stack.client.get("acme/one", { userId: ALICE, orgId: ORG });
    const b = await stack.client.get("acme/two", { userId: ALICE, orgId: ORG });
    expect(a).not.toBe(b);
    expect(stack.github.checkToken(a, "acme/two")).toBeUndefined();
  });

  it("survives a restart: a new instance on the same database reuses the sealed token", async () => {
    const token = await stack.client.get("acme/durable", { userId: ALICE, orgId: ORG });
    const before = stack.github.calls;
    await using restarted = await stack.replica();
    expect(await restarted.client.get("acme/durable", { userId: ALICE, orgId: ORG })).toBe(token);
    expect(stack.github.calls).toBe(before);

    const { rows } = await stack.db.query<{ token_sealed: string }>(
      "SELECT token_sealed FROM token.cached_tokens WHERE installation_id = 1001 AND repository = 'durable'",
    );
    expect(rows).toHaveLength(1);
    expect(rows[0]!.token_sealed).toMatch(/^v1\.k1\./);
    expect(rows[0]!.token_sealed).not.toContain(token);
    expect(rows[0]!.token_sealed).not.toContain(token.slice(4, 20));
    expect(Buffer.from(rows[0]!.token_sealed.split(".")[2]!, "base64url").toString("latin1")).not.toContain(
      token.slice(4, 20),
    );
  });

  it("mints again, without failing, when the cached token does not open (sealing key replaced)", async () => {
    const token = await stack.client.get("acme/rekeyed", { userId: ALICE, orgId: ORG });
    const before = stack.github.calls;
    await using rekeyed = await stack.replica({
      TOKEN_SEALING_KEYS: `k2:${Buffer.alloc(32, 7).toString("base64")}`,
    });
    const fresh = await rekeyed.client.get("acme/rekeyed", { userId: ALICE, orgId: ORG });
    expect(fresh).not.toBe(token);
    expect(stack.github.calls).toBe(before + 1);
  });

  it("serves a personal account's installation to its user only", async () => {
    expect(await stack.client.get("alice-dev/dotfiles", { userId: ALICE })).toMatch(/^ghs_/);
    // Her own account, from a session in her organization.
    expect(await stack.client.get("alice-dev/dotfiles", { userId: ALICE, orgId: ORG })).toMatch(/^ghs_/);
    const err = await codeOf(stack.client.get("alice-dev/dotfiles", { userId: BOB }));
    expect(err.code).toBe(Code.PermissionDenied);
    expect(err.rawMessage).toBe("the GitHub App installation on alice-dev belongs to another user");
  });

  it("refuses an organization's installation to another organization, or outside any", async () => {
    const before = stack.github.calls;
    const wrong = await codeOf(stack.client.get("globex/site", { userId: ALICE, orgId: ORG }));
    expect(wrong.code).toBe(Code.PermissionDenied);
    expect(wrong.rawMessage).toBe("the GitHub App installation on globex belongs to another organization");
    const personal = await codeOf(stack.client.get("acme/widgets", { userId: ALICE }));
    expect(personal.code).toBe(Code.PermissionDenied);
    expect(stack.github.calls).toBe(before);
  });

  it("answers NOT_FOUND when no installation covers the owner", async () => {
    const err = await codeOf(stack.client.get("initech/tps", { userId: ALICE, orgId: ORG }));
    expect(err.code).toBe(Code.NotFound);
    expect(err.rawMessage).toBe("no GitHub App installation covers initech");
  });

  it("answers UNAVAILABLE when GitHub fails, with no token or key material in the message or logs", async () => {
    stack.github.failWith(502);
    const logged = stack.logs.length;
    const err = await codeOf(stack.client.get("acme/outage", { userId: ALICE, orgId: ORG }));
    expect(err.code).toBe(Code.Unavailable);
    expect(err.rawMessage).toBe("GitHub is unavailable");
    const text = `${err.message} ${JSON.stringify(err.metadata)} ${stack.logs.slice(logged).join("")}`;
    expect(text).not.toMatch(/ghs_|eyJ|PRIVATE KEY|[Bb]earer /);
    // The operator still learns what happened.
    expect(stack.logs.slice(logged).join("")).toContain("GitHub refused an installation token");
    // Nothing was cached: the next request, GitHub back, mints.
    stack.github.failWith(undefined);
    expect(await stack.client.get("acme/outage", { userId: ALICE, orgId: ORG })).toMatch(/^ghs_/);
  });

  it("answers UNAVAILABLE when GitHub cannot be reached", async () => {
    const closedPort = await new Promise<number>((resolve) => {
      const s = createServer().listen(0, "127.0.0.1", () => {
        const port = (s.address() as { port: number }).port;
        s.close(() => resolve(port));
      });
    });
    await using offline = await stack.replica({ GITHUB_API_URL: `http://127.0.0.1:${closedPort}` });
    const err = await codeOf(offline.client.get("acme/offline", { userId: ALICE, orgId: ORG }));
    expect(err.code).toBe(Code.Unavailable);
    expect(err.rawMessage).toBe("GitHub is unavailable");
  });

  it("answers UNAVAILABLE when GitHub is too slow", async () => {
    await using impatient = await stack.replica({ GITHUB_TIMEOUT_MS: "200" });
    stack.github.setLatency(1_000);
    const err = await codeOf(impatient.client.get("acme/slow", { userId: ALICE, orgId: ORG }));
    expect(err.code).toBe(Code.Unavailable);
    expect(err.rawMessage).toBe("GitHub is unavailable");
  });

  it("lets a caller give up without cancelling the upstream call others wait for", async () => {
    stack.github.setLatency(400);
    const before = stack.github.calls;
    const quitter = new AbortController();
    const gaveUp = stack.client.get("acme/patience", { userId: ALICE, orgId: ORG }, quitter.signal);
    const waits = stack.client.get("acme/patience", { userId: BOB, orgId: ORG });
    setTimeout(() => quitter.abort(), 100);
    expect((await codeOf(gaveUp)).code).toBe(Code.Canceled);
    const token = await waits;
    expect(token).toMatch(/^ghs_/);
    expect(stack.github.calls).toBe(before + 1);
    stack.github.setLatency(0);
    expect(await stack.client.get("acme/patience", { userId: ALICE, orgId: ORG })).toBe(token);
  });

  it("answers FAILED_PRECONDITION when GitHub no longer knows the installation or refuses the repository", async () => {
    stack.github.removeInstallation(1004);
    const gone = await codeOf(stack.client.get("gone/app", { userId: ALICE, orgId: ORG }));
    expect(gone.code).toBe(Code.FailedPrecondition);
    expect(gone.rawMessage).toMatch(/GitHub does not know installation 1004/);
    const outside = await codeOf(
      stack.client.get("globex/secret-plans", { userId: ALICE, orgId: OTHER_ORG }),
    );
    expect(outside.code).toBe(Code.FailedPrecondition);
    expect(outside.rawMessage).toMatch(/cannot access the repository/);
  });

  it("answers INTERNAL when GitHub refuses the App credentials", async () => {
    const otherKey = await generateGitHubAppKey();
    await using wrongKey = await stack.replica({ GITHUB_APP_PRIVATE_KEY: otherKey.privateKeyPem });
    const logged = stack.logs.length;
    const err = await codeOf(wrongKey.client.get("acme/creds", { userId: ALICE, orgId: ORG }));
    expect(err.code).toBe(Code.Internal);
    expect(err.rawMessage).toBe("GitHub refused the App credentials");
    const lines = stack.logs.slice(logged).join("");
    expect(lines).toContain("could not be decoded");
    expect(lines).not.toMatch(/eyJ|PRIVATE KEY/);
  });

  it("refuses a repo that is not owner/name", async () => {
    for (const repo of ["acme", "acme/widgets/extra", "acme/..", "-acme/x", "https://github.com/acme/x"]) {
      const err = await codeOf(stack.client.get(repo, { userId: ALICE, orgId: ORG }));
      expect(err.code, repo).toBe(Code.InvalidArgument);
    }
  });
});

describe("authentication", () => {
  const request = { repo: "acme/widgets", userId: ALICE, orgId: ORG };

  it("refuses a service token for another user than userId", async () => {
    const token = await stack.sign(TOKEN_SERVICE_AUDIENCE, { userId: BOB, internal: false });
    const err = await codeOf(
      stack.raw.getRepositoryToken(request, { headers: { authorization: `Bearer ${token}` } }),
    );
    expect(err.code).toBe(Code.PermissionDenied);
  });

  it("refuses calls without a valid service token from sandbox-manager", async () => {
    const stranger = await generateServiceKeyPair();
    const tokens = {
      none: undefined,
      "another key": await (
        await createServiceTokenSigner(stranger.privateKeyPem, TOKEN_SERVICE_CALLER_ISSUER)
      )(TOKEN_SERVICE_AUDIENCE, { userId: ALICE, internal: false }),
      "the gateway's issuer": await (await createServiceTokenSigner(stack.callerKeys.privateKeyPem))(
        TOKEN_SERVICE_AUDIENCE,
        { userId: ALICE, internal: true },
      ),
      "another audience": await stack.sign("kilo-cloud-session", { userId: ALICE, internal: false }),
    };
    for (const [what, token] of Object.entries(tokens)) {
      const headers: Record<string, string> = token ? { authorization: `Bearer ${token}` } : {};
      // The internal key is no substitute for a service token.
      const err = await codeOf(
        stack.raw.getRepositoryToken(request, { headers: { ...headers, ...stack.internal } }),
      );
      expect(err.code, what).toBe(Code.Unauthenticated);
    }
  });

  it("refuses installation changes without the internal API key", async () => {
    const serviceToken = await stack.sign(TOKEN_SERVICE_AUDIENCE, { userId: ALICE, internal: true });
    const register = {
      installationId: 9n,
      accountLogin: "evil",
      owner: { case: "kiloUserId", value: ALICE },
    } as const;
    for (const headers of [
      {},
      { "x-internal-api-key": "not-the-key-but-long-enough" },
      { authorization: `Bearer ${serviceToken}` },
    ]) {
      expect((await codeOf(stack.raw.registerInstallation(register, { headers }))).code).toBe(
        Code.Unauthenticated,
      );
      expect((await codeOf(stack.raw.removeInstallation({ installationId: 1001n }, { headers }))).code).toBe(
        Code.Unauthenticated,
      );
    }
    const err = await codeOf(stack.client.get("evil/repo", { userId: ALICE }));
    expect(err.code).toBe(Code.NotFound);
  });
});

describe("installations", () => {
  it("validates registrations", async () => {
    const err = await codeOf(
      stack.raw.registerInstallation(
        { installationId: 0n, accountLogin: "bad login", owner: { case: "kiloOrgId", value: ORG } },
        { headers: stack.internal },
      ),
    );
    expect(err.code).toBe(Code.InvalidArgument);
    const noOwner = await codeOf(
      stack.raw.registerInstallation({ installationId: 5n, accountLogin: "x" }, { headers: stack.internal }),
    );
    expect(noOwner.code).toBe(Code.InvalidArgument);
  });

  it("moves an account to its new installation when the App is reinstalled", async () => {
    stack.github.addInstallation(2001, { account: "hooli" });
    stack.github.addInstallation(2002, { account: "hooli" });
    await stack.register(2001, "hooli", { orgId: ORG });
    await stack.client.get("hooli/app", { userId: ALICE, orgId: ORG });
    await stack.register(2002, "HOOLI", { orgId: ORG });
    const token = await stack.client.get("hooli/app", { userId: ALICE, orgId: ORG });
    expect(stack.github.issuedTokens.get(token)?.installationId).toBe(2002);
    const { rows } = await stack.db.query(
      "SELECT installation_id FROM token.installations WHERE account_login = 'hooli'",
    );
    expect(rows).toEqual([{ installation_id: "2002" }]);
  });

  it("changes who may use an installation", async () => {
    stack.github.addInstallation(3001, { account: "umbrella" });
    await stack.register(3001, "umbrella", { orgId: ORG });
    await stack.client.get("umbrella/x", { userId: ALICE, orgId: ORG });
    await stack.register(3001, "umbrella", { orgId: OTHER_ORG });
    expect((await codeOf(stack.client.get("umbrella/x", { userId: ALICE, orgId: ORG }))).code).toBe(
      Code.PermissionDenied,
    );
    expect(await stack.client.get("umbrella/x", { userId: ALICE, orgId: OTHER_ORG })).toMatch(/^ghs_/);
  });

  it("removes an installation and its cached tokens", async () => {
    stack.github.addInstallation(4001, { account: "wayne" });
    await stack.register(4001, "wayne", { orgId: ORG });
    await stack.client.get("wayne/cave", { userId: ALICE, orgId: ORG });
    await stack.raw.removeInstallation({ installationId: 4001n }, { headers: stack.internal });
    const { rows } = await stack.db.query("SELECT 1 FROM token.cached_tokens WHERE installation_id = 4001");
    expect(rows).toHaveLength(0);
    expect((await codeOf(stack.client.get("wayne/cave", { userId: ALICE, orgId: ORG }))).code).toBe(
      Code.NotFound,
    );
    const again = await codeOf(
      stack.raw.removeInstallation({ installationId: 4001n }, { headers: stack.internal }),
    );
    expect(again.code).toBe(Code.NotFound);
  });
});

describe("service endpoints", () => {
  it("serves /healthz, /readyz and /metrics with the cache counters", async () => {
    expect((await fetch(`${stack.url}/healthz`)).status).toBe(200);
    expect((await fetch(`${stack.url}/readyz`)).status).toBe(200);
    const metrics = await (await fetch(`${stack.url}/metrics`)).text();
    expect(metrics).toMatch(/token_cache_lookups_total\{result="hit",component="token"\} [1-9]/);
    expect(metrics).toMatch(/token_cache_lookups_total\{result="shared",component="token"\} [1-9]/);
  });

  it("answers in the wire format sandbox-manager reads", async () => {
    const token = await stack.sign(TOKEN_SERVICE_AUDIENCE, { userId: ALICE, internal: false });
    const res = await stack.raw.getRepositoryToken(
      { repo: "acme/widgets", userId: ALICE, orgId: ORG },
      { headers: { authorization: `Bearer ${token}` } },
    );
    expect(res.token).toMatch(/^ghs_/);
    expect(timestampDate(res.expiresAt!).getTime()).toBeGreaterThan(Date.now());
  });
});
