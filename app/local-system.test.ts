import { type ChildProcess, spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  freePort,
  type GitServer,
  type ModelServer,
  startGitServer,
  startModelServer,
} from "@kilo-cloud/testing";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

/**
 * `npm start` as a user runs it: a child process with no DATABASE_URL or NATS_URL (embedded
 * PostgreSQL, events in it), driven by the kilo-cloud CLI binary, with the real kilo and a
 * scripted model. Then a restart: the session and its events are still there.
 */

const ROOT = join(import.meta.dirname, "..");

function cleanEnv(extra: Record<string, string>): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env, ...extra };
  delete env.DATABASE_URL;
  delete env.NATS_URL;
  delete env.KILO_TOKEN;
  delete env.KILO_CLOUD_URL;
  return env;
}

async function startSystem(env: NodeJS.ProcessEnv): Promise<{ proc: ChildProcess; output: () => string }> {
  const proc = spawn(process.execPath, ["--import", "tsx", "scripts/start.ts"], {
    cwd: ROOT,
    env,
    stdio: ["ignore", "pipe", "pipe"],
  });
  let out = "";
  proc.stdout?.on("data", (d: Buffer) => {
    out += d.toString();
  });
  proc.stderr?.on("data", (d: Buffer) => {
    out += d.toString();
  });
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`npm start did not come up:\n${out}`)), 150_000);
    const check = setInterval(() => {
      if (out.includes("Kilo Cloud Agent listening on")) {
        clearTimeout(timer);
        clearInterval(check);
        resolve();
      }
    }, 100);
    proc.once("exit", (code) => {
      clearTimeout(timer);
      clearInterval(check);
      reject(new Error(`npm start exited with ${code}:\n${out}`));
    });
  });
  return { proc, output: () => out };
}

async function stopSystem(proc: ChildProcess): Promise<number | null> {
  if (proc.exitCode !== null) return proc.exitCode;
  return new Promise((resolve) => {
    proc.once("exit", (code) => resolve(code));
    proc.kill("SIGTERM");
  });
}

/** Runs the CLI; with `stopAfterLines`, interrupts it once that many stdout lines came. */
async function cli(
  args: string[],
  env: NodeJS.ProcessEnv,
  stopAfterLines?: number,
): Promise<{ code: number | null; lines: string[]; stderr: string }> {
  const proc = spawn(process.execPath, [join(ROOT, "bin", "kilo-cloud.js"), ...args], {
    cwd: ROOT,
    env,
    stdio: ["ignore", "pipe", "pipe"],
  });
  let buffer = "";
  let stderr = "";
  const lines: string[] = [];
  proc.stdout?.on("data", (d: Buffer) => {
    buffer += d.toString();
    const parts = buffer.split("\n");
    buffer = parts.pop() ?? "";
    lines.push(...parts.filter((l) => l !== ""));
    if (stopAfterLines !== undefined && lines.length >= stopAfterLines) proc.kill("SIGINT");
  });
  proc.stderr?.on("data", (d: Buffer) => {
    stderr += d.toString();
  });
  const code = await new Promise<number | null>((resolve) => proc.once("exit", (c) => resolve(c)));
  return { code, lines, stderr };
}

describe("npm start (embedded) with the CLI", { timeout: 420_000 }, () => {
  let model: ModelServer;
  let git: GitServer;
  let dataDir: string;
  let env: NodeJS.ProcessEnv;
  let system: { proc: ChildProcess; output: () => string } | undefined;

  beforeAll(async () => {
    model = await startModelServer({ apiKey: "sk-local" });
    git = await startGitServer();
    await git.createBareRepo("local/app", { files: { "README.md": "# app\n" } });
    dataDir = mkdtempSync(join(tmpdir(), "kc-local-"));
    env = cleanEnv({
      PORT: String(await freePort()),
      KILO_CLOUD_DATA_DIR: dataDir,
      KILO_PROVIDER: "openai-compatible",
      KILO_PROVIDER_BASE_URL: model.url,
      KILO_PROVIDER_API_KEY: "sk-local",
      GIT_ALLOW_INSECURE: "true",
      // The git fixture is on loopback: sandboxes reach it through the fence by this entry.
      SANDBOX_EGRESS_ALLOW: new URL(git.url).host,
      SESSION_OUTBOUND_ALLOW_HOSTS: "127.0.0.1",
      LOG_LEVEL: "warn",
    });
  });
  afterAll(async () => {
    if (system) await stopSystem(system.proc);
    await model?.close();
    await git?.close();
    if (dataDir) rmSync(dataDir, { recursive: true, force: true });
  });

  it("runs a session through the CLI, then after a restart still has the session and replays the same events", async () => {
    system = await startSystem(env);
    expect(system.output()).toContain("mode: embedded PostgreSQL (PGlite), events on PostgreSQL");
    // The key of encrypted secrets: generated once, private half only in secrets.json (0600).
    const keyPath = join(dataDir, "agent-env-vars-public-key.pem");
    expect(system.output()).toContain(keyPath);
    expect(readFileSync(keyPath, "utf8")).toContain("BEGIN PUBLIC KEY");
    expect(statSync(join(dataDir, "secrets.json")).mode & 0o777).toBe(0o600);
    const config = join(dataDir, "cli.json");

    const run = await cli(
      [
        "run",
        "--config",
        config,
        "--git-url",
        git.repoUrl("local/app"),
        "--prompt",
        "Write a greeting",
        "--model",
        "mock-model",
        "--auto-commit",
        "--json",
      ],
      env,
    );
    expect(run.stderr).toBe("");
    expect(run.code).toBe(0);
    const events = run.lines.map(
      (l) => JSON.parse(l) as { id: string; streamEventType: string; cloudAgentSessionId: string },
    );
    expect(events.at(-1)?.streamEventType).toBe("complete");
    expect(events.some((e) => e.streamEventType === "kilocode")).toBe(true);
    const sessionId = events[0]!.cloudAgentSessionId;
    expect((await git.branches("local/app")).includes(`session/${sessionId}`)).toBe(true);

    expect(await stopSystem(system.proc)).toBe(0);
    system = await startSystem(env);

    const got = await cli(["get", sessionId, "--config", config, "--json"], env);
    expect(got.code).toBe(0);
    const session = JSON.parse(got.lines[0] ?? "{}") as {
      cloudAgentSessionId: string;
      state: number;
      queueLength: number;
    };
    expect(session.cloudAgentSessionId).toBe(sessionId);
    expect(session.state).toBe(2); // INITIATED
    expect(session.queueLength).toBe(0);

    // `watch` replays the whole session: the same events, ids and payloads.
    const replay = await cli(["watch", sessionId, "--config", config, "--json"], env, run.lines.length);
    expect(replay.lines.slice(0, run.lines.length)).toEqual(run.lines);

    const ls = await cli(["ls", "--config", config], env);
    expect(ls.lines.some((l) => l.startsWith(sessionId))).toBe(true);
  });
});
