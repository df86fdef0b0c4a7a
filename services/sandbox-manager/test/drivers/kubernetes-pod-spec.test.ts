import { describe, expect, it } from "vitest";
import { loadKubernetesDriverConfig } from "../../src/drivers/kubernetes/config.js";
import { idHash, sandboxLabels, sandboxPodName } from "../../src/drivers/kubernetes/names.js";
import {
  SANDBOX_CONTAINER,
  type SandboxPodOptions,
  sandboxPod,
} from "../../src/drivers/kubernetes/pod-spec.js";
import { restrictedViolations } from "../k8s-api-double.js";

const opts: SandboxPodOptions = {
  namespace: "kilo-sandboxes",
  image: "registry.test/sandbox:1",
  imagePullPolicy: "IfNotPresent",
  instance: "prod",
  runAsUser: 1000,
  runAsGroup: 1001,
  fsGroup: 1002,
  requests: { cpu: "250m", memory: "512Mi", "ephemeral-storage": "1Gi" },
  limits: { cpu: "2", memory: "4Gi", "ephemeral-storage": "12Gi" },
  workspace: { kind: "emptyDir", sizeLimit: "10Gi" },
  homeSizeLimit: "1Gi",
  tmpSizeLimit: "64Mi",
};
const key = { orgId: "acme", userId: "alice@example.com" };
const pod = sandboxPod(key, opts);
const spec = pod.spec!;
const container = spec.containers[0]!;

describe("the sandbox pod spec, control by control", () => {
  it("has one container, the sandbox, whose PID 1 only waits and stops at once on TERM", () => {
    expect(spec.containers).toHaveLength(1);
    expect(container.name).toBe(SANDBOX_CONTAINER);
    expect(container.image).toBe(opts.image);
    expect(container.command).toEqual(["/bin/sh", "-c", "trap 'exit 0' TERM INT; sleep infinity & wait"]);
    expect(spec.restartPolicy).toBe("Never");
    expect(spec.terminationGracePeriodSeconds).toBe(5);
  });

  it("runs as the configured non-root user and group", () => {
    expect(spec.securityContext).toMatchObject({
      runAsNonRoot: true,
      runAsUser: 1000,
      runAsGroup: 1001,
      fsGroup: 1002,
    });
    expect(container.securityContext).toMatchObject({
      runAsNonRoot: true,
      runAsUser: 1000,
      runAsGroup: 1001,
    });
  });

  it("forbids privilege escalation and privileged mode", () => {
    expect(container.securityContext?.allowPrivilegeEscalation).toBe(false);
    expect(container.securityContext?.privileged).toBe(false);
  });

  it("drops every capability and adds none", () => {
    expect(container.securityContext?.capabilities).toEqual({ drop: ["ALL"] });
  });

  it("uses the runtime's default seccomp profile, on the pod and the container", () => {
    expect(spec.securityContext?.seccompProfile).toEqual({ type: "RuntimeDefault" });
    expect(container.securityContext?.seccompProfile).toEqual({ type: "RuntimeDefault" });
  });

  it("has a read-only root filesystem; only /workspace, /home and /tmp are writable volumes", () => {
    expect(container.securityContext?.readOnlyRootFilesystem).toBe(true);
    expect(container.volumeMounts).toEqual([
      { name: "workspace", mountPath: "/workspace" },
      { name: "home", mountPath: "/home" },
      { name: "tmp", mountPath: "/tmp" },
    ]);
    expect(container.workingDir).toBe("/workspace");
  });

  it("puts the volumes on size-limited emptyDirs, /tmp in memory", () => {
    expect(spec.volumes).toEqual([
      { name: "workspace", emptyDir: { sizeLimit: "10Gi" } },
      { name: "home", emptyDir: { sizeLimit: "1Gi" } },
      { name: "tmp", emptyDir: { medium: "Memory", sizeLimit: "64Mi" } },
    ]);
  });

  it("can put the workspace on a PVC that lives and dies with the pod", () => {
    const p = sandboxPod(key, {
      ...opts,
      workspace: { kind: "ephemeral", size: "20Gi", storageClassName: "fast" },
    });
    const ws = p.spec!.volumes!.find((v) => v.name === "workspace")!;
    expect(ws.emptyDir).toBeUndefined();
    expect(ws.ephemeral?.volumeClaimTemplate?.spec).toEqual({
      accessModes: ["ReadWriteOnce"],
      storageClassName: "fast",
      resources: { requests: { storage: "20Gi" } },
    });
    expect(ws.ephemeral?.volumeClaimTemplate?.metadata?.labels).toEqual(p.metadata?.labels);
  });

  it("mounts no service-account token and injects no service links", () => {
    expect(spec.automountServiceAccountToken).toBe(false);
    expect(spec.enableServiceLinks).toBe(false);
    expect(spec.serviceAccountName).toBeUndefined();
    expect(sandboxPod(key, { ...opts, serviceAccountName: "sbx" }).spec?.serviceAccountName).toBe("sbx");
  });

  it("shares no host namespace", () => {
    expect(spec.hostNetwork).toBe(false);
    expect(spec.hostPID).toBe(false);
    expect(spec.hostIPC).toBe(false);
  });

  it("requests and limits CPU, memory and ephemeral storage", () => {
    expect(container.resources).toEqual({
      requests: { cpu: "250m", memory: "512Mi", "ephemeral-storage": "1Gi" },
      limits: { cpu: "2", memory: "4Gi", "ephemeral-storage": "12Gi" },
    });
  });

  it("sets runtimeClassName (e.g. gVisor) only when configured", () => {
    expect(spec.runtimeClassName).toBeUndefined();
    expect(sandboxPod(key, { ...opts, runtimeClassName: "gvisor" }).spec?.runtimeClassName).toBe("gvisor");
  });

  it("places and pulls as configured", () => {
    const p = sandboxPod(key, {
      ...opts,
      nodeSelector: { pool: "sandboxes" },
      tolerations: [{ key: "sandboxes", operator: "Exists", effect: "NoSchedule" }],
      imagePullSecrets: ["regcred"],
      priorityClassName: "low",
    }).spec!;
    expect(p.nodeSelector).toEqual({ pool: "sandboxes" });
    expect(p.tolerations).toEqual([{ key: "sandboxes", operator: "Exists", effect: "NoSchedule" }]);
    expect(p.imagePullSecrets).toEqual([{ name: "regcred" }]);
    expect(p.priorityClassName).toBe("low");
  });

  it("meets the restricted Pod Security Standard as admission checks it", () => {
    expect(restrictedViolations(pod)).toEqual([]);
    expect(
      restrictedViolations(sandboxPod(key, { ...opts, workspace: { kind: "ephemeral", size: "1Gi" } })),
    ).toEqual([]);
  });
});

describe("sandbox pod names and labels", () => {
  it("derives a DNS-safe name from a hash of the sandbox id: stable, distinct, short", () => {
    const name = sandboxPodName(key);
    expect(name).toBe(pod.metadata?.name);
    expect(name).toMatch(/^kc-sandbox-[0-9a-f]{32}$/);
    expect(name.length).toBeLessThanOrEqual(63);
    expect(sandboxPodName({ ...key })).toBe(name);
    expect(sandboxPodName({ ...key, botId: "b" })).not.toBe(name);
    expect(sandboxPodName({ userId: "alice@example.com" })).not.toBe(name);
    // org "a__b" + user "c" and org "a" + user "b__c" share a sandbox id only if the product's ids do.
    expect(sandboxPodName({ orgId: "a", userId: "b" })).not.toBe(sandboxPodName({ orgId: "b", userId: "a" }));
  });

  it("labels carry hashes of org, user and bot, never the raw ids", () => {
    const labels = sandboxLabels({ ...key, botId: "reviewer" }, "prod");
    expect(labels).toEqual({
      "app.kubernetes.io/name": "kilo-sandbox",
      "app.kubernetes.io/component": "sandbox",
      "app.kubernetes.io/part-of": "kilo-cloud-agent",
      "app.kubernetes.io/managed-by": "kilo-cloud-sandbox-manager",
      "app.kubernetes.io/instance": "prod",
      "cloud-agent.kilo.ai/sandbox": idHash("sandbox", "acme__alice@example.com__bot:reviewer"),
      "cloud-agent.kilo.ai/org": idHash("org", "acme"),
      "cloud-agent.kilo.ai/user": idHash("user", "alice@example.com"),
      "cloud-agent.kilo.ai/bot": idHash("bot", "reviewer"),
    });
    const text = JSON.stringify(pod);
    for (const raw of ["alice", "example.com", "acme"]) expect(text).not.toContain(raw);
    expect(sandboxLabels({ userId: "u" }, "prod")).not.toHaveProperty("cloud-agent.kilo.ai/org");
  });

  it("with a hash key, names and labels are HMACs that a guess cannot confirm without the key", () => {
    expect(idHash("user", "alice@example.com", "k1")).not.toBe(idHash("user", "alice@example.com"));
    expect(idHash("user", "alice@example.com", "k1")).not.toBe(idHash("user", "alice@example.com", "k2"));
    expect(sandboxPodName(key, "k1")).toMatch(/^kc-sandbox-[0-9a-f]{32}$/);
    expect(sandboxPod(key, { ...opts, hashKey: "k1" }).metadata?.name).toBe(sandboxPodName(key, "k1"));
  });
});

describe("the driver's configuration from the environment", () => {
  const base = { K8S_SANDBOX_NAMESPACE: "sbx", K8S_SANDBOX_IMAGE: "img:1" };

  it("has defaults for everything but the namespace and image (15 min idle)", () => {
    const c = loadKubernetesDriverConfig(base);
    expect(c.idleTimeoutMs).toBe(15 * 60_000);
    expect(c.pod.workspace).toEqual({ kind: "emptyDir", sizeLimit: "10Gi" });
    expect(c.pod.runAsUser).toBe(1000);
    expect(c.pod.runtimeClassName).toBeUndefined();
    expect(restrictedViolations(sandboxPod(key, c.pod))).toEqual([]);
  });

  it("reads every control", () => {
    const c = loadKubernetesDriverConfig({
      ...base,
      K8S_SANDBOX_RUNTIME_CLASS: "gvisor",
      K8S_SANDBOX_WORKSPACE_VOLUME: "ephemeral",
      K8S_SANDBOX_WORKSPACE_SIZE: "20Gi",
      K8S_SANDBOX_WORKSPACE_STORAGE_CLASS: "fast",
      K8S_SANDBOX_CPU_LIMIT: "500m",
      K8S_SANDBOX_IDLE_TIMEOUT_MS: "60000",
      K8S_SANDBOX_NODE_SELECTOR: '{"pool":"sbx"}',
      K8S_SANDBOX_TOLERATIONS: '[{"key":"sbx","operator":"Exists"}]',
      K8S_SANDBOX_IMAGE_PULL_SECRETS: "a, b",
    });
    expect(c.pod.runtimeClassName).toBe("gvisor");
    expect(c.pod.workspace).toEqual({ kind: "ephemeral", size: "20Gi", storageClassName: "fast" });
    expect(c.pod.limits.cpu).toBe("500m");
    expect(c.idleTimeoutMs).toBe(60_000);
    expect(c.pod.nodeSelector).toEqual({ pool: "sbx" });
    expect(c.pod.tolerations).toEqual([{ key: "sbx", operator: "Exists" }]);
    expect(c.pod.imagePullSecrets).toEqual(["a", "b"]);
  });

  it("names every problem at once", () => {
    let message = "";
    try {
      loadKubernetesDriverConfig({
        K8S_SANDBOX_CPU_LIMIT: "two cores",
        K8S_SANDBOX_NODE_SELECTOR: "[1]",
        K8S_SANDBOX_WORKSPACE_VOLUME: "hostPath",
      });
    } catch (err) {
      message = (err as Error).message;
    }
    for (const name of [
      "K8S_SANDBOX_NAMESPACE is required",
      "K8S_SANDBOX_IMAGE is required",
      "K8S_SANDBOX_CPU_LIMIT must be a Kubernetes quantity",
      "K8S_SANDBOX_WORKSPACE_VOLUME must be one of emptyDir, ephemeral",
      "K8S_SANDBOX_NODE_SELECTOR must be a JSON object",
    ]) {
      expect(message).toContain(name);
    }
  });
});
