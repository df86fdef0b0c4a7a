import { spawnSync } from "node:child_process";
import { chmod, mkdtemp, readdir, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Event } from "@kilo-cloud/proto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type FullStack, startFullStack } from "../support/full-stack.js";
import { prepareSession, readUntilTerminals, subscribe } from "./helpers.js";

/**
 * A hostile tenant, through the public API only: setup commands run real commands inside
 * the real local sandbox (bubblewrap, its own network namespace, its own host uid), and the
 * session's envVars reach every process of the sandbox. Each case ends its setup with
 * `exit 1`, so the execution's error event carries the commands' output back (outputTail).
 * The provider-key case (real kilo) is in services/sandbox-manager/test/sandbox-attacks.test.ts;
 * driver-level attacks (relay, memory, another sandbox's server) in
 * services/sandbox-manager/test/drivers/local-confinement.test.ts.
 */

/** `<http code> <curl exit>` for one URL, through the sandbox's proxy unless `direct`. */
function curl(label: string, url: string, opts: { direct?: boolean; tunnel?: boolean } = {}): string {
  const flags = `${opts.direct ? "--noproxy '*' " : ""}${opts.tunnel ? "-p " : ""}`;
  const code = opts.tunnel ? "%{http_connect}" : "%{http_code}";
  return `echo "${label}=$(curl ${flags}-s -m 5 -o /dev/null -w '${code}' '${url}'; echo " $?")"`;
}

function lineOf(output: string, label: string): string | undefined {
  return output
    .split("\n")
    .find((l) => l.startsWith(`${label}=`))
    ?.slice(label.length + 1);
}

describe("a hostile sandbox, through the public API (kilo replayer)", { timeout: 240_000 }, () => {
  let stack: FullStack;
  beforeAll(async () => {
    stack = await startFullStack({
      kilo: { replay: "stream-write-tool.jsonl" },
      sandboxEnv: { SANDBOX_PIDS: "64", SANDBOX_MEMORY_MB: "512" },
    });
    await stack.login("mallory");
    await stack.login("victim");
  });
  afterAll(async () => {
    await stack?.[Symbol.asyncDispose]();
  });

  /**
   * Runs the commands as the session's setup commands (each short, as the API requires),
   * collecting their output in a file that a last command prints before failing; returns
   * that output and the events.
   */
  async function attack(
    user: string,
    commands: string | string[],
    extra: Parameters<typeof prepareSession>[1] = {},
  ): Promise<{ output: string; events: Event[] }> {
    const client = stack.sessions(user);
    const list = typeof commands === "string" ? [commands] : commands;
    const { cloudAgentSessionId } = await prepareSession(client, {
      setupCommands: {
        values: [
          ...list.map((c) => `{ ${c}\n} >> "$HOME/attack.out" 2>&1; true`),
          'cat "$HOME/attack.out"; exit 1',
        ],
      },
      ...extra,
    });
    await client.initiateSession({ cloudAgentSessionId });
    const events = await readUntilTerminals(stack.stream(user), { cloudAgentSessionId }, 1, {
      timeoutMs: 180_000,
    });
    const last = events.at(-1);
    expect(last?.payload.case).toBe("error");
    const details = last?.payload.case === "error" ? last.payload.value.details : undefined;
    return { output: String(details?.outputTail ?? ""), events };
  }

  it("loader variables in envVars leave no trace on the host (LD_DEBUG_OUTPUT is honoured by any host process)", async () => {
    const hostDir = await mkdtemp(join(tmpdir(), "ld-attack-"));
    try {
      await chmod(hostDir, 0o777);
      const envVars = { LD_DEBUG: "files", LD_DEBUG_OUTPUT: join(hostDir, "trace") };
      // The attack is real on this host: any host process given this environment writes there.
      spawnSync("/bin/true", { env: envVars });
      const control = await readdir(hostDir);
      expect(control.length).toBeGreaterThan(0);
      for (const f of control) await rm(join(hostDir, f));

      const { output } = await attack("mallory", 'echo "seen=$LD_DEBUG"', { envVars: { values: envVars } });
      // It did reach the sandbox's processes, inside the sandbox.
      expect(output).toContain("seen=files");
      expect(await readdir(hostDir)).toEqual([]);
    } finally {
      await rm(hostDir, { recursive: true, force: true });
    }
  });

  it("reaches no host loopback port (Postgres, NATS, the services), no metadata or private address; the allowed git server is reached", async () => {
    const port = (url: string) => new URL(url).port;
    const targets = {
      postgres: "5432",
      nats: port(stack.nats.url),
      gateway: port(stack.gatewayUrl),
    };
    const commands = [
      ...Object.entries(targets).flatMap(([name, p]) => [
        curl(`${name}-direct`, `http://127.0.0.1:${p}/`, { direct: true }),
        curl(`${name}-proxy`, `http://127.0.0.1:${p}/`),
        curl(`${name}-connect`, `http://127.0.0.1:${p}/`, { tunnel: true }),
      ]),
      curl("metadata-direct", "http://169.254.169.254/latest/meta-data/", { direct: true }),
      curl("metadata-proxy", "http://169.254.169.254/latest/meta-data/"),
      curl("private-proxy", "http://10.0.0.1/"),
      curl("git-proxy", `${stack.git.url}/`),
      'echo "listeners=$(grep -c " 0A " /proc/net/tcp)"',
    ];
    const { output, events } = await attack("mallory", commands);
    for (const name of Object.keys(targets)) {
      expect(lineOf(output, `${name}-direct`), name).toBe("000 7");
      expect(lineOf(output, `${name}-proxy`), name).toBe("403 0");
      expect(lineOf(output, `${name}-connect`), name).toBe("403 56");
    }
    expect(lineOf(output, "metadata-direct")).toBe("000 7");
    expect(lineOf(output, "metadata-proxy")).toBe("403 0");
    expect(lineOf(output, "private-proxy")).toBe("403 0");
    // The operator allowed the git server's endpoint: reached through the fence (the clone
    // before the setup went the same way).
    expect(lineOf(output, "git-proxy")).not.toMatch(/^(403|000) /);
    expect(events.some((e) => e.payload.case === "status" && /Cloning/.test(e.payload.value.message))).toBe(
      true,
    );
    // Only the sandbox's own proxy bridge listens in its network namespace.
    expect(lineOf(output, "listeners")).toBe("1");
  });

  it("tenant A can neither read tenant B's files nor see its processes", async () => {
    // The victim's session leaves files in its workspace and HOME, then keeps a process
    // running while the attacker looks.
    const victim = stack.sessions("victim");
    const { cloudAgentSessionId } = await prepareSession(victim, {
      setupCommands: {
        values: [
          "echo victim-secret > /workspace/victim-secret.txt; cp /workspace/victim-secret.txt $HOME/",
          "sleep 40",
        ],
      },
    });
    await victim.initiateSession({ cloudAgentSessionId });
    for await (const res of subscribe(
      stack.stream("victim"),
      { cloudAgentSessionId },
      { timeoutMs: 120_000 },
    )) {
      const e = res.event?.payload;
      if (e?.case === "status" && e.value.message.startsWith("Running setup command 2/2")) break;
    }
    const { output } = await attack("mallory", [
      'echo "find=$(find / -name victim-secret.txt 2>/dev/null | wc -l)"',
      'echo "grep=$(grep -rs victim-secret /workspace /home /tmp 2>/dev/null | wc -l)"',
      'echo "sleepers=$(for c in /proc/[0-9]*/comm; do cat "$c"; done | grep -c sleep)"',
      'echo "uid=$(id -u)"',
    ]);
    expect(lineOf(output, "find")).toBe("0");
    expect(lineOf(output, "grep")).toBe("0");
    expect(lineOf(output, "sleepers")).toBe("0");
    expect(lineOf(output, "uid")).toBe("1000");
  });

  it("a fork bomb stops at the sandbox's process limit and the host stays fine", async () => {
    const { output } = await attack(
      "mallory",
      "(i=0; while [ $i -lt 500 ]; do sleep 60 & i=$((i+1)); done) 2>/dev/null; set -- /proc/[0-9]*; echo running=$#",
    );
    const running = Number(lineOf(output, "running"));
    expect(running).toBeGreaterThan(5);
    expect(running).toBeLessThanOrEqual(64);
    expect(spawnSync("true").status).toBe(0);
  });
});
