import { randomBytes } from "node:crypto";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  CoreV1Api,
  KubeConfig,
  type KubernetesObject,
  KubernetesObjectApi,
  type V1Pod,
} from "@kubernetes/client-node";
import { type K8sObject, NAMESPACE, render } from "../helm.js";

/**
 * The cluster tier's view of the cluster `npm run test:cluster` brought up
 * (deploy/local-cluster): its admin credentials, the bridge address pods reach this
 * machine at, and the sandbox image loaded into its containerd.
 */
export interface ClusterEnv {
  adminKubeconfig: string;
  /** The host side of the pod bridge: servers for pods listen here. */
  bridgeIp: string;
  sandboxImage: string;
}

export function clusterEnv(): ClusterEnv {
  const need = (name: string) => {
    const v = process.env[name];
    if (!v) throw new Error(`${name} is not set: run the cluster tier with "npm run test:cluster"`);
    return v;
  };
  return {
    adminKubeconfig: need("KUBECONFIG"),
    bridgeIp: need("K8S_BRIDGE_IP"),
    sandboxImage: need("SANDBOX_IMAGE"),
  };
}

export function adminKubeConfig(): KubeConfig {
  const kc = new KubeConfig();
  kc.loadFromFile(clusterEnv().adminKubeconfig);
  return kc;
}

/** A fresh sandbox namespace name per test file, so files never see each other's pods. */
export function uniqueSandboxNamespace(prefix: string): string {
  return `${prefix}-${randomBytes(3).toString("hex")}`;
}

/** The chart rendered for this cluster: the loaded sandbox image, never pulled. */
export function renderChartFor(sandboxNamespace: string, sets: string[] = []): K8sObject[] {
  const image = clusterEnv().sandboxImage;
  const colon = image.lastIndexOf(":");
  return render(
    [],
    [
      `sandbox.namespace=${sandboxNamespace}`,
      `sandbox.image.repository=${image.slice(0, colon)}`,
      `sandbox.image.tag=${image.slice(colon + 1)}`,
      "sandbox.image.pullPolicy=Never",
      ...sets,
    ],
  );
}

const component = (o: K8sObject) => o.metadata.labels?.["app.kubernetes.io/component"];

/**
 * What the chart gives sandbox-manager in the cluster, applied for real: the sandbox
 * namespace (restricted Pod Security) with its ServiceAccount, quota and policies, the Role
 * and RoleBinding, and sandbox-manager's ServiceAccount in the release namespace. Returns a
 * kubeconfig with a token of that ServiceAccount (so: exactly the chart's RBAC, nothing
 * more) and the env the chart gives sandbox-manager's container (literal values only; the
 * Secret-backed ones are not the driver's).
 */
export async function installChartSandboxAccess(
  objects: K8sObject[],
  sandboxNamespace: string,
): Promise<{ kubeconfigPath: string; kubeConfig: KubeConfig; env: Record<string, string> }> {
  const admin = adminKubeConfig();
  const api = KubernetesObjectApi.makeApiClient(admin);
  const core = admin.makeApiClient(CoreV1Api);
  await createIfMissing(api, { apiVersion: "v1", kind: "Namespace", metadata: { name: NAMESPACE } });
  const wanted = objects.filter(
    (o) =>
      (o.kind === "Namespace" && o.metadata.name === sandboxNamespace) ||
      o.metadata.namespace === sandboxNamespace ||
      (o.kind === "ServiceAccount" && component(o) === "sandbox-manager"),
  );
  for (const o of wanted) await createIfMissing(api, o as KubernetesObject);
  const sa = wanted.find((o) => o.kind === "ServiceAccount" && component(o) === "sandbox-manager");
  if (!sa) throw new Error("the chart renders no ServiceAccount for sandbox-manager");
  await waitFor(async () => {
    await core.readNamespacedServiceAccount({ name: "default", namespace: sandboxNamespace });
    return true;
  }, "the sandbox namespace's default ServiceAccount");

  const token = await core.createNamespacedServiceAccountToken({
    name: sa.metadata.name,
    namespace: sa.metadata.namespace ?? NAMESPACE,
    body: { spec: { expirationSeconds: 3600, audiences: [] } },
  });
  const cluster = admin.getCurrentCluster();
  if (!cluster || !token.status?.token) throw new Error("no cluster or no token");
  const kubeConfig = new KubeConfig();
  kubeConfig.loadFromOptions({
    clusters: [{ name: "local", server: cluster.server, caData: cluster.caData, skipTLSVerify: false }],
    users: [{ name: sa.metadata.name, token: token.status.token }],
    contexts: [{ name: "sandbox-manager", cluster: "local", user: sa.metadata.name }],
    currentContext: "sandbox-manager",
  });
  const dir = mkdtempSync(join(tmpdir(), "kc-cluster-"));
  const kubeconfigPath = join(dir, "sandbox-manager.kubeconfig");
  writeFileSync(kubeconfigPath, kubeConfig.exportConfig(), { mode: 0o600 });
  return { kubeconfigPath, kubeConfig, env: sandboxManagerEnv(objects) };
}

/**
 * The env the chart gives the sandbox-manager container: its ConfigMaps (envFrom) and its
 * literal values (the Secret-backed ones are not the driver's).
 */
export function sandboxManagerEnv(objects: K8sObject[]): Record<string, string> {
  const deployment = objects.find((o) => o.kind === "Deployment" && component(o) === "sandbox-manager");
  const container = deployment?.spec.template.spec.containers.find(
    (c: { name: string }) => c.name === "sandbox-manager",
  );
  if (!container) throw new Error("the chart renders no sandbox-manager container");
  const env: Record<string, string> = {};
  for (const from of (container.envFrom ?? []) as Array<{ configMapRef?: { name: string } }>) {
    const map = objects.find((o) => o.kind === "ConfigMap" && o.metadata.name === from.configMapRef?.name);
    Object.assign(env, map?.data ?? {});
  }
  for (const e of (container.env ?? []) as Array<{ name: string; value?: string }>) {
    if (e.value !== undefined) env[e.name] = e.value;
  }
  return env;
}

async function createIfMissing(api: KubernetesObjectApi, obj: KubernetesObject): Promise<void> {
  try {
    await api.create(obj);
  } catch (err) {
    if ((err as { code?: number }).code !== 409) throw err;
  }
}

/** Deletes a namespace and waits until it (and its pods) are gone. */
export async function deleteNamespace(name: string): Promise<void> {
  const core = adminKubeConfig().makeApiClient(CoreV1Api);
  try {
    await core.deleteNamespace({ name, body: { gracePeriodSeconds: 1 } });
  } catch (err) {
    if ((err as { code?: number }).code === 404) return;
    throw err;
  }
  await waitFor(
    async () => {
      try {
        await core.readNamespace({ name });
        return false;
      } catch (err) {
        return (err as { code?: number }).code === 404;
      }
    },
    `namespace ${name} deleted`,
    120_000,
  );
}

/**
 * Deletes every pod of a namespace and waits until they are gone: the node has two cores,
 * and each sandbox pod requests a quarter of one, so tests give their pods back.
 */
export async function deleteAllPods(namespace: string): Promise<void> {
  const core = adminKubeConfig().makeApiClient(CoreV1Api);
  await core.deleteCollectionNamespacedPod({ namespace, gracePeriodSeconds: 1 });
  await waitFor(
    async () => (await listPods(namespace)).length === 0,
    `the pods of ${namespace} gone`,
    120_000,
  );
}

export async function listPods(namespace: string): Promise<V1Pod[]> {
  const core = adminKubeConfig().makeApiClient(CoreV1Api);
  return (await core.listNamespacedPod({ namespace })).items;
}

export async function waitFor(
  check: () => Promise<boolean>,
  what: string,
  timeoutMs = 60_000,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  while (Date.now() < deadline) {
    try {
      if (await check()) return;
    } catch (err) {
      last = err;
    }
    await new Promise((r) => setTimeout(r, 250));
  }
  throw new Error(`timed out waiting for ${what}${last ? `: ${String(last)}` : ""}`);
}
