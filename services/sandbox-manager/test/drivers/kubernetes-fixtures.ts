import type { SandboxPodOptions } from "../../src/drivers/kubernetes/pod-spec.js";

/** The sandbox namespace of the kubernetes driver tests. */
export const NS = "kilo-sandboxes";

/** Sandbox pod settings for tests against the Kubernetes API double. */
export function testPodOptions(over: Partial<SandboxPodOptions> = {}): SandboxPodOptions {
  return {
    namespace: NS,
    image: "ghcr.io/example/kilo-sandbox:test",
    instance: "test",
    runAsUser: 1000,
    runAsGroup: 1000,
    fsGroup: 1000,
    requests: { cpu: "100m", memory: "256Mi", "ephemeral-storage": "1Gi" },
    limits: { cpu: "1", memory: "1Gi", "ephemeral-storage": "4Gi" },
    workspace: { kind: "emptyDir", sizeLimit: "2Gi" },
    homeSizeLimit: "1Gi",
    tmpSizeLimit: "64Mi",
    ...over,
  };
}
