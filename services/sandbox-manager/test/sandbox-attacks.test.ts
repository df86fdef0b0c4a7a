import { randomUUID } from "node:crypto";
import { readdirSync, readFileSync } from "node:fs";
import { Code, ConnectError } from "@connectrpc/connect";
import { messageText } from "@kilo-cloud/testing";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { GIT_TOKEN, type Harness, MODEL_KEY, type StartInit, startHarness } from "./support/harness.js";

/**
 * Attacks through sandbox-manager's API with the real kilo: the operator's model key stays
 * outside the sandbox (the relay adds it), and the global execution cap refuses a start.
 */

/** The environment of every host process that belongs to a sandbox (they all carry KILO_CLOUD_WORKSPACE). */
function sandboxEnvirons(): string[] {
  const out: string[] = [];
  for (const pid of readdirSync("/proc")) {
    if (!/^\d+$/.test(pid)) continue;
    try {
      const env = readFileSync(`/proc/${pid}/environ`, "utf8");
      if (env.includes("KILO_CLOUD_WORKSPACE=")) out.push(env);
    } catch {
      // gone
    }
  }
  return out;
}

/**
 * Run by kilo's bash tool: looks for the key (given reversed, so the probe's own
 * environment does not hold it) in every process's environment and every writable place.
 */
const PROBE =
  'k=$(printf %s "$KEY_REVERSED" | rev); ' +
  "for f in /proc/[0-9]*/environ; do tr '\\0' '\\n' < \"$f\"; done > $HOME/environs.txt; " +
  'echo "environs=$(wc -l < $HOME/environs.txt) key-in-env=$(grep -c -- "$k" $HOME/environs.txt) ' +
  'key-in-files=$(grep -rlsF -- "$k" /workspace /home /tmp /etc /run 2>/dev/null | wc -l)"';

describe("a hostile agent with the real kilo", { timeout: 300_000 }, () => {
  let h: Harness;
  beforeAll(async () => {
    h = await startHarness({ settings: { maxRunningExecutions: 1 } });
    await h.git.createBareRepo("acme/widgets", { files: { "README.md": "# widgets\n" } });
  });
  afterAll(async () => {
    await h?.[Symbol.asyncDispose]();
  });

  const base = (sid: string, extra: Partial<StartInit> = {}): StartInit => ({
    executionId: `exec_${randomUUID()}`,
    cloudAgentSessionId: sid,
    kiloSessionId: randomUUID(),
    sandbox: { userId: "mallory" },
    repository: { case: "githubRepo", value: "acme/widgets" },
    gitToken: GIT_TOKEN,
    prompt: "Look around",
    mode: "code",
    model: "mock-model",
    firstExecution: true,
    ...extra,
  });

  it("never sees the operator's model key: not in any process's environment, file or event; the provider still gets it", async () => {
    h.model.setScript((req) => {
      if (!req.tools?.some((t) => t.function?.name === "bash")) return { text: "Title" };
      const last = req.messages.at(-1);
      if (last?.role === "tool") return { text: "Looked." };
      return { toolCall: { name: "bash", arguments: { command: PROBE, description: "Look for the key" } } };
    });
    const sid = `agent_${randomUUID()}`;
    // The user hands the probe the key to look for (reversed: it must not be in the sandbox).
    const req = base(sid, { envVars: { KEY_REVERSED: [...MODEL_KEY].reverse().join("") } });
    const environs = new Set<string>();
    const watch = setInterval(() => {
      for (const e of sandboxEnvirons()) environs.add(e);
    }, 200);
    await h.start(req);
    const events = await h.untilEnd(sid, req.executionId!, 240_000).finally(() => clearInterval(watch));

    expect(events.at(-1)?.payload.case).toBe("complete");
    // The provider got the key on every request (the relay added it).
    const chats = h.model.requests.filter((r) => r.path.endsWith("/chat/completions"));
    expect(chats.length).toBeGreaterThan(0);
    expect(chats.every((r) => r.authorized)).toBe(true);
    // What the agent saw, as the model got it back: its whole sandbox, without the key.
    const toolResult = chats
      .flatMap((r) => r.body?.messages ?? [])
      .filter((m) => m.role === "tool")
      .map(messageText)
      .join("\n");
    expect(toolResult).toMatch(/environs=\d+ key-in-env=0 key-in-files=0/);
    expect(Number(/environs=(\d+)/.exec(toolResult)?.[1])).toBeGreaterThan(10);
    // From the host: kilo and every process of the sandbox, without the key.
    expect(environs.size).toBeGreaterThan(0);
    for (const e of environs) expect(e).not.toContain(MODEL_KEY);
    expect(JSON.stringify(events, (_k, v) => (typeof v === "bigint" ? String(v) : v))).not.toContain(
      MODEL_KEY,
    );
  });

  it("refuses a start beyond the manager's execution cap with RESOURCE_EXHAUSTED", async () => {
    const first = base(`agent_${randomUUID()}`, { setupCommands: ["sleep 60"] });
    await h.start(first);
    try {
      const err = await h.start(base(`agent_${randomUUID()}`)).then(
        () => undefined,
        (e: unknown) => ConnectError.from(e),
      );
      expect(err?.code).toBe(Code.ResourceExhausted);
      expect(err?.rawMessage).toMatch(/maximum of 1 executions; try again later/);
    } finally {
      await h.client.interrupt({
        executionId: first.executionId!,
        cloudAgentSessionId: first.cloudAgentSessionId!,
        sandbox: first.sandbox!,
      });
    }
    await h.untilEnd(first.cloudAgentSessionId!, first.executionId!);
  });
});
