import { spawnSync } from "node:child_process";
import { createRequire } from "node:module";
import { homedir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseAllDocuments } from "yaml";

export const REPO = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
export const CHART = join(REPO, "deploy", "helm", "kilo-cloud-agent");
export const CI_VALUES = join(CHART, "ci", "ci-values.yaml");
/** The cluster version templates are rendered for (helm's own default moves with its build). */
export const KUBE_VERSION = "1.31.0";

/** The helm built by scripts/ensure-services.ts (or HELM_BIN). */
export function helmBinary(): string {
  if (process.env.HELM_BIN) return process.env.HELM_BIN;
  const bin = join(process.env.XDG_CACHE_HOME ?? join(homedir(), ".cache"), "kilo-cloud", "bin", "helm");
  if (spawnSync(bin, ["version"], { stdio: "ignore" }).status !== 0) {
    throw new Error(`helm not found at ${bin}: run "node --import tsx scripts/ensure-services.ts"`);
  }
  return bin;
}

export function helm(args: string[]): { status: number; stdout: string; stderr: string } {
  const r = spawnSync(helmBinary(), args, { encoding: "utf8", maxBuffer: 64 * 1024 * 1024 });
  return { status: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

export interface K8sObject {
  apiVersion: string;
  kind: string;
  metadata: {
    name: string;
    namespace?: string;
    labels?: Record<string, string>;
    annotations?: Record<string, string>;
  };
  // biome-ignore lint/suspicious/noExplicitAny: rendered manifests are inspected field by field
  spec?: any;
  // biome-ignore lint/suspicious/noExplicitAny: as above
  [key: string]: any;
}

export const RELEASE = "kca-test";
export const NAMESPACE = "kilo";

/** `helm template` of the chart, parsed; throws with helm's message when it fails. */
export function render(valuesFiles: string[] = [], sets: string[] = []): K8sObject[] {
  const r = helm([
    "template",
    RELEASE,
    CHART,
    "--namespace",
    NAMESPACE,
    "--kube-version",
    KUBE_VERSION,
    ...valuesFiles.flatMap((f) => ["-f", f]),
    ...sets.flatMap((s) => ["--set", s]),
  ]);
  if (r.status !== 0) throw new Error(`helm template failed:\n${r.stderr}`);
  const docs = parseAllDocuments(r.stdout);
  const objects: K8sObject[] = [];
  for (const doc of docs) {
    if (doc.errors.length > 0) throw new Error(`rendered YAML does not parse: ${doc.errors[0]?.message}`);
    const value = doc.toJS() as K8sObject | null;
    if (value) objects.push(value);
  }
  return objects;
}

const require = createRequire(import.meta.url);

/** The kubernetes-models class of an object's apiVersion and kind (the API's OpenAPI schema). */
export async function modelOf(obj: K8sObject): Promise<new (data: unknown) => { validate(): void }> {
  const [group, version] = obj.apiVersion.includes("/") ? obj.apiVersion.split("/") : ["", obj.apiVersion];
  const path =
    group === "monitoring.coreos.com"
      ? `@kubernetes-models/prometheus-operator/${group}/${version}/${obj.kind}`
      : `kubernetes-models/${group ? `${group}/` : ""}${version}/${obj.kind}`;
  const mod = require(path) as Record<string, new (data: unknown) => { validate(): void }>;
  const model = mod[obj.kind];
  if (!model) throw new Error(`no schema for ${obj.apiVersion} ${obj.kind}`);
  return model;
}
