import { execFile } from "node:child_process";
import { chmod, mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { basicAuthHeader, type GitServer, startGitServer } from "@kilo-cloud/testing";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { type Sandbox, sessionHome, workspacePath } from "../../src/drivers/driver.js";
import {
  type GitCredentials,
  GitError,
  GitWorkspace,
  type GitWorkspaceOptions,
  githubInstallationCredentials,
} from "../../src/git/workspace.js";
import { type HostExec, HostTestDriver } from "./host-driver.js";

const USER = "x-access-token";
const TOKEN = "ghs_TopSecretInstallationToken42";
const CREDS = githubInstallationCredentials(TOKEN);
const BASIC = Buffer.from(`${USER}:${TOKEN}`).toString("base64");
const IDENTITY = { name: "Kilo Code Cloud", email: "cloud@kilocode.com" };

let server: GitServer;
let scratch: string;
const drivers: HostTestDriver[] = [];

beforeAll(async () => {
  server = await startGitServer({ auth: { username: USER, password: TOKEN } });
  scratch = await mkdtemp(join(tmpdir(), "kc-git-ws-test-"));
});

afterAll(async () => {
  await server.close();
  await rm(scratch, { recursive: true, force: true });
});

afterEach(async () => {
  await Promise.all(drivers.splice(0).map((d) => d.close()));
});

let counter = 0;

async function newRepo(files?: Record<string, string>): Promise<string> {
  const name = `acme/repo-${++counter}`;
  await server.createBareRepo(name, files ? { files } : {});
  return name;
}

interface Env {
  driver: HostTestDriver;
  sandbox: Sandbox;
  sessionId: string;
  path: string;
  /** The workspace on the host, for reading and editing files as the agent would. */
  host: string;
  workspace(overrides?: Partial<GitWorkspaceOptions>): GitWorkspace;
}

async function setup(repo: string): Promise<Env> {
  const driver = await HostTestDriver.create();
  drivers.push(driver);
  const sandbox = await driver.ensureSandbox({ orgId: "org-1", userId: "user-1" });
  const sessionId = `agent_${++counter}`;
  const path = workspacePath(sandbox.key, sessionId);
  return {
    driver,
    sandbox,
    sessionId,
    path,
    host: driver.hostPath(path),
    workspace: (overrides = {}) =>
      new GitWorkspace({
        driver,
        sandbox,
        path,
        home: sessionHome(sessionId),
        url: server.repoUrl(repo),
        baseEnv: { PATH: process.env.PATH ?? "/usr/bin:/bin" },
        allowHttp: true,
        allowLoopback: true,
        timeoutMs: 20_000,
        ...overrides,
      }),
  };
}

/** Clone + prepare the session branch, as a first execution does. */
async function coldStart(env: Env, upstreamBranch?: string): Promise<GitWorkspace> {
  const ws = env.workspace();
  expect(await ws.cloneIfMissing({ credentials: CREDS })).toEqual({ cloned: true });
  await ws.prepareBranch({ sessionId: env.sessionId, upstreamBranch, credentials: CREDS, coldStart: true });
  return ws;
}

/** git on the host with no user config, for looking at workspaces and playing other clients. */
function hostGit(args: string[], cwd: string): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(
      "git",
      args,
      {
        cwd,
        env: {
          PATH: process.env.PATH,
          HOME: scratch,
          GIT_CONFIG_NOSYSTEM: "1",
          GIT_CONFIG_GLOBAL: "/dev/null",
          GIT_TERMINAL_PROMPT: "0",
          GIT_AUTHOR_NAME: "Someone Else",
          GIT_AUTHOR_EMAIL: "else@example.test",
          GIT_COMMITTER_NAME: "Someone Else",
          GIT_COMMITTER_EMAIL: "else@example.test",
        },
      },
      (err, stdout, stderr) =>
        err ? reject(new Error(`git ${args.join(" ")}: ${stderr}`)) : resolve(stdout),
    );
  });
}

/** Another client pushes a commit to `branch` (created from `from` when new); returns its sha. */
async function pushElsewhere(
  repo: string,
  opts: { branch: string; from?: string; files: Record<string, string> },
): Promise<string> {
  const dir = await mkdtemp(join(scratch, "other-"));
  await hostGit(
    ["-c", `http.extraHeader=${basicAuthHeader(USER, TOKEN)}`, "clone", "--quiet", server.repoUrl(repo), dir],
    scratch,
  );
  await hostGit(["checkout", "--quiet", "-B", opts.branch, `origin/${opts.from ?? opts.branch}`], dir);
  for (const [file, content] of Object.entries(opts.files)) await writeFile(join(dir, file), content);
  await hostGit(["add", "--all"], dir);
  await hostGit(["commit", "--quiet", "-m", `elsewhere: ${Object.keys(opts.files).join(", ")}`], dir);
  await hostGit(
    [
      "-c",
      `http.extraHeader=${basicAuthHeader(USER, TOKEN)}`,
      "push",
      "--quiet",
      "origin",
      `HEAD:${opts.branch}`,
    ],
    dir,
  );
  return (await hostGit(["rev-parse", "HEAD"], dir)).trim();
}

async function filesUnder(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    const p = join(dir, entry.name);
    if (entry.isDirectory()) out.push(...(await filesUnder(p)));
    else if (entry.isFile()) out.push(p);
  }
  return out;
}

async function catchGitError(p: Promise<unknown>): Promise<GitError> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(GitError);
  return err as GitError;
}

/** The git subcommand of a recorded exec, after the `-c` options. */
function subcommand(exec: HostExec): string | undefined {
  return exec.argv.find((a, i) => i > 0 && a !== "-c" && exec.argv[i - 1] !== "-c");
}

function expectNoSecret(text: string, ...secrets: string[]) {
  for (const s of [TOKEN, BASIC, ...secrets]) expect(text).not.toContain(s);
}

describe("cloneIfMissing", () => {
  it("clones with the token without leaving it in config, remote URL, files or argv", async () => {
    const repo = await newRepo({ "README.md": "# hello\n" });
    const env = await setup(repo);
    const ws = env.workspace();

    expect(await ws.cloneIfMissing({ credentials: CREDS })).toEqual({ cloned: true });
    expect(await readFile(join(env.host, "README.md"), "utf8")).toBe("# hello\n");
    expect(server.authAttempts.some((a) => a.password === TOKEN && a.ok)).toBe(true);

    expectNoSecret(await readFile(join(env.host, ".git/config"), "utf8"));
    const remotes = await hostGit(["remote", "-v"], env.host);
    expect(remotes).toContain(server.repoUrl(repo));
    expectNoSecret(remotes);
    for (const file of await filesUnder(env.driver.root))
      expectNoSecret((await readFile(file)).toString("latin1"));

    for (const exec of env.driver.execs) expectNoSecret(exec.argv.join(" "));
    // Only the command that talks to the remote carries the header, scoped to the server's origin.
    const withHeader = env.driver.execs.filter((e) => e.env.GIT_CONFIG_VALUE_0 !== undefined);
    expect(withHeader.map(subcommand)).toEqual(["clone"]);
    expect(withHeader[0]?.env.GIT_CONFIG_KEY_0).toBe(`http.${server.url}/.extraHeader`);
    expect(withHeader[0]?.env.GIT_CONFIG_VALUE_0).toBe(`Authorization: Basic ${BASIC}`);

    expect((await hostGit(["config", "user.name"], env.host)).trim()).toBe(IDENTITY.name);
    expect((await hostGit(["config", "user.email"], env.host)).trim()).toBe(IDENTITY.email);
    expect((await hostGit(["rev-parse", "--is-shallow-repository"], env.host)).trim()).toBe("true");

    // A later execution finds the workspace and does not touch the remote.
    const attempts = server.authAttempts.length;
    expect(await env.workspace().cloneIfMissing({ credentials: CREDS })).toEqual({ cloned: false });
    expect(server.authAttempts.length).toBe(attempts);
  });

  it("fails on a wrong token with a clean error and no partial workspace", async () => {
    const repo = await newRepo();
    const env = await setup(repo);
    const wrong: GitCredentials = { username: USER, password: "ghs_WrongTokenValue99" };

    const err = await catchGitError(env.workspace().cloneIfMissing({ credentials: wrong }));
    expect(err.step).toBe("clone");
    expect(err.message).toMatch(/authentication failed/);
    expectNoSecret(err.message, wrong.password, Buffer.from(`${USER}:${wrong.password}`).toString("base64"));
    expect(await env.driver.exists(env.sandbox, env.path)).toBe(false);
  });

  it("gives up after the timeout and leaves no partial workspace", async () => {
    const repo = await newRepo();
    const env = await setup(repo);
    const err = await catchGitError(env.workspace({ timeoutMs: 1 }).cloneIfMissing({ credentials: CREDS }));
    expect(err.step).toBe("clone");
    expect(err.message).toMatch(/timed out/);
    expect(await env.driver.exists(env.sandbox, env.path)).toBe(false);
  });

  it("replaces what an interrupted clone left behind", async () => {
    const repo = await newRepo();
    const env = await setup(repo);
    await env.driver.mkdir(env.sandbox, `${env.path}/half`);
    expect(await env.workspace().cloneIfMissing({ credentials: CREDS })).toEqual({ cloned: true });
    expect(await env.driver.exists(env.sandbox, `${env.path}/half`)).toBe(false);
  });

  it("refuses http unless allowed, loopback hosts unless allowed, and URLs with credentials", async () => {
    const repo = await newRepo();
    const env = await setup(repo);
    const url = new URL(server.repoUrl(repo));

    const http = await catchGitError((async () => env.workspace({ allowHttp: false }))());
    expect(http.message).toMatch(/only https/);

    const https = new URL(url);
    https.protocol = "https:";
    expect(() => env.workspace({ url: https.href, allowLoopback: false })).toThrow(/loopback or private/);
    expect(() => env.workspace({ url: "https://10.1.2.3/acme/x.git", allowLoopback: false })).toThrow(
      GitError,
    );
    expect(() => env.workspace({ url: "https://github.com/acme/x.git", allowLoopback: false })).not.toThrow();

    const withCreds = new URL(url);
    withCreds.username = USER;
    withCreds.password = TOKEN;
    const err = await catchGitError((async () => env.workspace({ url: withCreds.href }))());
    expect(err.message).toMatch(/must not contain credentials/);
    expectNoSecret(err.message);

    expect(env.driver.execs).toEqual([]);
  });
});

describe("prepareBranch", () => {
  it("creates session/<id> from the cloned HEAD when the remote does not have it", async () => {
    const repo = await newRepo();
    const env = await setup(repo);
    const ws = env.workspace();
    await ws.cloneIfMissing({ credentials: CREDS });
    const main = (await server.log(repo, "main"))[0]!.sha;

    const result = await ws.prepareBranch({ sessionId: env.sessionId, credentials: CREDS, coldStart: true });
    expect(result).toEqual({ branch: `session/${env.sessionId}`, created: true, head: main });
    expect((await hostGit(["symbolic-ref", "--short", "HEAD"], env.host)).trim()).toBe(
      `session/${env.sessionId}`,
    );
    expect(await server.branches(repo)).toEqual(["main"]);
  });

  it("checks out session/<id> with its commit when the remote has it", async () => {
    const repo = await newRepo();
    const env = await setup(repo);
    const sha = await pushElsewhere(repo, {
      branch: `session/${env.sessionId}`,
      from: "main",
      files: { "earlier.txt": "from an earlier sandbox\n" },
    });

    const ws = env.workspace();
    await ws.cloneIfMissing({ credentials: CREDS });
    const result = await ws.prepareBranch({ sessionId: env.sessionId, credentials: CREDS, coldStart: true });
    expect(result).toEqual({ branch: `session/${env.sessionId}`, created: false, head: sha });
    expect(await readFile(join(env.host, "earlier.txt"), "utf8")).toBe("from an earlier sandbox\n");
    expect((await hostGit(["symbolic-ref", "--short", "HEAD"], env.host)).trim()).toBe(
      `session/${env.sessionId}`,
    );
    expect((await hostGit(["rev-parse", "--abbrev-ref", "@{upstream}"], env.host)).trim()).toBe(
      `origin/session/${env.sessionId}`,
    );
  });

  it("pulls new remote commits on a later execution", async () => {
    const repo = await newRepo();
    const env = await setup(repo);
    const ws = await coldStart(env);
    await writeFile(join(env.host, "mine.txt"), "mine\n");
    await ws.commitAndPush({ message: "mine", branch: `session/${env.sessionId}`, credentials: CREDS });
    const theirs = await pushElsewhere(repo, {
      branch: `session/${env.sessionId}`,
      files: { "theirs.txt": "x\n" },
    });

    const later = env.workspace();
    expect(await later.cloneIfMissing({ credentials: CREDS })).toEqual({ cloned: false });
    const result = await later.prepareBranch({
      sessionId: env.sessionId,
      credentials: CREDS,
      coldStart: false,
    });
    expect(result).toEqual({
      branch: `session/${env.sessionId}`,
      created: false,
      head: theirs,
      pulled: { status: "fast-forward" },
    });
    expect(await readFile(join(env.host, "theirs.txt"), "utf8")).toBe("x\n");

    const again = await later.prepareBranch({
      sessionId: env.sessionId,
      credentials: CREDS,
      coldStart: false,
    });
    expect(again.pulled).toEqual({ status: "up-to-date" });
  });

  it("does not fail a later execution when the session branch was never pushed", async () => {
    const repo = await newRepo();
    const env = await setup(repo);
    await coldStart(env);

    const result = await env
      .workspace()
      .prepareBranch({ sessionId: env.sessionId, credentials: CREDS, coldStart: false });
    expect(result.created).toBe(false);
    expect(result.pulled?.status).toBe("no-remote-branch");
  });

  it("merges remote commits into unpushed local ones when they do not conflict", async () => {
    const repo = await newRepo();
    const env = await setup(repo);
    const ws = await coldStart(env);
    const branch = `session/${env.sessionId}`;
    await writeFile(join(env.host, "a.txt"), "a\n");
    await ws.commitAndPush({ message: "a", branch, credentials: CREDS });
    const theirs = await pushElsewhere(repo, { branch, files: { "theirs.txt": "theirs\n" } });
    await writeFile(join(env.host, "local.txt"), "local\n");
    await hostGit(["add", "local.txt"], env.host);
    await hostGit(["commit", "--quiet", "-m", "local"], env.host);

    const result = await env
      .workspace()
      .prepareBranch({ sessionId: env.sessionId, credentials: CREDS, coldStart: false });
    expect(result.pulled).toEqual({ status: "merged" });
    expect(await readFile(join(env.host, "theirs.txt"), "utf8")).toBe("theirs\n");
    expect(await readFile(join(env.host, "local.txt"), "utf8")).toBe("local\n");
    const parents = (await hostGit(["log", "-1", "--format=%P %an <%ae>"], env.host)).trim();
    expect(parents).toContain(theirs);
    expect(parents).toContain(`${IDENTITY.name} <${IDENTITY.email}>`);
  });

  it("reports a conflicting pull and leaves the workspace as it was", async () => {
    const repo = await newRepo({ "README.md": "base\n" });
    const env = await setup(repo);
    const ws = await coldStart(env);
    const branch = `session/${env.sessionId}`;
    await writeFile(join(env.host, "README.md"), "pushed\n");
    await ws.commitAndPush({ message: "pushed", branch, credentials: CREDS });
    await pushElsewhere(repo, { branch, files: { "README.md": "theirs\n" } });
    // A local commit the agent made but never pushed, touching the same line.
    await writeFile(join(env.host, "README.md"), "local\n");
    await hostGit(["commit", "--quiet", "-am", "local"], env.host);
    const before = (await hostGit(["rev-parse", "HEAD"], env.host)).trim();

    const result = await env
      .workspace()
      .prepareBranch({ sessionId: env.sessionId, credentials: CREDS, coldStart: false });
    expect(result.pulled?.status).toBe("conflict");
    expect(result.head).toBe(before);
    expect(await readFile(join(env.host, "README.md"), "utf8")).toBe("local\n");
    expect(await env.driver.exists(env.sandbox, `${env.path}/.git/MERGE_HEAD`)).toBe(false);
  });

  it("checks out an existing upstreamBranch and does not pull it later", async () => {
    const repo = await newRepo();
    const env = await setup(repo);
    const sha = await pushElsewhere(repo, { branch: "develop", from: "main", files: { "dev.txt": "dev\n" } });

    const ws = env.workspace();
    await ws.cloneIfMissing({ credentials: CREDS });
    const result = await ws.prepareBranch({
      sessionId: env.sessionId,
      upstreamBranch: "develop",
      credentials: CREDS,
      coldStart: true,
    });
    expect(result).toEqual({ branch: "develop", created: false, head: sha });
    expect(await readFile(join(env.host, "dev.txt"), "utf8")).toBe("dev\n");

    await pushElsewhere(repo, { branch: "develop", files: { "later.txt": "later\n" } });
    const attempts = server.authAttempts.length;
    const later = await env.workspace().prepareBranch({
      sessionId: env.sessionId,
      upstreamBranch: "develop",
      credentials: CREDS,
      coldStart: false,
    });
    expect(later).toEqual({ branch: "develop", created: false, head: sha });
    expect(server.authAttempts.length).toBe(attempts);
    expect(await env.driver.exists(env.sandbox, `${env.path}/later.txt`)).toBe(false);
  });

  it("checks out the default branch as upstreamBranch", async () => {
    const repo = await newRepo();
    const env = await setup(repo);
    const ws = await coldStart(env, "main");
    expect((await hostGit(["symbolic-ref", "--short", "HEAD"], env.host)).trim()).toBe("main");
    expect(ws).toBeInstanceOf(GitWorkspace);
  });

  it("throws when upstreamBranch does not exist on the remote, and pushes nothing", async () => {
    const repo = await newRepo();
    const env = await setup(repo);
    const ws = env.workspace();
    await ws.cloneIfMissing({ credentials: CREDS });

    const err = await catchGitError(
      ws.prepareBranch({
        sessionId: env.sessionId,
        upstreamBranch: "nope",
        credentials: CREDS,
        coldStart: true,
      }),
    );
    expect(err.step).toBe("branch");
    expect(err.message).toBe("branch nope does not exist on the remote");
    expect(await server.branches(repo)).toEqual(["main"]);
  });

  it("rejects branch names git could read as options or revisions", async () => {
    const repo = await newRepo();
    const env = await setup(repo);
    const ws = env.workspace();
    for (const upstreamBranch of ["-f", "a..b", "x@{1}", "a b", "feature/.hidden", "x.lock"]) {
      const err = await catchGitError(
        ws.prepareBranch({ sessionId: env.sessionId, upstreamBranch, coldStart: true }),
      );
      expect(err.message).toMatch(/not a valid branch name/);
    }
    expect(env.driver.execs).toEqual([]);
  });
});

describe("commitAndPush", () => {
  it("commits new and modified files as Kilo Code Cloud and pushes them to session/<id>", async () => {
    const repo = await newRepo({ "README.md": "# one\n" });
    const env = await setup(repo);
    const ws = await coldStart(env);
    const branch = `session/${env.sessionId}`;
    await writeFile(join(env.host, "README.md"), "# two\n");
    await writeFile(join(env.host, "new-file.ts"), "export const x = 1;\n");

    const result = await ws.commitAndPush({ message: "Kilo changes\n\nbody", branch, credentials: CREDS });
    expect(result).toEqual({ committed: true, sha: expect.stringMatching(/^[0-9a-f]{40}$/), branch });
    const [head] = await server.log(repo, branch);
    expect(head).toMatchObject({
      sha: result.committed ? result.sha : "",
      author: IDENTITY,
      subject: "Kilo changes",
    });
    expect(await server.readFile(repo, branch, "README.md")).toBe("# two\n");
    expect(await server.readFile(repo, branch, "new-file.ts")).toBe("export const x = 1;\n");
    expect(await server.readFile(repo, "main", "README.md")).toBe("# one\n");

    const push = env.driver.execs.find((e) => e.argv.includes("push"))!;
    expect(push.argv.some((a) => a === "--force" || a === "-f" || a.startsWith("+"))).toBe(false);
    for (const exec of env.driver.execs) {
      expect(exec.argv.slice(0, 3)).toEqual(["git", "-c", "core.hooksPath=/dev/null"]);
      expectNoSecret(exec.argv.join(" "));
    }
    for (const file of await filesUnder(env.driver.root))
      expectNoSecret((await readFile(file)).toString("latin1"));
  });

  it("does not commit or push when nothing changed", async () => {
    const repo = await newRepo();
    const env = await setup(repo);
    const ws = await coldStart(env);
    const attempts = server.authAttempts.length;
    const head = (await hostGit(["rev-parse", "HEAD"], env.host)).trim();

    expect(
      await ws.commitAndPush({ message: "x", branch: `session/${env.sessionId}`, credentials: CREDS }),
    ).toEqual({
      committed: false,
    });
    expect((await hostGit(["rev-parse", "HEAD"], env.host)).trim()).toBe(head);
    expect(server.authAttempts.length).toBe(attempts);
    expect(await server.branches(repo)).toEqual(["main"]);
  });

  it("refuses main unless allowed", async () => {
    const repo = await newRepo({ "README.md": "# one\n" });
    const env = await setup(repo);
    const ws = await coldStart(env, "main");
    const before = (await server.log(repo, "main"))[0]!.sha;
    await writeFile(join(env.host, "README.md"), "# changed\n");

    const err = await catchGitError(ws.commitAndPush({ message: "x", branch: "main", credentials: CREDS }));
    expect(err.step).toBe("push");
    expect(err.message).toMatch(/protected branch main/);
    expect((await server.log(repo, "main"))[0]!.sha).toBe(before);

    const ok = await ws.commitAndPush({
      message: "x",
      branch: "main",
      credentials: CREDS,
      allowProtectedBranch: true,
    });
    expect(ok.committed).toBe(true);
    expect(await server.readFile(repo, "main", "README.md")).toBe("# changed\n");
  });

  it("rejects a non-fast-forward push instead of forcing it", async () => {
    const repo = await newRepo();
    const env = await setup(repo);
    const ws = await coldStart(env);
    const branch = `session/${env.sessionId}`;
    await writeFile(join(env.host, "a.txt"), "a\n");
    await ws.commitAndPush({ message: "a", branch, credentials: CREDS });
    const theirs = await pushElsewhere(repo, { branch, files: { "b.txt": "b\n" } });

    await writeFile(join(env.host, "c.txt"), "c\n");
    const err = await catchGitError(ws.commitAndPush({ message: "c", branch, credentials: CREDS }));
    expect(err.step).toBe("push");
    expect(err.message).toMatch(/rejected.*non-fast-forward/);
    expectNoSecret(err.message);
    expect((await server.log(repo, branch))[0]!.sha).toBe(theirs);
  });

  it("fails a push with a wrong token without leaking it", async () => {
    const repo = await newRepo();
    const env = await setup(repo);
    const ws = await coldStart(env);
    await writeFile(join(env.host, "a.txt"), "a\n");
    const wrong = githubInstallationCredentials("ghs_ExpiredTokenValue77");

    const err = await catchGitError(
      ws.commitAndPush({ message: "a", branch: `session/${env.sessionId}`, credentials: wrong }),
    );
    expect(err.step).toBe("push");
    expect(err.message).toMatch(/authentication failed/);
    expectNoSecret(err.message, wrong.password);
    expect(await server.branches(repo)).toEqual(["main"]);
  });

  it("runs no repository hooks", async () => {
    const repo = await newRepo();
    const env = await setup(repo);
    const ws = await coldStart(env);
    const marker = join(env.driver.root, "hook-ran");
    for (const hook of ["pre-commit", "commit-msg", "post-commit", "pre-push"]) {
      const file = join(env.host, ".git/hooks", hook);
      await writeFile(file, `#!/bin/sh\nenv >> "${marker}"\nexit 1\n`);
      await chmod(file, 0o755);
    }
    await writeFile(join(env.host, "a.txt"), "a\n");

    const result = await ws.commitAndPush({
      message: "a",
      branch: `session/${env.sessionId}`,
      credentials: CREDS,
    });
    expect(result.committed).toBe(true);
    await expect(readFile(marker)).rejects.toThrow();
  });

  it("refuses to use credentials when the repository config could redirect them", async () => {
    const repo = await newRepo();
    const env = await setup(repo);
    const ws = await coldStart(env);
    const branch = `session/${env.sessionId}`;
    await hostGit(["config", `http.${server.url}/.proxy`, "http://127.0.0.1:9"], env.host);
    await writeFile(join(env.host, "a.txt"), "a\n");
    const attempts = server.authAttempts.length;

    const err = await catchGitError(ws.commitAndPush({ message: "a", branch, credentials: CREDS }));
    expect(err.step).toBe("push");
    expect(err.message).toMatch(/\.proxy/);
    const pulled = await env
      .workspace()
      .prepareBranch({ sessionId: env.sessionId, credentials: CREDS, coldStart: false });
    expect(pulled.pulled?.status).toBe("failed");
    expect(server.authAttempts.length).toBe(attempts);
    expect(env.driver.execs.filter((e) => e.env.GIT_CONFIG_VALUE_0 !== undefined).map(subcommand)).toEqual([
      "clone",
      "ls-remote",
    ]);
  });
});
