import { execFileSync } from "node:child_process";
import { randomUUID } from "node:crypto";
import { readdirSync, readFileSync } from "node:fs";
import { Code, ConnectError } from "@connectrpc/connect";
import { type Event, OutputSource } from "@kilo-cloud/proto";
import { encryptSecret, type ModelScript, messageText } from "@kilo-cloud/testing";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  describeEvent,
  GIT_TOKEN,
  type Harness,
  MODEL_KEY,
  type StartInit,
  startHarness,
} from "./support/harness.js";

/**
 * Runs with the real kilo binary inside real bwrap sandboxes, against a scripted model and
 * a git server that checks the token. Each real kilo run takes 15–30 s here, so the runs
 * are few and each checks several things.
 */

const SECRET_VALUE = `canary-secret-${randomUUID()}`;
const SLEEP_MARK = String(900_000 + Math.floor(Math.random() * 90_000));

/** The n-th tool result since the last user message decides the next step. */
function stepScript(
  steps: (userText: string) => Array<{ name: string; arguments: Record<string, unknown> }>,
): ModelScript {
  return (req) => {
    const lastUser = req.messages.map((m) => m.role).lastIndexOf("user");
    const toolResults = req.messages.slice(lastUser + 1).filter((m) => m.role === "tool").length;
    if (!req.tools?.some((t) => t.function?.name === "write")) return { text: "Title" };
    const plan = steps(messageText(req.messages[lastUser]!));
    const next = plan[toolResults];
    return next ? { toolCall: next } : { text: `Done after ${toolResults} step(s).` };
  };
}

function allCmdlines(): string[] {
  const out: string[] = [];
  for (const pid of readdirSync("/proc")) {
    if (!/^\d+$/.test(pid)) continue;
    try {
      out.push(readFileSync(`/proc/${pid}/cmdline`, "utf8").replaceAll("\0", " "));
    } catch {
      // gone
    }
  }
  return out;
}

function kinds(events: Event[]): string[] {
  return events.map((e) => e.payload.case ?? "");
}

describe("executions with the real kilo", { timeout: 180_000 }, () => {
  let h: Harness;
  const repo = "acme/widgets";
  const sessionId = `agent_${randomUUID()}`;
  const base = (over: Partial<StartInit> = {}): StartInit => ({
    executionId: `exec_${randomUUID()}`,
    cloudAgentSessionId: sessionId,
    kiloSessionId: randomUUID(),
    sandbox: { userId: "user-1", orgId: "org-a" },
    repository: { case: "githubRepo", value: repo },
    gitToken: GIT_TOKEN,
    prompt: "Write the greeting files",
    mode: "code",
    model: "mock-model",
    autoCommit: true,
    firstExecution: true,
    ...over,
  });

  beforeAll(async () => {
    h = await startHarness();
    await h.git.createBareRepo("acme/widgets", { files: { "README.md": "# widgets\n" } });
  });
  afterAll(async () => {
    await h?.[Symbol.asyncDispose]();
  });

  it("runs kilo: events in order, usage, auto-commit on session/<id>, secrets masked, token nowhere", async () => {
    h.model.setScript(
      stepScript(() => [
        { name: "bash", arguments: { command: 'echo "the key is $API_KEY"', description: "Print the key" } },
        { name: "write", arguments: { filePath: "hello1.txt", content: "hello from mock\n" } },
      ]),
    );
    const envelope = encryptSecret(SECRET_VALUE, h.secretKeys.publicKeyPem);
    const req = base({
      envVars: { PLAIN_VAR: "plain" },
      encryptedSecrets: {
        API_KEY: {
          encryptedData: envelope.encryptedData,
          encryptedDek: envelope.encryptedDEK,
          algorithm: envelope.algorithm,
          version: 1,
        },
      },
    });
    const seen = new Set<string>();
    const watch = setInterval(() => {
      for (const c of allCmdlines()) seen.add(c);
    }, 100);
    await h.start(req);
    const events = await h.untilEnd(sessionId, req.executionId!).finally(() => clearInterval(watch));

    // Order: infrastructure status first, kilo's own events, then exactly one terminal event.
    const k = kinds(events);
    expect(k.at(-1)).toBe("complete");
    expect(k.filter((x) => x === "complete" || x === "error" || x === "interrupted")).toHaveLength(1);
    const text = events.map(describeEvent);
    const steps = text.filter((t) => t.startsWith("status:")).map((t) => t.split(":")[1]);
    expect(steps.slice(0, 4)).toEqual(["sandbox", "clone", "branch", "kilo"]);
    expect(steps).toContain("commit");
    const kilocode = events
      .filter((e) => e.payload.case === "kilocode")
      .map((e) => (e.payload.value as unknown as { payload: { type: string } }).payload.type);
    expect(kilocode[0]).toBe("step_start");
    expect(kilocode).toContain("tool_use");
    expect(kilocode.at(-1)).toBe("step_finish");
    const ids = events.map((e) => e.id);
    expect([...ids].sort((a, b) => (a < b ? -1 : 1))).toEqual(ids);

    const complete = events.at(-1)!;
    if (complete.payload.case !== "complete") throw new Error("no complete");
    const c = complete.payload.value;
    expect(c.exitCode).toBe(0);
    expect(c.branch).toBe(`session/${sessionId}`);
    expect(c.workspace).toBe(`/workspace/org-a/user-1/sessions/${sessionId}`);
    expect(c.userId).toBe("user-1");
    expect(c.usage?.inputTokens).toBeGreaterThan(0n);
    expect(c.usage?.outputTokens).toBeGreaterThan(0n);
    expect(c.commitSha).toMatch(/^[0-9a-f]{40}$/);

    // The commit is on the server, on the session branch, by Kilo Code Cloud.
    expect(await h.git.branches(repo)).toContain(`session/${sessionId}`);
    expect(await h.git.readFile(repo, `session/${sessionId}`, "hello1.txt")).toBe("hello from mock\n");
    const [head] = await h.git.log(repo, `session/${sessionId}`);
    expect(head?.sha).toBe(c.commitSha);
    expect(head?.author).toEqual({ name: "Kilo Code Cloud", email: "cloud@kilocode.com" });
    // The git server saw the token (the clone and the push authenticated).
    expect(h.git.authAttempts.some((a) => a.ok && a.password === GIT_TOKEN && a.write)).toBe(true);

    // The secret reached the tool (kilo's bash ran `echo $API_KEY`) but events carry it masked.
    const bash = events.find(
      (e) => e.payload.case === "kilocode" && JSON.stringify(e.payload.value.payload).includes("the key is"),
    );
    expect(JSON.stringify(bash?.payload.value)).toContain("the key is ***");
    const everything = JSON.stringify(events, (_, v) => (typeof v === "bigint" ? v.toString() : v));
    for (const secret of [SECRET_VALUE, GIT_TOKEN, MODEL_KEY]) {
      expect(everything).not.toContain(secret);
      expect(h.logs.join("\n")).not.toContain(secret);
      expect([...seen].filter((cmd) => cmd.includes(secret))).toEqual([]);
    }
    // Nowhere on disk in the workspace's git config or remote URL.
    const sandboxDir = readdirSync(`${h.rootDir}/sandboxes`).map((d) => `${h.rootDir}/sandboxes/${d}`)[0]!;
    const gitConfig = readFileSync(
      `${sandboxDir}/workspace/org-a/user-1/sessions/${sessionId}/.git/config`,
      "utf8",
    );
    expect(gitConfig).not.toContain(GIT_TOKEN);
    const grep = (() => {
      try {
        return execFileSync("grep", ["-rlF", GIT_TOKEN, sandboxDir], { encoding: "utf8" });
      } catch {
        return "";
      }
    })();
    expect(grep).toBe("");
  });

  it("a follow-up continues the same kilo session (the model sees the earlier turns)", async () => {
    h.model.setScript(
      stepScript(() => [{ name: "write", arguments: { filePath: "hello2.txt", content: "second\n" } }]),
    );
    const before = h.model.requests.length;
    const req = base({ prompt: "Now the second file", firstExecution: false });
    await h.start(req);
    const events = await h.untilEnd(sessionId, req.executionId!);
    expect(kinds(events).at(-1)).toBe("complete");
    const statuses = events.map(describeEvent).filter((t) => t.startsWith("status:"));
    expect(statuses.some((t) => t.includes("clone"))).toBe(false);
    expect(statuses).toContain("status:kilo:Continuing the kilo session");
    const later = h.model.requests
      .slice(before)
      .find((r) => r.body?.messages.some((m) => m.role === "user" && messageText(m).includes("second file")));
    const history = later?.body?.messages.map((m) => messageText(m)).join("\n") ?? "";
    expect(history).toContain("Write the greeting files");
    expect(await h.git.readFile(repo, `session/${sessionId}`, "hello2.txt")).toBe("second\n");
    expect(await h.git.readFile(repo, `session/${sessionId}`, "hello1.txt")).toBe("hello from mock\n");
  });

  it("interrupt kills the whole tree (including what kilo's tools started) and commits nothing", async () => {
    const sid = `agent_${randomUUID()}`;
    h.model.setScript(
      stepScript(() => [
        {
          name: "bash",
          arguments: { command: `sleep ${SLEEP_MARK} & sleep ${SLEEP_MARK}`, description: "Wait" },
        },
      ]),
    );
    const req = base({ cloudAgentSessionId: sid, prompt: "Sleep for a long time" });
    await h.start(req);
    const sleeping = () => allCmdlines().filter((c) => c.startsWith(`sleep ${SLEEP_MARK}`));
    const deadline = Date.now() + 90_000;
    while (sleeping().length < 2 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 200));
    expect(sleeping()).toHaveLength(2);

    const res = await h.client.interrupt({
      executionId: req.executionId!,
      cloudAgentSessionId: sid,
      sandbox: req.sandbox,
    });
    expect(res.success).toBe(true);
    expect(res.killedProcessIds.length).toBeGreaterThan(0);
    expect(res.message).toMatch(/^Interrupted execution: killed \d+ process\(es\)$/);
    const events = await h.untilEnd(sid, req.executionId!);
    expect(kinds(events).at(-1)).toBe("interrupted");
    expect(kinds(events)).not.toContain("complete");
    expect(sleeping()).toEqual([]);
    // Nothing committed or pushed: the session branch was created locally but never pushed.
    expect(await h.git.branches(repo)).not.toContain(`session/${sid}`);
    // Interrupting again is fine.
    const again = await h.client.interrupt({
      executionId: req.executionId!,
      cloudAgentSessionId: sid,
      sandbox: req.sandbox,
    });
    expect(again).toMatchObject({ success: true, killedProcessIds: [], failedProcessIds: [] });
  });

  it("an upstream branch that does not exist fails the execution and pushes nothing", async () => {
    const sid = `agent_${randomUUID()}`;
    const before = await h.git.branches(repo);
    const req = base({ cloudAgentSessionId: sid, upstreamBranch: "does-not-exist" });
    await h.start(req);
    const events = await h.untilEnd(sid, req.executionId!);
    const last = events.at(-1)!;
    expect(last.payload.case).toBe("error");
    expect(describeEvent(last)).toContain("does-not-exist");
    expect(await h.git.branches(repo)).toEqual(before);
    expect(kinds(events)).not.toContain("kilocode");
  });

  it("setup: env and decrypted secrets reach the commands, never the events; a failure on the first execution fails it", async () => {
    const sid = `agent_${randomUUID()}`;
    const envelope = encryptSecret(SECRET_VALUE, h.secretKeys.publicKeyPem);
    const req = base({
      cloudAgentSessionId: sid,
      envVars: { PLAIN_VAR: "plain-value" },
      encryptedSecrets: {
        API_KEY: {
          encryptedData: envelope.encryptedData,
          encryptedDek: envelope.encryptedDEK,
          algorithm: envelope.algorithm,
          version: 1,
        },
      },
      setupCommands: [
        `test "$API_KEY" = "${SECRET_VALUE}" && test "$PLAIN_VAR" = plain-value && echo "secret ok: $API_KEY"`,
        'echo "about to fail with $API_KEY"; exit 7',
        "echo never runs",
      ],
    });
    await h.start(req);
    const events = await h.untilEnd(sid, req.executionId!);
    const last = events.at(-1)!;
    if (last.payload.case !== "error") throw new Error(`expected an error, got ${describeEvent(last)}`);
    expect(last.payload.value.error).toContain("exit code 7");
    expect(last.payload.value.details).toMatchObject({ exitCode: 7 });
    expect(String(last.payload.value.details?.outputTail)).toContain("about to fail with ***");
    const setup = events.map(describeEvent).filter((t) => t.startsWith("status:setup"));
    expect(setup).toHaveLength(2); // the first passed (the secret and env were there), the second failed
    expect(JSON.stringify(events, (_, v) => (typeof v === "bigint" ? v.toString() : v))).not.toContain(
      SECRET_VALUE,
    );
    expect(kinds(events)).not.toContain("kilocode");
  });

  it("a tampered secret fails the execution with a message naming the variable, not its value", async () => {
    const sid = `agent_${randomUUID()}`;
    const envelope = encryptSecret(SECRET_VALUE, h.secretKeys.publicKeyPem);
    const data = Buffer.from(envelope.encryptedData, "base64");
    data[20] = (data[20] ?? 0) ^ 0xff;
    const req = base({
      cloudAgentSessionId: sid,
      encryptedSecrets: {
        BROKEN_SECRET: {
          encryptedData: data.toString("base64"),
          encryptedDek: envelope.encryptedDEK,
          algorithm: envelope.algorithm,
          version: 1,
        },
      },
    });
    await h.start(req);
    const events = await h.untilEnd(sid, req.executionId!);
    expect(describeEvent(events.at(-1)!)).toMatch(/^error:.*BROKEN_SECRET/);
  });

  it("a sandbox cannot see another org's workspace", async () => {
    // Org B gets a workspace first.
    const sidB = `agent_${randomUUID()}`;
    const reqB = base({
      cloudAgentSessionId: sidB,
      sandbox: { userId: "user-1", orgId: "org-b" },
      setupCommands: ["echo b > b-marker.txt", "false"],
    });
    await h.start(reqB);
    await h.untilEnd(sidB, reqB.executionId!);
    // Org A tries to read it from a setup command.
    const sidA = `agent_${randomUUID()}`;
    const reqA = base({
      cloudAgentSessionId: sidA,
      setupCommands: [`ls /workspace; cat /workspace/org-b/user-1/sessions/${sidB}/b-marker.txt`],
    });
    await h.start(reqA);
    const events = await h.untilEnd(sidA, reqA.executionId!);
    const last = events.at(-1)!;
    if (last.payload.case !== "error") throw new Error(`expected an error, got ${describeEvent(last)}`);
    const tail = String(last.payload.value.details?.outputTail);
    // `ls /workspace` lists only this sandbox's org; B's file is not there to read.
    expect(tail.split("\n")[0]).toBe("org-a");
    expect(tail).toContain(
      `cat: /workspace/org-b/user-1/sessions/${sidB}/b-marker.txt: No such file or directory`,
    );
    expect(tail).not.toMatch(/^b$/m);
  });

  it("refuses a start for a sandbox of another user than the caller's", async () => {
    const err = await h
      .clientFor("user-2")
      .startExecution(base({ sandbox: { userId: "user-1" } }))
      .then(() => undefined)
      .catch((e) => ConnectError.from(e));
    expect(err?.code).toBe(Code.PermissionDenied);
  });

  it("output lines that are not JSON become output events with their source", async () => {
    // kilo prints its human log on stderr; no stderr line may carry ANSI escapes.
    const all: Event[] = [];
    for await (const e of h.events.read(sessionId, { storedOnly: true })) all.push(e);
    for (const e of all) {
      if (e.payload.case === "output") {
        expect([OutputSource.STDOUT, OutputSource.STDERR]).toContain(e.payload.value.source);
        // biome-ignore lint/suspicious/noControlCharactersInRegex: checking that ANSI escapes were stripped
        expect(e.payload.value.content).not.toMatch(/\u001b\[/);
      }
    }
  });
});

describe("timeouts", { timeout: 180_000 }, () => {
  let h: Harness;
  beforeAll(async () => {
    // Long enough for kilo to start and reach the model on a loaded 2-core machine.
    h = await startHarness({ settings: { executionTimeoutMs: 75_000, idleTimeoutMs: 75_000 } });
    await h.git.createBareRepo("acme/widgets", { files: { "README.md": "# widgets\n" } });
  });
  afterAll(async () => {
    await h?.[Symbol.asyncDispose]();
  });

  it("a model that never answers ends the execution by timeout with an error", async () => {
    h.model.setScript(() => ({ hang: true }));
    const sid = `agent_${randomUUID()}`;
    const req: StartInit = {
      executionId: `exec_${randomUUID()}`,
      cloudAgentSessionId: sid,
      kiloSessionId: randomUUID(),
      sandbox: { userId: "user-1" },
      repository: { case: "githubRepo", value: "acme/widgets" },
      gitToken: GIT_TOKEN,
      prompt: "Hello?",
      mode: "code",
      model: "mock-model",
      firstExecution: true,
    };
    const started = Date.now();
    await h.start(req);
    // kilo reaches the model, which never answers; kilo itself would wait forever.
    await h.model.waitForRequest(undefined, { timeoutMs: 70_000 });
    const events = await h.untilEnd(sid, req.executionId!, 150_000);
    const last = events.at(-1)!;
    expect(describeEvent(last)).toMatch(
      /^error:execution timed out after 75 s|^error:kilo produced no output for 75 s/,
    );
    expect(Date.now() - started).toBeLessThan(120_000);
    expect(kinds(events)).toContain("heartbeat");
  });
});
