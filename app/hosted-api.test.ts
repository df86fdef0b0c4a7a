import { type ChildProcess, spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { freePort, type GitServer, startGitServer } from "@kilo-cloud/testing";
import { createTRPCClient, httpBatchLink } from "@trpc/client";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import WebSocket from "ws";
import type { CloudAgentRouter } from "../services/gateway/src/trpc/router.js";

/**
 * The hosted product's API as deployed by `npm start` (a child process, embedded
 * PostgreSQL, events in it): /trpc, the hosted ticket path and /stream on the one port.
 */

const ROOT = join(import.meta.dirname, "..");

async function startSystem(env: NodeJS.ProcessEnv): Promise<ChildProcess> {
  const proc = spawn(process.execPath, ["--import", "tsx", "scripts/start.ts"], {
    cwd: ROOT,
    env,
    stdio: ["ignore", "pipe", "pipe"],
  });
  let out = "";
  const append = (d: Buffer) => {
    out += d.toString();
  };
  proc.stdout?.on("data", append);
  proc.stderr?.on("data", append);
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`npm start did not come up:\n${out}`)), 150_000);
    const check = setInterval(() => {
      if (!out.includes("Kilo Cloud Agent listening on")) return;
      clearTimeout(timer);
      clearInterval(check);
      resolve();
    }, 100);
    proc.once("exit", (code) => {
      clearTimeout(timer);
      clearInterval(check);
      reject(new Error(`npm start exited with ${code}:\n${out}`));
    });
  });
  return proc;
}

/** Opens /stream; resolves with the HTTP status of the handshake (101 when upgraded). */
function handshake(url: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url);
    ws.once("open", () => {
      ws.close();
      resolve(101);
    });
    ws.once("unexpected-response", (_req, res) => {
      res.resume();
      resolve(res.statusCode ?? 0);
    });
    ws.once("error", reject);
  });
}

describe("npm start serves the hosted product's API", { timeout: 240_000 }, () => {
  let git: GitServer;
  let dataDir: string;
  let proc: ChildProcess | undefined;
  let port: number;

  beforeAll(async () => {
    git = await startGitServer();
    await git.createBareRepo("local/app", { files: { "README.md": "# app\n" } });
    dataDir = mkdtempSync(join(tmpdir(), "kc-hosted-"));
    port = await freePort();
    const env: NodeJS.ProcessEnv = { ...process.env, PORT: String(port), KILO_CLOUD_DATA_DIR: dataDir };
    env.LOG_LEVEL = "warn";
    env.GIT_ALLOW_INSECURE = "true";
    // The git fixture is on loopback: the session service accepts its URL, and the fenced
    // sandboxes reach that one port, as an operator would allow a local git server.
    env.SESSION_OUTBOUND_ALLOW_HOSTS = "127.0.0.1";
    env.SANDBOX_EGRESS_ALLOW = new URL(git.url).host;
    delete env.DATABASE_URL;
    delete env.NATS_URL;
    proc = await startSystem(env);
  });
  afterAll(async () => {
    if (proc && proc.exitCode === null) {
      const exited = new Promise((r) => proc?.once("exit", r));
      proc.kill("SIGTERM");
      await exited;
    }
    await git?.close();
    if (dataDir) rmSync(dataDir, { recursive: true, force: true });
  });

  it("/trpc, /api/cloud-agent/sessions/stream-ticket and /stream", async () => {
    const { url, token, internalKey } = JSON.parse(readFileSync(join(dataDir, "cli.json"), "utf8")) as {
      url: string;
      token: string;
      internalKey: string;
    };
    const client = createTRPCClient<CloudAgentRouter>({
      links: [
        httpBatchLink({
          url: `${url}/trpc`,
          headers: { Authorization: `Bearer ${token}`, "x-internal-api-key": internalKey },
        }),
      ],
    });
    expect((await client.health.query()).status).toBe("ok");
    const { cloudAgentSessionId } = await client.prepareSession.mutate({
      gitUrl: git.repoUrl("local/app"),
      prompt: "Write a greeting",
      mode: "code",
      model: "mock-model",
    });
    expect((await client.getSession.query({ cloudAgentSessionId })).execution).toBeNull();
    const res = await fetch(`${url}/api/cloud-agent/sessions/stream-ticket`, {
      method: "POST",
      headers: { "content-type": "application/json", authorization: `Bearer ${token}` },
      body: JSON.stringify({ cloudAgentSessionId }),
    });
    const { ticket } = (await res.json()) as { ticket: string };
    const ws = `${url.replace(/^http/, "ws")}/stream?cloudAgentSessionId=${cloudAgentSessionId}`;
    expect(await handshake(`${ws}&ticket=${ticket}`)).toBe(101);
    expect(await handshake(`${ws}&ticket=not-a-ticket`)).toBe(401);
  });
});
