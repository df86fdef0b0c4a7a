import { execFile } from "node:child_process";
import { chmod, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { gzipSync } from "node:zlib";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { basicAuthHeader, type GitServer, startGitServer } from "./git-server.js";

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

let scratch: string;
let askpass: string;

beforeAll(async () => {
  scratch = await mkdtemp(join(tmpdir(), "kc-git-test-"));
  // Credentials reach git through its askpass hook, never through the URL.
  askpass = join(scratch, "askpass.sh");
  await writeFile(
    askpass,
    '#!/bin/sh\ncase "$1" in\n  Username*) printf "%s\\n" "$TEST_GIT_USER" ;;\n  *) printf "%s\\n" "$TEST_GIT_PASS" ;;\nesac\n',
  );
  await chmod(askpass, 0o755);
});

afterAll(async () => {
  await rm(scratch, { recursive: true, force: true });
});

/** A git client with no user config, no prompts, and optional extra env. */
function git(args: string[], opts: { cwd?: string; env?: Record<string, string> } = {}): Promise<Run> {
  return new Promise((resolve) => {
    execFile(
      "git",
      args,
      {
        cwd: opts.cwd ?? scratch,
        env: {
          PATH: process.env.PATH,
          HOME: scratch,
          GIT_CONFIG_NOSYSTEM: "1",
          GIT_CONFIG_GLOBAL: "/dev/null",
          GIT_TERMINAL_PROMPT: "0",
          GIT_AUTHOR_NAME: "Tester",
          GIT_AUTHOR_EMAIL: "tester@example.test",
          GIT_COMMITTER_NAME: "Tester",
          GIT_COMMITTER_EMAIL: "tester@example.test",
          ...opts.env,
        },
      },
      (err, stdout, stderr) => {
        const code = err ? (typeof err.code === "number" ? err.code : 1) : 0;
        resolve({ code, stdout, stderr });
      },
    );
  });
}

let dirCounter = 0;
const freshDir = () => join(scratch, `clone-${++dirCounter}`);

describe("git server with a fixed username and password", () => {
  let server: GitServer;

  beforeAll(async () => {
    server = await startGitServer({ auth: { username: "x-access-token", password: "ghs_right" } });
    await server.createBareRepo("acme/widgets", {
      files: { "README.md": "# widgets\n", "src/deep/index.ts": "export const x = 1;\n" },
    });
  });
  afterAll(() => server.close());

  it("clones with a token given as an extra header, and records the token", async () => {
    const dir = freshDir();
    const header = basicAuthHeader("x-access-token", "ghs_right");
    const run = await git(["-c", `http.extraHeader=${header}`, "clone", server.repoUrl("acme/widgets"), dir]);
    expect(run.stderr).not.toContain("fatal");
    expect(run.code).toBe(0);
    expect(await readFile(join(dir, "src/deep/index.ts"), "utf8")).toBe("export const x = 1;\n");
    expect((await git(["rev-parse", "--abbrev-ref", "HEAD"], { cwd: dir })).stdout.trim()).toBe("main");
    expect(server.authAttempts.some((a) => a.password === "ghs_right" && a.ok && !a.write)).toBe(true);
  });

  it("refuses wrong credentials and anonymous access", async () => {
    const before = server.authAttempts.length;
    const run = await git(["clone", server.repoUrl("acme/widgets"), freshDir()], {
      env: { GIT_ASKPASS: askpass, TEST_GIT_USER: "x-access-token", TEST_GIT_PASS: "ghs_wrong" },
    });
    expect(run.code).not.toBe(0);
    expect(run.stderr).toMatch(/Authentication failed|401/);
    const attempts = server.authAttempts.slice(before);
    expect(attempts.length).toBeGreaterThan(0);
    expect(attempts.every((a) => !a.ok && a.password === "ghs_wrong")).toBe(true);

    const anonymous = await fetch(`${server.repoUrl("acme/widgets")}/info/refs?service=git-upload-pack`);
    expect(anonymous.status).toBe(401);
    expect(anonymous.headers.get("www-authenticate")).toMatch(/^Basic realm="/);
    const noCreds = await git(["ls-remote", server.repoUrl("acme/widgets")]);
    expect(noCreds.code).not.toBe(0);
  });

  it("accepts a push of a new branch (askpass credentials) and shows it", async () => {
    const creds = { GIT_ASKPASS: askpass, TEST_GIT_USER: "x-access-token", TEST_GIT_PASS: "ghs_right" };
    const dir = freshDir();
    expect((await git(["clone", server.repoUrl("acme/widgets"), dir], { env: creds })).code).toBe(0);
    await git(["checkout", "-b", "kilo/feature"], { cwd: dir });
    await writeFile(join(dir, "hello.txt"), "hello from kilo\n");
    await git(["add", "hello.txt"], { cwd: dir });
    await git(["commit", "-m", "Add hello", "-m", "Body line."], { cwd: dir });
    const push = await git(["push", "origin", "kilo/feature"], { cwd: dir, env: creds });
    expect(push.stderr).not.toContain("fatal");
    expect(push.code).toBe(0);

    expect((await server.branches("acme/widgets")).sort()).toEqual(["kilo/feature", "main"]);
    expect(await server.readFile("acme/widgets", "kilo/feature", "hello.txt")).toBe("hello from kilo\n");
    expect(await server.readFile("acme/widgets", "main", "hello.txt")).toBeUndefined();
    expect(await server.readFile("acme/widgets", "no-such-branch", "README.md")).toBeUndefined();
    const log = await server.log("acme/widgets", "kilo/feature");
    expect(log.map((c) => c.subject)).toEqual(["Add hello", "Initial commit"]);
    expect(log[0]).toMatchObject({
      author: { name: "Tester", email: "tester@example.test" },
      message: "Add hello\n\nBody line.",
    });
    expect(log[0]?.sha).toMatch(/^[0-9a-f]{40}$/);
    expect(server.authAttempts.some((a) => a.write && a.ok)).toBe(true);
  });

  it("inflates gzip request bodies", async () => {
    const [head] = await server.log("acme/widgets", "main");
    const pkt = (s: string) => `${(s.length + 4).toString(16).padStart(4, "0")}${s}`;
    const body = gzipSync(`${pkt(`want ${head!.sha}\n`)}0000${pkt("done\n")}`);
    const res = await fetch(`${server.repoUrl("acme/widgets")}/git-upload-pack`, {
      method: "POST",
      headers: {
        authorization: basicAuthHeader("x-access-token", "ghs_right").slice("Authorization: ".length),
        "content-type": "application/x-git-upload-pack-request",
        "content-encoding": "gzip",
      },
      body,
    });
    expect(res.status).toBe(200);
    expect(res.headers.get("content-type")).toBe("application/x-git-upload-pack-result");
    const bytes = Buffer.from(await res.arrayBuffer());
    expect(bytes.subarray(0, 8).toString()).toBe("0008NAK\n");
    expect(bytes.includes(Buffer.from("PACK"))).toBe(true);
  });

  it("answers 404 for a repository that does not exist", async () => {
    const res = await fetch(`${server.url}/acme/nothing.git/info/refs?service=git-upload-pack`, {
      headers: {
        authorization: basicAuthHeader("x-access-token", "ghs_right").slice("Authorization: ".length),
      },
    });
    expect(res.status).toBe(404);
  });
});

describe("git server with a checkPassword callback", () => {
  it("can grant read but refuse push per token and repository", async () => {
    await using server = await startGitServer({
      auth: {
        checkPassword: (user, pass, access) =>
          user === "bot" && access.repo === "team/app" && (pass === "rw" || (pass === "ro" && !access.write)),
      },
    });
    await server.createBareRepo("team/app", { branch: "trunk", files: { "a.txt": "a\n" } });
    expect(await server.branches("team/app")).toEqual(["trunk"]);

    const ro = { GIT_ASKPASS: askpass, TEST_GIT_USER: "bot", TEST_GIT_PASS: "ro" };
    const dir = freshDir();
    expect((await git(["clone", server.repoUrl("team/app"), dir], { env: ro })).code).toBe(0);
    await writeFile(join(dir, "b.txt"), "b\n");
    await git(["add", "b.txt"], { cwd: dir });
    await git(["commit", "-m", "b"], { cwd: dir });
    expect((await git(["push", "origin", "trunk"], { cwd: dir, env: ro })).code).not.toBe(0);
    expect(await server.readFile("team/app", "trunk", "b.txt")).toBeUndefined();

    const rw = { ...ro, TEST_GIT_PASS: "rw" };
    expect((await git(["push", "origin", "trunk"], { cwd: dir, env: rw })).code).toBe(0);
    expect(await server.readFile("team/app", "trunk", "b.txt")).toBe("b\n");
  });

  it("serves an empty repository that accepts a first push", async () => {
    await using server = await startGitServer();
    await server.createBareRepo("open/empty", { empty: true });
    expect(await server.branches("open/empty")).toEqual([]);
    const dir = freshDir();
    await git(["init", "--initial-branch=main", dir]);
    await writeFile(join(dir, "x.txt"), "x\n");
    await git(["add", "x.txt"], { cwd: dir });
    await git(["commit", "-m", "first"], { cwd: dir });
    const push = await git(["push", server.repoUrl("open/empty"), "main"], { cwd: dir });
    expect(push.code).toBe(0);
    expect(await server.log("open/empty", "main")).toHaveLength(1);
  });

  it("rejects repository names that escape the root", async () => {
    await using server = await startGitServer();
    await expect(server.createBareRepo("../evil")).rejects.toThrow(/invalid repository name/);
    expect(() => server.repoUrl("a/../../b")).toThrow(/invalid repository name/);
  });
});
