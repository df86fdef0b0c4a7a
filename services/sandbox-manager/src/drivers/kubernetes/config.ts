import { type Env, EnvReader } from "@kilo-cloud/common";
import { KubeConfig, type V1Toleration } from "@kubernetes/client-node";
import type { KubernetesDriverOptions } from "./kubernetes-driver.js";
import type { SandboxPodOptions } from "./pod-spec.js";

/**
 * The kubernetes driver's settings, read from the environment once (the service's
 * config.ts calls this when SANDBOX_DRIVER=kubernetes). The Helm chart sets every one of
 * these from its values; the defaults suit a small cluster.
 *
 *   K8S_SANDBOX_NAMESPACE              namespace of the sandbox pods (required)
 *   K8S_SANDBOX_IMAGE                  sandbox image with kilo, git, gh, glab (required)
 *   K8S_SANDBOX_IMAGE_PULL_POLICY      Always | IfNotPresent | Never
 *   K8S_SANDBOX_IMAGE_PULL_SECRETS     comma-separated secret names
 *   K8S_SANDBOX_RUNTIME_CLASS          e.g. gvisor
 *   K8S_SANDBOX_INSTANCE               tells installations sharing a namespace apart (default "default")
 *   K8S_SANDBOX_LABEL_HASH_KEY         makes name and label hashes HMACs
 *   K8S_SANDBOX_RUN_AS_USER / _GROUP / K8S_SANDBOX_FS_GROUP   (default 1000)
 *   K8S_SANDBOX_CPU_REQUEST / _LIMIT, K8S_SANDBOX_MEMORY_REQUEST / _LIMIT,
 *   K8S_SANDBOX_EPHEMERAL_STORAGE_REQUEST / _LIMIT
 *   K8S_SANDBOX_WORKSPACE_VOLUME       emptyDir | ephemeral (a PVC that lives and dies with the pod)
 *   K8S_SANDBOX_WORKSPACE_SIZE         emptyDir size limit, or the PVC's size
 *   K8S_SANDBOX_WORKSPACE_STORAGE_CLASS
 *   K8S_SANDBOX_HOME_SIZE / K8S_SANDBOX_TMP_SIZE
 *   K8S_SANDBOX_SERVICE_ACCOUNT, K8S_SANDBOX_PRIORITY_CLASS
 *   K8S_SANDBOX_NODE_SELECTOR          JSON object
 *   K8S_SANDBOX_TOLERATIONS            JSON array
 *   K8S_SANDBOX_IDLE_TIMEOUT_MS        default 900000 (15 min)
 *   K8S_SANDBOX_POD_START_TIMEOUT_MS   default 180000
 *   KUBECONFIG                         a kubeconfig file; otherwise in-cluster, otherwise ~/.kube/config
 */
export interface KubernetesDriverConfig {
  pod: SandboxPodOptions;
  idleTimeoutMs: number;
  podStartTimeoutMs: number;
  kubeconfigPath?: string | undefined;
  inCluster: boolean;
}

const QUANTITY = /^[0-9]+(\.[0-9]+)?(m|k|Ki|Mi|Gi|Ti|M|G|T)?$/;

export function loadKubernetesDriverConfig(env: Env): Readonly<KubernetesDriverConfig> {
  const r = new EnvReader(env);
  const quantity = (name: string, fallback: string) => {
    const v = r.string(name, fallback);
    if (!QUANTITY.test(v))
      r.problem(`${name} must be a Kubernetes quantity like 500m, 2 or 4Gi (got "${v}")`);
    return v;
  };
  const json = <T>(name: string, check: (v: unknown) => boolean, what: string): T | undefined => {
    const raw = r.optional(name);
    if (raw === undefined) return undefined;
    try {
      const v = JSON.parse(raw) as unknown;
      if (check(v)) return v as T;
    } catch {
      // reported below
    }
    r.problem(`${name} must be ${what}`);
    return undefined;
  };
  const optionalName = (name: string) => {
    const v = r.optional(name);
    if (v !== undefined && !/^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$/.test(v)) {
      r.problem(`${name} must be a Kubernetes object name (got "${v}")`);
    }
    return v;
  };
  const namespace = r.string("K8S_SANDBOX_NAMESPACE");
  if (namespace && !/^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/.test(namespace)) {
    r.problem(`K8S_SANDBOX_NAMESPACE must be a namespace name (got "${namespace}")`);
  }
  const instance = r.string("K8S_SANDBOX_INSTANCE", "default");
  if (!/^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$/.test(instance)) {
    r.problem(`K8S_SANDBOX_INSTANCE must be a label value (got "${instance}")`);
  }
  const volumeKind = r.oneOf("K8S_SANDBOX_WORKSPACE_VOLUME", ["emptyDir", "ephemeral"] as const, "emptyDir");
  const workspaceSize = quantity("K8S_SANDBOX_WORKSPACE_SIZE", "10Gi");
  const pod: SandboxPodOptions = {
    namespace,
    image: r.string("K8S_SANDBOX_IMAGE"),
    imagePullPolicy: r.oneOf(
      "K8S_SANDBOX_IMAGE_PULL_POLICY",
      ["Always", "IfNotPresent", "Never"] as const,
      "IfNotPresent",
    ),
    imagePullSecrets: (r.optional("K8S_SANDBOX_IMAGE_PULL_SECRETS") ?? "")
      .split(",")
      .map((s) => s.trim())
      .filter((s) => s !== ""),
    runtimeClassName: optionalName("K8S_SANDBOX_RUNTIME_CLASS"),
    instance,
    hashKey: r.optional("K8S_SANDBOX_LABEL_HASH_KEY"),
    runAsUser: r.int("K8S_SANDBOX_RUN_AS_USER", 1000, { min: 1 }),
    runAsGroup: r.int("K8S_SANDBOX_RUN_AS_GROUP", 1000, { min: 1 }),
    fsGroup: r.int("K8S_SANDBOX_FS_GROUP", 1000, { min: 1 }),
    requests: {
      cpu: quantity("K8S_SANDBOX_CPU_REQUEST", "250m"),
      memory: quantity("K8S_SANDBOX_MEMORY_REQUEST", "512Mi"),
      "ephemeral-storage": quantity("K8S_SANDBOX_EPHEMERAL_STORAGE_REQUEST", "1Gi"),
    },
    limits: {
      cpu: quantity("K8S_SANDBOX_CPU_LIMIT", "2"),
      memory: quantity("K8S_SANDBOX_MEMORY_LIMIT", "4Gi"),
      "ephemeral-storage": quantity("K8S_SANDBOX_EPHEMERAL_STORAGE_LIMIT", "12Gi"),
    },
    workspace:
      volumeKind === "emptyDir"
        ? { kind: "emptyDir", sizeLimit: workspaceSize }
        : {
            kind: "ephemeral",
            size: workspaceSize,
            storageClassName: optionalName("K8S_SANDBOX_WORKSPACE_STORAGE_CLASS"),
          },
    homeSizeLimit: quantity("K8S_SANDBOX_HOME_SIZE", "1Gi"),
    tmpSizeLimit: quantity("K8S_SANDBOX_TMP_SIZE", "64Mi"),
    serviceAccountName: optionalName("K8S_SANDBOX_SERVICE_ACCOUNT"),
    priorityClassName: optionalName("K8S_SANDBOX_PRIORITY_CLASS"),
    nodeSelector: json<Record<string, string>>(
      "K8S_SANDBOX_NODE_SELECTOR",
      (v) =>
        typeof v === "object" &&
        v !== null &&
        !Array.isArray(v) &&
        Object.values(v).every((x) => typeof x === "string"),
      "a JSON object of strings",
    ),
    tolerations: json<V1Toleration[]>(
      "K8S_SANDBOX_TOLERATIONS",
      (v) => Array.isArray(v) && v.every((t) => typeof t === "object" && t !== null),
      "a JSON array of tolerations",
    ),
  };
  const config: KubernetesDriverConfig = {
    pod,
    idleTimeoutMs: r.int("K8S_SANDBOX_IDLE_TIMEOUT_MS", 15 * 60_000, { min: 1_000 }),
    podStartTimeoutMs: r.int("K8S_SANDBOX_POD_START_TIMEOUT_MS", 3 * 60_000, { min: 1_000 }),
    kubeconfigPath: r.optional("KUBECONFIG"),
    inCluster: r.optional("KUBERNETES_SERVICE_HOST") !== undefined,
  };
  r.done();
  return Object.freeze(config);
}

/** The cluster connection: a kubeconfig file when given, else the pod's service account. */
export function kubeConfigFor(config: KubernetesDriverConfig): KubeConfig {
  const kc = new KubeConfig();
  if (config.kubeconfigPath) kc.loadFromFile(config.kubeconfigPath);
  else if (config.inCluster) kc.loadFromCluster();
  else kc.loadFromDefault();
  return kc;
}

/** Driver options from the config (the logger is the caller's). */
export function kubernetesDriverOptions(
  config: KubernetesDriverConfig,
  kubeConfig: KubeConfig = kubeConfigFor(config),
): KubernetesDriverOptions {
  return {
    kubeConfig,
    pod: config.pod,
    idleTimeoutMs: config.idleTimeoutMs,
    podStartTimeoutMs: config.podStartTimeoutMs,
  };
}
