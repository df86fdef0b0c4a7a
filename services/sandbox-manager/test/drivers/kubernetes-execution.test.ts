import { randomBytes, randomUUID } from "node:crypto";
import { create } from "@bufbuild/protobuf";
import { createLogger, JetStreamEventLog, TERMINAL_EVENT_TYPES } from "@kilo-cloud/common";
import type { Event } from "@kilo-cloud/proto";
import { StartExecutionRequestSchema } from "@kilo-cloud/proto/sandbox";
import {
  type GitServer,
  type ModelServer,
  startGitServer,
  startModelServer,
  startNats,
  type TestNats,
} from "@kilo-cloud/testing";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { KubernetesDriver } from "../../src/drivers/kubernetes/kubernetes-driver.js";
import { DEFAULT_RUNNER_SETTINGS, ExecutionRunner } from "../../src/execution/runner.js";
import { packagedKiloBinary } from "../../src/kilo/command.js";
import { K8sApiDouble } from "../k8s-api-double.js";
import type { StartInit } from "../support/harness.js";
import { eventually, findHostProcesses } from "./host-procs.js";
import { NS, testPodOptions } from "./kubernetes-fixtures.js";

const kilo = packagedKiloBinary();
const GIT_TOKEN = `gho_${randomBytes(12).toString("hex")}`;

/**
 * Executions as the sandbox-manager runs them (clone, setup, the real kilo, events on a
 * real JetStream), with sandboxes as pods behind the Kubernetes API double.
 */
describe.skipIf(kilo === undefined)("executions in kubernetes sandbox pods", { timeout: 180_000 }, () => {
  let nats: TestNats;
  let events: JetStreamEventLog;
  let model: ModelServer;
  let git: GitServer;
  let double: K8sApiDouble;
  let driver: KubernetesDriver;
  let runner: ExecutionRunner;
  const sessionId = `agent_${randomUUID()}`;
  const key = { orgId: "org-k8s", userId: "user-k8s" };
  const base = (over: Partial<StartInit> = {}): StartInit => ({
    executionId: `exec_${randomUUID()}`,
    cloudAgentSessionId: sessionId,
    kiloSessionId: randomUUID(),
    sandbox: key,
    repository: { case: "githubRepo", value: "acme/widgets" },
    gitToken: GIT_TOKEN,
    prompt: "Write the greeting files",
    mode: "code",
    model: "mock-model",
    setupCommands: ["echo setup ran >> ../setup-runs.log"],
    firstExecution: true,
    ...over,
  });

  beforeAll(async () => {
    nats = await startNats();
    const tag = randomBytes(4).toString("hex");
    events = await JetStreamEventLog.connect({
      servers: nats.url,
      stream: `EVK_${tag}`,
      subjectPrefix: `evk${tag}`,
    });
    model = await startModelServer();
    git = await startGitServer({ auth: { username: "x-access-token", password: GIT_TOKEN } });
    await git.createBareRepo("acme/widgets", { files: { "README.md": "# widgets\n" } });
    // The sandbox image's kilo, at the path the runner calls it by.
    double = await K8sApiDouble.start({
      imageTmpfs: ["/usr/local/bin"],
      imageBinds: [{ host: kilo!, sandbox: "/usr/local/bin/kilo" }],
    });
    driver = await KubernetesDriver.create({
      kubeConfig: double.kubeConfig(),
      pod: testPodOptions(),
      idleTimeoutMs: 2_000,
      reapIntervalMs: 200,
    });
    runner = new ExecutionRunner({
      driver,
      events,
      logger: createLogger({ service: "test", level: "warn" }),
      settings: {
        ...DEFAULT_RUNNER_SETTINGS,
        provider: { kind: "openai-compatible", baseUrl: model.url, apiKey: "none", id: "mock" },
        githubBaseUrl: git.url,
        allowInsecureGit: true,
        heartbeatIntervalMs: 2_000,
      },
    });
  });
  afterAll(async () => {
    await runner?.stopAll();
    await driver?.close();
    await double?.close();
    await events?.close();
    await model?.close();
    await git?.close();
    await nats?.[Symbol.asyncDispose]();
  });

  async function run(req: StartInit): Promise<Event[]> {
    runner.start(create(StartExecutionRequestSchema, req));
    const abort = AbortSignal.timeout(150_000);
    const out: Event[] = [];
    for await (const e of events.read(sessionId, { signal: abort })) {
      if (e.executionId !== req.executionId) continue;
      out.push(e);
      if (TERMINAL_EVENT_TYPES.includes(e.payload.case as never)) break;
    }
    return out;
  }
  const steps = (evs: Event[]) =>
    evs.flatMap((e) => (e.payload.case === "status" ? [e.payload.value.step] : [e.payload.case as string]));
  const livePods = () => double.pods(NS).filter((p) => !p.metadata?.deletionTimestamp);

  it("runs clone, setup and kilo in the pod; after idle reaping the next execution starts cold", async () => {
    const first = await run(base());
    expect(steps(first)).toEqual(expect.arrayContaining(["sandbox", "clone", "setup", "kilo", "kilocode"]));
    expect(first.at(-1)?.payload.case).toBe("complete");
    const pod = driver.podName(key);
    expect(livePods().map((p) => p.metadata?.name)).toEqual([pod]);

    // Idle: the pod goes, with its workspace.
    expect(await eventually(async () => livePods().length === 0, 10_000)).toBe(true);

    const second = await run(base({ firstExecution: false, prompt: "And another one" }));
    expect(second.at(-1)?.payload.case).toBe("complete");
    // Cold start: cloned again and setup run again, in a new pod.
    expect(steps(second)).toEqual(expect.arrayContaining(["clone", "setup"]));
    expect(livePods()).toHaveLength(1);
  });

  it("fails the execution with an error event when the pod is deleted while kilo runs", async () => {
    model.setScript(() => ({ hang: true }));
    const req = base({ firstExecution: false, prompt: "Hang on" });
    const ended = run(req);
    // kilo is running in the pod (a process of this machine, behind the double).
    expect(await eventually(async () => (await findHostProcesses(["kilo", "run"])).length > 0, 120_000)).toBe(
      true,
    );
    double.deletePod(NS, driver.podName(key));
    const evs = await ended;
    const last = evs.at(-1);
    expect(last?.payload.case).toBe("error");
    expect(steps(evs)).not.toContain("complete");
  });
});
