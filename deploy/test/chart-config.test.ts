import { type Env, envUsage } from "@kilo-cloud/common";
import { describe, expect, it } from "vitest";
import { loadGatewayConfig } from "../../services/gateway/src/config.js";
import { loadSandboxManagerConfig } from "../../services/sandbox-manager/src/config.js";
import { loadSessionConfig } from "../../services/session/src/config.js";
import { loadTokenConfig } from "../../services/token/src/config.js";
import {
  deploymentEnvs,
  interpolatedVariables,
  ofComponent,
  SERVICES,
  type ServiceName,
  secretKeysOf,
} from "../../test/deployed/chart-env.js";
import { CI_VALUES, type K8sObject, render } from "./helm.js";

/**
 * The chart and the services' config loaders cannot disagree silently: every variable a
 * Deployment sets is read by its service's loader, and the loader finds every variable it
 * requires. The loaders declare what they read by reading it (`envUsage` records it).
 */
const LOADERS: Record<ServiceName, (env: Env) => unknown> = {
  gateway: loadGatewayConfig,
  session: loadSessionConfig,
  "sandbox-manager": loadSandboxManagerConfig,
  token: loadTokenConfig,
};

/** Plausible values for every Secret key (the loaders check shapes, e.g. key lengths). */
function secretsFor(objects: K8sObject[], drop: string[] = []): Record<string, string> {
  const out: Record<string, string> = {};
  for (const key of secretKeysOf(objects)) if (!drop.includes(key)) out[key] = secretValue(key);
  return out;
}

const PEM_LIKE = "-----BEGIN PRIVATE KEY-----\\nAAAA\\n-----END PRIVATE KEY-----";
function secretValue(key: string): string {
  if (key.endsWith("sealing-keys")) return `k1:${Buffer.alloc(32, 1).toString("base64")}`;
  if (key === "database-url") return "postgres://kilo:pw@db.example:5432/kilo";
  if (key.includes("key") && !key.includes("api")) return PEM_LIKE;
  return "x".repeat(40);
}

interface Drift {
  service: ServiceName;
  unread: string[];
  missing: string[];
}

function drifts(objects: K8sObject[], secrets: Record<string, string>): Drift[] {
  const envs = deploymentEnvs(objects, secrets);
  return SERVICES.map((service) => {
    const usage = envUsage(LOADERS[service], envs[service]);
    const kubeletOnly = interpolatedVariables(objects, service);
    const unread = Object.keys(envs[service]).filter((v) => !usage.read.has(v) && !kubeletOnly.has(v));
    return { service, unread: unread.sort(), missing: usage.missing };
  });
}

describe.each([
  // GITHUB_APP_ID has no default: an install gives its App's id (the loader requires it).
  ["default values", [] as string[], ["services.token.env.GITHUB_APP_ID=123456"], [] as string[]],
  // The CI values authenticate users with JWKS: no HS256 secret.
  ["the CI values file", [CI_VALUES], [], ["auth-hs256-secret"]],
])("chart ↔ config loaders with %s", (_label, files, sets, dropSecrets) => {
  const objects = render(files, sets);

  it("sets no variable a service does not read, and omits none it requires", () => {
    expect(drifts(objects, secretsFor(objects, dropSecrets))).toEqual(
      SERVICES.map((service) => ({ service, unread: [], missing: [] })),
    );
  });
});

const APP_ID = "services.token.env.GITHUB_APP_ID=123456";

describe("the consistency check itself", () => {
  const objects = render([], [APP_ID]);

  it("catches the default values' empty GITHUB_APP_ID", () => {
    const bare = render([]);
    const token = drifts(bare, secretsFor(bare)).find((d) => d.service === "token");
    expect(token?.missing).toEqual(["GITHUB_APP_ID"]);
  });

  it("catches a variable the chart sets and no loader reads", () => {
    const withTypo = render([], [APP_ID, "services.gateway.env.UPSTREAM_TIMEOUT=1000"]);
    const gateway = drifts(withTypo, secretsFor(withTypo)).find((d) => d.service === "gateway");
    expect(gateway?.unread).toEqual(["UPSTREAM_TIMEOUT"]);
  });

  it("catches a required variable the chart does not give", () => {
    const secrets = secretsFor(objects);
    const { "stream-ticket-secret": _dropped, ...rest } = secrets;
    // The kubelet would refuse the pod; the loader, given the rest, names the variable.
    const envs = deploymentEnvs(
      render([], ["services.gateway.secretEnv.STREAM_TICKET_SECRET.optional=true"]),
      rest,
    );
    expect(envUsage(loadGatewayConfig, envs.gateway).missing).toEqual(["STREAM_TICKET_SECRET"]);
  });
});

describe("the gateway reaches the event log", () => {
  const policy = (objects: K8sObject[], component: string) =>
    ofComponent(objects, "NetworkPolicy", component);
  const peers = (rules: Array<{ to?: unknown[]; from?: unknown[] }>, key: "to" | "from") =>
    JSON.stringify(rules.flatMap((r) => r[key] ?? []));

  it("gets NATS_URL and the stream, and NetworkPolicies let it reach the bundled NATS", () => {
    const objects = render([]);
    const cm = ofComponent(objects, "ConfigMap", "gateway");
    expect(cm?.data.NATS_URL).toMatch(/^nats:\/\/.*-nats:4222$/);
    expect(cm?.data.EVENTS_STREAM).toBe("KILO_EVENTS");
    expect(peers(policy(objects, "gateway")?.spec.egress, "to")).toContain(
      '"app.kubernetes.io/component":"nats"',
    );
    expect(peers(policy(objects, "nats")?.spec.ingress, "from")).toContain(
      '"app.kubernetes.io/component":"gateway"',
    );
  });

  it("may reach an external NATS on 4222", () => {
    const objects = render([CI_VALUES]);
    const egress = policy(objects, "gateway")?.spec.egress as Array<{ ports: Array<{ port: number }> }>;
    expect(egress.some((r) => r.ports.some((p) => p.port === 4222))).toBe(true);
  });
});
