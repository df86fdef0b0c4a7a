import { execFile } from "node:child_process";
import { generateKeyPairSync } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { importPKCS8, SignJWT } from "jose";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { basicAuthHeader, startGitServer } from "./git-server.js";
import {
  type GitHubApi,
  generateGitHubAppKey,
  isGitHubInstallationToken,
  startGitHubApi,
} from "./github-api.js";

const APP_ID = 424242;
let key: { privateKeyPem: string; publicKeyPem: string };
let api: GitHubApi;
let clock = Date.now();

beforeAll(async () => {
  key = await generateGitHubAppKey();
  api = await startGitHubApi({
    appId: APP_ID,
    publicKeyPem: key.publicKeyPem,
    now: () => clock,
    installations: {
      "100": { account: "acme" },
      "200": { account: "solo", accountType: "User", repositories: ["only-this"] },
      "300": { account: "frozen", suspended: true },
      "400": { account: "readonly", permissions: { contents: "read", metadata: "read" } },
    },
  });
});

afterAll(async () => {
  await api.close();
});

beforeEach(() => {
  clock = Date.now();
  api.failWith(undefined);
});

const nowS = () => Math.floor(Date.now() / 1000);

/** An App JWT as @octokit/auth-app makes it (iat 30 s back, 10 minutes), with overrides. */
async function appJwt(
  claims: { iss?: string | number; iat?: number; exp?: number } = {},
  signWith: string = key.privateKeyPem,
): Promise<string> {
  const iat = claims.iat ?? nowS() - 30;
  const pkcs8 = signWith.includes("BEGIN RSA")
    ? (await import("node:crypto"))
        .createPrivateKey(signWith)
        .export({ type: "pkcs8", format: "pem" })
        .toString()
    : signWith;
  return new SignJWT({ iss: claims.iss ?? APP_ID } as Record<string, unknown>)
    .setProtectedHeader({ alg: "RS256", typ: "JWT" })
    .setIssuedAt(iat)
    .setExpirationTime(claims.exp ?? iat + 600)
    .sign(await importPKCS8(pkcs8, "RS256"));
}

async function post(
  installationId: number,
  body: unknown,
  jwt?: string,
): Promise<{ status: number; json: Record<string, unknown> }> {
  const res = await fetch(`${api.url}/app/installations/${installationId}/access_tokens`, {
    method: "POST",
    headers: {
      accept: "application/vnd.github+json",
      "user-agent": "test",
      ...(jwt ? { authorization: `Bearer ${jwt}` } : {}),
    },
    body: JSON.stringify(body),
  });
  return { status: res.status, json: (await res.json()) as Record<string, unknown> };
}

const AGENT_BODY = { repositories: ["widgets"], permissions: { contents: "write", pull_requests: "write" } };

describe("GitHub API double: installation tokens", () => {
  it("issues a ghs_ token in GitHub's shape for a valid App JWT, and counts it", async () => {
    const before = api.calls;
    const { status, json } = await post(100, AGENT_BODY, await appJwt());
    expect(status).toBe(201);
    expect(json.token).toMatch(/^ghs_[0-9A-Za-z]{36}$/);
    expect(isGitHubInstallationToken(json.token as string)).toBe(true);
    // Not the legacy 40-hex format.
    expect(json.token).not.toMatch(/^[0-9a-f]{40}$/);
    expect(json.expires_at).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/);
    const lifetime = Date.parse(json.expires_at as string) - clock;
    expect(lifetime).toBeGreaterThan(59 * 60_000);
    expect(lifetime).toBeLessThanOrEqual(60 * 60_000);
    expect(json.permissions).toEqual({ contents: "write", pull_requests: "write", metadata: "read" });
    expect(json.repository_selection).toBe("selected");
    expect(json.repositories).toEqual([
      expect.objectContaining({ name: "widgets", full_name: "acme/widgets", id: expect.any(Number) }),
    ]);
    expect(api.calls).toBe(before + 1);
    expect(api.issuedTokens.get(json.token as string)).toMatchObject({
      installationId: 100,
      repositories: ["widgets"],
    });
  });

  it("accepts iss as a string, as GitHub does", async () => {
    expect((await post(100, AGENT_BODY, await appJwt({ iss: String(APP_ID) }))).status).toBe(201);
  });

  it("refuses JWTs GitHub would refuse, with GitHub's error shape", async () => {
    const other = await generateGitHubAppKey();
    const cases: [string, Promise<string | undefined>, RegExp][] = [
      ["no Authorization", Promise.resolve(undefined), /could not be decoded/],
      ["signed with another key", appJwt({}, other.privateKeyPem), /could not be decoded/],
      ["another App", appJwt({ iss: APP_ID + 1 }), /'Issuer' claim/],
      ["exp - iat over 10 minutes", appJwt({ iat: nowS() - 10, exp: nowS() + 600 }), /too far in the future/],
      ["iat in the future", appJwt({ iat: nowS() + 120, exp: nowS() + 300 }), /'Issued at' claim/],
      ["expired", appJwt({ iat: nowS() - 700, exp: nowS() - 100 }), /'Expiration time' claim .* future time/],
      [
        "HS256",
        new SignJWT({ iss: APP_ID } as Record<string, unknown>)
          .setProtectedHeader({ alg: "HS256" })
          .setIssuedAt()
          .setExpirationTime("5m")
          .sign(new TextEncoder().encode(key.publicKeyPem)),
        /could not be decoded/,
      ],
    ];
    const issued = api.tokens.length;
    for (const [what, jwt, message] of cases) {
      const { status, json } = await post(100, AGENT_BODY, await jwt);
      expect(status, what).toBe(401);
      expect(json, what).toEqual({
        message: expect.stringMatching(message),
        documentation_url: expect.any(String),
      });
    }
    expect(api.tokens.length).toBe(issued);
  });

  it("accepts a JWT from a PKCS#8 key, the App id configured as a string", async () => {
    const { privateKey, publicKey } = generateKeyPairSync("rsa", { modulusLength: 2048 });
    const other = await startGitHubApi({
      appId: "7",
      publicKeyPem: publicKey.export({ type: "spki", format: "pem" }).toString(),
      installations: { "1": { account: "acme" } },
    });
    try {
      const jwt = await new SignJWT({ iss: 7 } as Record<string, unknown>)
        .setProtectedHeader({ alg: "RS256" })
        .setIssuedAt(nowS() - 30)
        .setExpirationTime(nowS() + 540)
        .sign(privateKey);
      const res = await fetch(`${other.url}/app/installations/1/access_tokens`, {
        method: "POST",
        headers: { authorization: `Bearer ${jwt}`, "user-agent": "test" },
      });
      expect(res.status).toBe(201);
      expect(other.calls).toBe(1);
    } finally {
      await other.close();
    }
  });

  it("validates the body as GitHub does", async () => {
    const jwt = await appJwt();
    const bad = [
      { repositories: ["acme/widgets"] },
      { repositories: "widgets" },
      { permissions: { contents: "owner" } },
      { permissions: { teleport: "write" } },
      { repository: ["widgets"] },
    ];
    for (const body of bad) {
      const { status, json } = await post(100, body, jwt);
      expect(status, JSON.stringify(body)).toBe(422);
      expect(json.message).toMatch(/^Invalid request/);
    }
  });

  it("refuses repositories outside the installation and permissions it was not granted", async () => {
    const jwt = await appJwt();
    expect((await post(200, { repositories: ["only-this"] }, jwt)).status).toBe(201);
    const outside = await post(200, { repositories: ["other"] }, jwt);
    expect(outside.status).toBe(422);
    expect(outside.json.message).toMatch(/not accessible to the parent installation/);
    const tooMuch = await post(400, AGENT_BODY, jwt);
    expect(tooMuch.status).toBe(422);
    expect(tooMuch.json.message).toMatch(/permissions requested are not granted/);
  });

  it("answers 404 for an unknown installation, 403 for a suspended one, and 5xx when told to", async () => {
    const jwt = await appJwt();
    expect((await post(999, AGENT_BODY, jwt)).status).toBe(404);
    expect((await post(300, AGENT_BODY, jwt)).status).toBe(403);
    api.failWith(502);
    const failed = await post(100, AGENT_BODY, jwt);
    expect(failed.status).toBe(502);
    expect(failed.json).toEqual({ message: "Server Error", documentation_url: expect.any(String) });
    api.failWith(undefined);
    expect((await post(100, AGENT_BODY, jwt)).status).toBe(201);
  });

  it("wants a User-Agent, as GitHub does", async () => {
    const res = await fetch(`${api.url}/app`, {
      headers: { authorization: `Bearer ${await appJwt()}`, "user-agent": "" },
    });
    expect(res.status).toBe(403);
    const app = await fetch(`${api.url}/app`, {
      headers: { authorization: `Bearer ${await appJwt()}`, "user-agent": "test" },
    });
    expect(app.status).toBe(200);
    expect(await app.json()).toMatchObject({ id: APP_ID });
  });
});

describe("GitHub API double: checking tokens", () => {
  it("accepts an issued token only for its repository, its permissions and its lifetime", async () => {
    const { json } = await post(100, AGENT_BODY, await appJwt());
    const token = json.token as string;
    expect(api.checkToken(token, "acme/widgets", "write")).toBeDefined();
    expect(api.checkToken(token, "ACME/Widgets", "read")).toBeDefined();
    expect(api.checkToken(token, "acme/gadgets")).toBeUndefined();
    expect(api.checkToken(token, "other/widgets")).toBeUndefined();
    expect(api.checkToken(`${token.slice(0, -1)}x`, "acme/widgets")).toBeUndefined();
    const read = await post(
      100,
      { repositories: ["widgets"], permissions: { contents: "read" } },
      await appJwt(),
    );
    expect(api.checkToken(read.json.token as string, "acme/widgets", "read")).toBeDefined();
    expect(api.checkToken(read.json.token as string, "acme/widgets", "write")).toBeUndefined();
    clock += 60 * 60_000 + 1_000;
    expect(api.checkToken(token, "acme/widgets")).toBeUndefined();
  });

  it("lets the git server fixture accept exactly the issued tokens", async () => {
    await using git = await startGitServer({ auth: api.gitAuth() });
    await git.createBareRepo("acme/widgets");
    const scratch = await mkdtemp(join(tmpdir(), "kc-gh-git-"));
    try {
      const run = (args: string[], cwd = scratch) =>
        promisify(execFile)("git", args, {
          cwd,
          env: {
            PATH: process.env.PATH,
            HOME: scratch,
            GIT_CONFIG_NOSYSTEM: "1",
            GIT_CONFIG_GLOBAL: "/dev/null",
            GIT_TERMINAL_PROMPT: "0",
            GIT_AUTHOR_NAME: "T",
            GIT_AUTHOR_EMAIL: "t@example.test",
            GIT_COMMITTER_NAME: "T",
            GIT_COMMITTER_EMAIL: "t@example.test",
          },
        });
      const { json } = await post(100, AGENT_BODY, await appJwt());
      const auth = (password: string) => [
        "-c",
        `http.extraHeader=${basicAuthHeader("x-access-token", password)}`,
      ];
      await run([...auth(json.token as string), "clone", git.repoUrl("acme/widgets"), "w"]);
      await run(["commit", "--allow-empty", "-m", "hello"], join(scratch, "w"));
      await run([...auth(json.token as string), "push", "origin", "HEAD:feature"], join(scratch, "w"));
      expect(await git.branches("acme/widgets")).toContain("feature");
      await expect(
        run([...auth("ghs_000000000000000000000000000000000000"), "clone", git.repoUrl("acme/widgets"), "x"]),
      ).rejects.toThrow();
    } finally {
      await rm(scratch, { recursive: true, force: true });
    }
  });
});
