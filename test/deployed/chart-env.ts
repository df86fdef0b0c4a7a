import { type K8sObject, RELEASE, render } from "../../deploy/test/helm.js";

export const SERVICES = ["gateway", "session", "sandbox-manager", "token"] as const;
export type ServiceName = (typeof SERVICES)[number];

export type ServiceEnv = Record<string, string>;

/** `kca-test-kilo-cloud-agent-<component>`: the chart's name of a component (Deployment, Service). */
export function componentName(component: string): string {
  return `${RELEASE}-kilo-cloud-agent-${component}`;
}

/** Values that replace the bundled NATS and PostgreSQL with external ones, as the as-deployed test runs. */
export const EXTERNAL_INFRA_SETS = [
  "nats.enabled=false",
  "externalNats.url=nats://nats.test.invalid:4222",
  "postgresql.enabled=false",
];

/**
 * The environment of each service's container as Kubernetes would build it from the
 * rendered chart: its ConfigMap (envFrom), then its `env` entries (literal values with
 * `$(VAR)` expanded, and Secret references looked up in `secrets`, keyed by Secret key).
 * A missing non-optional Secret key throws, as the kubelet refuses to start the pod.
 */
export function deploymentEnvs(
  objects: K8sObject[],
  secrets: Record<string, string>,
): Record<ServiceName, ServiceEnv> {
  const out = {} as Record<ServiceName, ServiceEnv>;
  for (const service of SERVICES) out[service] = deploymentEnv(objects, service, secrets);
  return out;
}

function find(objects: K8sObject[], kind: string, name: string): K8sObject {
  const o = objects.find((x) => x.kind === kind && x.metadata.name === name);
  if (!o) throw new Error(`the chart renders no ${kind} ${name}`);
  return o;
}

interface EnvEntry {
  name: string;
  value?: string;
  valueFrom?: { secretKeyRef?: { name: string; key: string; optional?: boolean } };
}

/** The object of a kind that belongs to a component (by its `app.kubernetes.io/component` label). */
export function ofComponent(objects: K8sObject[], kind: string, component: string): K8sObject {
  const o = objects.find(
    (x) => x.kind === kind && x.metadata.labels?.["app.kubernetes.io/component"] === component,
  );
  if (!o) throw new Error(`the chart renders no ${kind} for ${component}`);
  return o;
}

function deploymentEnv(
  objects: K8sObject[],
  service: ServiceName,
  secrets: Record<string, string>,
): ServiceEnv {
  const deployment = ofComponent(objects, "Deployment", service);
  const container = deployment.spec.template.spec.containers[0];
  const env: ServiceEnv = {};
  for (const from of container.envFrom ?? []) {
    const cm = find(objects, "ConfigMap", from.configMapRef.name);
    Object.assign(env, cm.data ?? {});
  }
  for (const entry of (container.env ?? []) as EnvEntry[]) {
    const ref = entry.valueFrom?.secretKeyRef;
    if (ref) {
      const value = secrets[ref.key];
      if (value !== undefined) env[entry.name] = value;
      else if (!ref.optional) throw new Error(`${service}: secret key ${ref.key} (${entry.name}) is not set`);
      continue;
    }
    env[entry.name] = (entry.value ?? "").replace(
      /\$\(([A-Za-z_][A-Za-z0-9_]*)\)/g,
      (m, v: string) => env[v] ?? m,
    );
  }
  return env;
}

/** Renders the chart with external NATS and PostgreSQL and the given extra `--set`s. */
export function renderForTest(sets: string[] = []): K8sObject[] {
  return render([], [...EXTERNAL_INFRA_SETS, ...sets]);
}

/** The `--set`s and Secret keys every service needs (a test install of the chart). */
export function secretKeysOf(objects: K8sObject[]): Set<string> {
  const keys = new Set<string>();
  for (const service of SERVICES) {
    const d = ofComponent(objects, "Deployment", service);
    for (const e of (d.spec.template.spec.containers[0].env ?? []) as EnvEntry[]) {
      if (e.valueFrom?.secretKeyRef) keys.add(e.valueFrom.secretKeyRef.key);
    }
  }
  return keys;
}

/** Variables the Deployment defines only to be interpolated (`$(VAR)`) into others: Kubernetes reads them, not the service. */
export function interpolatedVariables(objects: K8sObject[], service: ServiceName): Set<string> {
  const deployment = ofComponent(objects, "Deployment", service);
  const out = new Set<string>();
  for (const e of (deployment.spec.template.spec.containers[0].env ?? []) as EnvEntry[]) {
    for (const m of (e.value ?? "").matchAll(/\$\(([A-Za-z_][A-Za-z0-9_]*)\)/g)) if (m[1]) out.add(m[1]);
  }
  return out;
}
