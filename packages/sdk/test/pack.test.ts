import { execFile } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  type FullStack,
  GIT_TOKEN,
  INTERNAL_KEY,
  startFullStack,
} from "../../../services/gateway/test/support/full-stack.js";

/**
 * What a user gets from npm: the SDK and the CLI built, packed (`npm pack`) and installed from
 * their tarballs into an empty directory outside the repository (their dependencies from the
 * registry), then the README's SDK example and `kilo-cloud run` from that directory against the
 * whole system (a replayer of captured kilo output stands in for the model).
 */

const ROOT = join(import.meta.dirname, "..", "..", "..");
const run = promisify(execFile);

/** The environment of a user's shell: nothing of this repository's npm run. */
function userEnv(extra: Record<string, string>): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env))
    if (!/^(npm_|NODE_OPTIONS|VITEST|KILO_)/i.test(k)) env[k] = v;
  return { ...env, ...extra };
}

/** The README's SDK example, exactly as written there. */
function readmeExample(): string {
  const readme = readFileSync(join(ROOT, "README.md"), "utf8");
  const block = /<!-- sdk-example:start[^>]*-->\s*```js\n([\s\S]*?)```\s*<!-- sdk-example:end -->/.exec(
    readme,
  );
  if (!block?.[1]) throw new Error("README.md has no sdk-example block");
  return block[1];
}

describe("the SDK and the CLI as installed from their packages", { timeout: 600_000 }, () => {
  let stack: FullStack;
  let work: string;
  let app: string;

  beforeAll(async () => {
    work = mkdtempSync(join(tmpdir(), "kc-pack-"));
    app = join(work, "app");
    await run("npm", ["run", "build:client"], { cwd: ROOT, env: userEnv({}), timeout: 300_000 });
    await run("npm", ["pack", "-w", "@kilo-cloud/sdk", "-w", "@kilo-cloud/cli", "--pack-destination", work], {
      cwd: ROOT,
      env: userEnv({}),
      timeout: 120_000,
    });
    const tarballs = readdirSync(work).filter((f) => f.endsWith(".tgz"));
    expect(tarballs.sort()).toEqual(["kilo-cloud-cli-0.1.0.tgz", "kilo-cloud-sdk-0.1.0.tgz"]);
    // An empty project of a user, far from this repository.
    await run("mkdir", [app]);
    writeFileSync(
      join(app, "package.json"),
      JSON.stringify({ name: "user-app", private: true, type: "module" }),
    );
    await run(
      "npm",
      ["install", "--prefer-offline", "--no-audit", "--no-fund", ...tarballs.map((t) => join(work, t))],
      { cwd: app, env: userEnv({}), timeout: 300_000 },
    );
    stack = await startFullStack({ kilo: { replay: "stream-write-tool.jsonl" } });
  }, 600_000); // two compilations, a pack and an install: slow on a cold cache and a busy machine

  afterAll(async () => {
    await stack?.[Symbol.asyncDispose]();
    if (work) rmSync(work, { recursive: true, force: true });
  }, 120_000);

  it("installs nothing of the server, only the client and its dependencies", () => {
    const installed = readdirSync(join(app, "node_modules", "@kilo-cloud")).sort();
    expect(installed).toEqual(["cli", "sdk"]);
    const lock = readFileSync(join(app, "package-lock.json"), "utf8");
    for (const server of ["pg", "nats", "@kilo-cloud/proto", "@kilo-cloud/gateway", "tsx", "jose"])
      expect(lock).not.toContain(`"node_modules/${server}"`);
  });

  it("gives TypeScript users types through the exports map", async () => {
    writeFileSync(
      join(app, "typed.ts"),
      [
        'import { createKiloCloudClient, type Event, EventType, SessionState } from "@kilo-cloud/sdk";',
        'const kilo = createKiloCloudClient({ baseUrl: "http://127.0.0.1:8080", getToken: async () => "t" });',
        "export async function last(id: string): Promise<Event | undefined> {",
        "  let seen: Event | undefined;",
        "  for await (const e of kilo.subscribe(id, { types: [EventType.COMPLETE], fromId: 1n })) seen = e;",
        "  const { session } = await kilo.sessions.getSession({ cloudAgentSessionId: id });",
        "  return session?.state === SessionState.INITIATED ? seen : undefined;",
        "}",
        "// @ts-expect-error: a typo in a request field is a type error",
        'kilo.sessions.getSession({ cloudAgentSessionID: "x" });',
      ].join("\n"),
    );
    // The repository's compiler as a tool; the types come from the installed package only.
    const tsc = join(ROOT, "node_modules", "typescript", "bin", "tsc");
    const flags = ["--noEmit", "--strict", "--module", "nodenext", "--moduleResolution", "nodenext"];
    await run("node", [tsc, ...flags, "--target", "es2022", "--lib", "es2023,dom", "typed.ts"], {
      cwd: app,
      timeout: 120_000,
    });
  });

  it("runs the README's SDK example against a running system", async () => {
    writeFileSync(join(app, "example.mjs"), readmeExample());
    const token = await stack.login("pack-user");
    const { stdout } = await run("node", ["example.mjs"], {
      cwd: app,
      timeout: 240_000,
      env: userEnv({
        KILO_CLOUD_URL: stack.gatewayUrl,
        KILO_TOKEN: token,
        KILO_INTERNAL_KEY: INTERNAL_KEY,
        KILO_GITHUB_TOKEN: GIT_TOKEN,
        KILO_CLOUD_MODEL: "mock-model",
      }),
    });
    const lines = stdout.trim().split("\n");
    const events = lines.slice(0, -1).map((l) => l.split(" "));
    expect(events.at(-1)?.[1]).toBe("complete");
    expect(events.some(([, type]) => type === "kilocode")).toBe(true);
    const ids = events.map(([id]) => BigInt(id ?? "0"));
    expect(ids).toEqual([...ids].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0)));
    expect(new Set(ids).size).toBe(ids.length);
    expect(lines.at(-1)).toMatch(/^agent_\S+ 0$/);
  });

  it("runs the installed kilo-cloud: --version, and run to the end, printing the events", async () => {
    const bin = join(app, "node_modules", ".bin", "kilo-cloud");
    expect((await run(bin, ["--version"], { cwd: app, env: userEnv({}) })).stdout.trim()).toBe("0.1.0");
    expect((await run(bin, ["run", "--help"], { cwd: app, env: userEnv({}) })).stdout).toMatch(
      /^usage: kilo-cloud run /,
    );
    expect((await run(bin, ["completion", "zsh"], { cwd: app, env: userEnv({}) })).stdout).toContain(
      "compdef _kilo_cloud kilo-cloud",
    );
    const token = await stack.login("pack-cli-user");
    const { stdout, stderr } = await run(
      bin,
      ["run", "--repo", "acme/widgets", "--prompt", "Write a file", "--model", "mock-model"],
      {
        cwd: app,
        timeout: 240_000,
        env: userEnv({
          KILO_CLOUD_URL: stack.gatewayUrl,
          KILO_TOKEN: token,
          KILO_INTERNAL_KEY: INTERNAL_KEY,
          KILO_GITHUB_TOKEN: GIT_TOKEN,
          HOME: work,
        }),
      },
    );
    expect(stderr).toMatch(/^session agent_\S+ \(execution exec_\S+\)/);
    expect(stdout).toContain("· "); // status lines (clone, branch, …)
    expect(stdout).toMatch(/✓ \w+/); // a tool call of kilo's
    expect(stdout).toContain("── summary");
    expect(stdout).not.toContain("\x1b["); // piped: no colour
  });
});
