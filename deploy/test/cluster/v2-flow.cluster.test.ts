import { spawnSync } from "node:child_process";
import type { Event } from "@kilo-cloud/proto";
import { defaultScript } from "@kilo-cloud/testing";
import { CoreV1Api } from "@kubernetes/client-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { prepareSession, readUntilTerminals } from "../../../services/gateway/test/e2e/helpers.js";
import { type FullStack, REPO, startFullStack } from "../../../services/gateway/test/support/full-stack.js";
import {
  kubernetesDriverOptions,
  loadKubernetesDriverConfig,
} from "../../../services/sandbox-manager/src/drivers/kubernetes/config.js";
import { KubernetesDriver } from "../../../services/sandbox-manager/src/drivers/kubernetes/kubernetes-driver.js";
import {
  adminKubeConfig,
  clusterEnv,
  deleteNamespace,
  installChartSandboxAccess,
  listPods,
  renderChartFor,
  uniqueSandboxNamespace,
  waitFor,
} from "./cluster.js";

/**
 * The V2 flow with the real kilo, where sandbox-manager runs its sandboxes as pods of a real
 * cluster: the driver is built from the environment the chart gives sandbox-manager, with a
 * token bound to the chart's Role and nothing more. The scripted model server and the git
 * server listen on the host side of the pod bridge, the one host address pods can reach.
 */
const NS = uniqueSandboxNamespace("kc-v2");
const IDLE_MS = 8_000;

const describeEvents = (events: Event[]) =>
  JSON.stringify(
    events.map((e) => e.payload),
    (_, v) => (typeof v === "bigint" ? v.toString() : v),
  );
const steps = (events: Event[]) =>
  events.flatMap((e) => (e.payload.case === "status" ? [e.payload.value.step] : [e.payload.case ?? ""]));

describe("V2 flow with SANDBOX_DRIVER=kubernetes on a real cluster (real kilo)", { timeout: 300_000 }, () => {
  let stack: FullStack;

  beforeAll(async () => {
    const access = await installChartSandboxAccess(renderChartFor(NS), NS);
    expect(access.env.SANDBOX_DRIVER).toBe("kubernetes");
    const config = loadKubernetesDriverConfig({
      ...access.env,
      K8S_SANDBOX_IDLE_TIMEOUT_MS: String(IDLE_MS),
      KUBECONFIG: access.kubeconfigPath,
    });
    stack = await startFullStack({
      kilo: "real",
      serversHost: clusterEnv().bridgeIp,
      driver: () => KubernetesDriver.create(kubernetesDriverOptions(config)),
    });
    await stack.login("alice");
  });
  afterAll(async () => {
    await stack?.[Symbol.asyncDispose]();
    await deleteNamespace(NS);
  });

  const alice = () => stack.sessions("alice");
  const livePods = async () => (await listPods(NS)).filter((p) => !p.metadata?.deletionTimestamp);
  /** The command lines running in the session's sandbox pod, seen from inside it. */
  const podProcesses = (pod: string): string[] => {
    const r = spawnSync(
      process.env.K8S_KUBECTL ?? "kubectl",
      ["-n", NS, "exec", pod, "--", "ps", "-eo", "args="],
      { encoding: "utf8", env: process.env },
    );
    return r.status === 0 ? r.stdout.split("\n").filter(Boolean) : [];
  };
  const kiloRunsIn = (pod: string) => podProcesses(pod).some((a) => /(^|\/)kilo run\b/.test(a));

  let sessionId = "";
  let podName = "";

  it("clone, setup, kilo and commit run in a restricted pod; the commit reaches the git server", async () => {
    const prepared = await prepareSession(alice(), {
      prompt: "Write the first file",
      autoCommit: true,
      setupCommands: { values: ["echo setup ran in $(hostname) >> ../setup-runs.log"] },
    });
    sessionId = prepared.cloudAgentSessionId;
    const ack = await alice().initiateSession({ cloudAgentSessionId: sessionId });
    const events = await readUntilTerminals(stack.stream("alice"), { cloudAgentSessionId: sessionId }, 1, {
      timeoutMs: 240_000,
    });
    const last = events.at(-1);
    expect(last?.payload.case, describeEvents(events.slice(-3))).toBe("complete");
    expect(last?.executionId).toBe(ack.executionId);
    expect(steps(events)).toEqual(expect.arrayContaining(["sandbox", "clone", "setup", "kilo", "kilocode"]));
    // kilo talked to the model from inside the pod.
    expect(stack.model.requests.length).toBeGreaterThan(0);
    expect(await stack.git.readFile(REPO, `session/${sessionId}`, "hello1.txt")).toBe("hello from mock\n");

    const pods = await livePods();
    expect(pods).toHaveLength(1);
    podName = pods[0]?.metadata?.name ?? "";
    expect(podName).toMatch(/^kc-sandbox-[0-9a-f]{32}$/);
    expect(pods[0]?.status?.phase).toBe("Running");
    expect(pods[0]?.spec?.securityContext?.runAsNonRoot).toBe(true);
    expect(pods[0]?.spec?.containers[0]?.image).toBe(clusterEnv().sandboxImage);
  });

  it("InterruptSession kills the run's processes in the pod", async () => {
    stack.model.setScript(() => ({ hang: true }));
    const msg = await alice().sendMessage({ cloudAgentSessionId: sessionId, prompt: "Hang on" });
    await waitFor(async () => kiloRunsIn(podName), "kilo running in the pod", 120_000);
    const res = await alice().interruptSession({ cloudAgentSessionId: sessionId });
    expect(res.success).toBe(true);
    expect(res.killedProcessIds.length).toBeGreaterThanOrEqual(1);
    expect(res.failedProcessIds).toEqual([]);
    const events = await readUntilTerminals(
      stack.stream("alice"),
      { cloudAgentSessionId: sessionId, executionIds: [msg.executionId] },
      1,
      { timeoutMs: 60_000 },
    );
    expect(events.at(-1)?.payload.case).toBe("interrupted");
    expect(kiloRunsIn(podName)).toBe(false);
    // Only the pod's PID 1 and its sleep remain.
    expect(
      podProcesses(podName).filter((a) => !/^(\/bin\/sh -c trap|sleep infinity|ps -eo)/.test(a)),
    ).toEqual([]);
  });

  it("an idle pod is reaped; the next message starts cold (clone and setup again) in a new pod", async () => {
    const uid = (await livePods())[0]?.metadata?.uid;
    await waitFor(async () => (await livePods()).length === 0, "the idle pod reaped", 90_000);
    stack.model.setScript(defaultScript());
    const msg = await alice().sendMessage({ cloudAgentSessionId: sessionId, prompt: "Write another file" });
    const events = await readUntilTerminals(
      stack.stream("alice"),
      { cloudAgentSessionId: sessionId, executionIds: [msg.executionId] },
      1,
      { timeoutMs: 240_000 },
    );
    expect(events.at(-1)?.payload.case).toBe("complete");
    expect(steps(events)).toEqual(expect.arrayContaining(["clone", "setup", "kilocode"]));
    const pods = await livePods();
    expect(pods).toHaveLength(1);
    expect(pods[0]?.metadata?.uid).not.toBe(uid);
  });

  it("a pod deleted mid-run ends the execution with exactly one error event", async () => {
    stack.model.setScript(() => ({ hang: true }));
    const msg = await alice().sendMessage({ cloudAgentSessionId: sessionId, prompt: "Hang again" });
    await waitFor(async () => kiloRunsIn(podName), "kilo running in the pod", 120_000);
    await adminKubeConfig().makeApiClient(CoreV1Api).deleteNamespacedPod({ name: podName, namespace: NS });
    const events = await readUntilTerminals(
      stack.stream("alice"),
      { cloudAgentSessionId: sessionId, executionIds: [msg.executionId] },
      1,
      { timeoutMs: 120_000 },
    );
    const terminals = events.filter((e) =>
      ["complete", "error", "interrupted"].includes(e.payload.case ?? ""),
    );
    expect(terminals.map((e) => e.payload.case)).toEqual(["error"]);
    // Nothing more arrives for that execution afterwards.
    await new Promise((r) => setTimeout(r, 3_000));
    const again = await readUntilTerminals(
      stack.stream("alice"),
      { cloudAgentSessionId: sessionId, executionIds: [msg.executionId] },
      1,
      { timeoutMs: 30_000 },
    );
    expect(again.filter((e) => e.payload.case === "error")).toHaveLength(1);
    expect(again.map((e) => e.id)).toEqual(events.map((e) => e.id));
  });
});
