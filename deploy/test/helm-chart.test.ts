import { spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdtempSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { stringify } from "yaml";
import { loadKubernetesDriverConfig } from "../../services/sandbox-manager/src/drivers/kubernetes/config.js";
import { sandboxPod } from "../../services/sandbox-manager/src/drivers/kubernetes/pod-spec.js";
import {
  CHART,
  CI_VALUES,
  helm,
  type K8sObject,
  KUBE_VERSION,
  modelOf,
  NAMESPACE,
  RELEASE,
  render,
} from "./helm.js";

const SERVICES = ["gateway", "session", "sandbox-manager", "token"] as const;
const WORKLOADS = new Set(["Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob"]);

const byKind = (objs: K8sObject[], kind: string) => objs.filter((o) => o.kind === kind);
const component = (o: K8sObject) => o.metadata.labels?.["app.kubernetes.io/component"];
const find = (objs: K8sObject[], kind: string, comp: string) => {
  const found = objs.find((o) => o.kind === kind && component(o) === comp);
  if (!found) throw new Error(`no ${kind} for ${comp}`);
  return found;
};

describe.each([
  ["default values", [] as string[], "kilo-sandboxes"],
  ["the CI values file", [CI_VALUES], "agents-sandboxes"],
])("the chart with %s", (_label, files, sandboxNs) => {
  const objects = render(files);
  const workloads = objects.filter((o) => WORKLOADS.has(o.kind));

  it("passes helm lint --strict", () => {
    const r = helm([
      "lint",
      "--strict",
      CHART,
      "--kube-version",
      KUBE_VERSION,
      ...files.flatMap((f) => ["-f", f]),
    ]);
    expect(r.stderr + r.stdout).toMatch(/1 chart\(s\) linted, 0 chart\(s\) failed/);
    expect(r.status).toBe(0);
  });

  it("renders only objects that validate against the Kubernetes API schema", async () => {
    expect(objects.length).toBeGreaterThan(20);
    for (const o of objects) {
      const Model = await modelOf(o);
      expect(() => new Model(o).validate(), `${o.kind}/${o.metadata.name}`).not.toThrow();
    }
  });

  it("gives every pod template the restricted controls, control by control", () => {
    expect(workloads.length).toBeGreaterThanOrEqual(4);
    for (const w of workloads) {
      const spec = w.spec.template.spec;
      const pod = spec.securityContext ?? {};
      const where = `${w.kind}/${w.metadata.name}`;
      expect(pod.runAsNonRoot, `${where} runAsNonRoot`).toBe(true);
      expect(pod.runAsUser, `${where} runAsUser`).toBeGreaterThan(0);
      expect(pod.seccompProfile?.type, `${where} seccomp`).toBe("RuntimeDefault");
      expect(spec.hostNetwork ?? false).toBe(false);
      expect(spec.hostPID ?? false).toBe(false);
      expect(spec.hostIPC ?? false).toBe(false);
      for (const c of [...(spec.initContainers ?? []), ...spec.containers]) {
        const sc = c.securityContext ?? {};
        const at = `${where} container ${c.name}`;
        expect(sc.allowPrivilegeEscalation, `${at} allowPrivilegeEscalation`).toBe(false);
        expect(sc.privileged ?? false, `${at} privileged`).toBe(false);
        expect(sc.capabilities?.drop, `${at} capabilities`).toEqual(["ALL"]);
        expect(sc.capabilities?.add ?? [], `${at} added capabilities`).toEqual([]);
        expect(sc.readOnlyRootFilesystem, `${at} readOnlyRootFilesystem`).toBe(true);
        expect(sc.runAsNonRoot ?? pod.runAsNonRoot, `${at} runAsNonRoot`).toBe(true);
        expect(sc.seccompProfile?.type ?? pod.seccompProfile?.type, `${at} seccomp`).toBe("RuntimeDefault");
        for (const kind of ["requests", "limits"]) {
          expect(c.resources?.[kind]?.cpu, `${at} ${kind}.cpu`).toBeTruthy();
          expect(c.resources?.[kind]?.memory, `${at} ${kind}.memory`).toBeTruthy();
        }
        // Writable places are volumes, never the image.
        const mounts = (c.volumeMounts ?? []).map((m: { name: string }) => m.name);
        const volumes = new Map((spec.volumes ?? []).map((v: { name: string }) => [v.name, v]));
        for (const m of mounts) {
          const v = volumes.get(m) as Record<string, unknown> | undefined;
          const claim = (w.spec.volumeClaimTemplates ?? []).some(
            (t: { metadata: { name: string } }) => t.metadata.name === m,
          );
          expect(claim || !!v?.emptyDir, `${at} volume ${m} is an emptyDir or a claim`).toBe(true);
        }
      }
      for (const v of spec.volumes ?? []) expect(v.hostPath, `${where} hostPath`).toBeUndefined();
    }
  });

  it("mounts a service-account token only into sandbox-manager, which needs the API", () => {
    for (const w of workloads) {
      const expected = component(w) === "sandbox-manager";
      expect(w.spec.template.spec.automountServiceAccountToken, `${w.metadata.name}`).toBe(expected);
    }
    for (const sa of byKind(objects, "ServiceAccount")) expect(sa.automountServiceAccountToken).toBe(false);
  });

  it("probes every service on /healthz (startup, liveness) and /readyz (readiness), on its port", () => {
    for (const name of SERVICES) {
      const c = find(objects, "Deployment", name).spec.template.spec.containers[0];
      expect(c.startupProbe.httpGet).toEqual({ path: "/healthz", port: "http" });
      expect(c.livenessProbe.httpGet).toEqual({ path: "/healthz", port: "http" });
      expect(c.readinessProbe.httpGet).toEqual({ path: "/readyz", port: "http" });
      expect(c.ports).toEqual([expect.objectContaining({ name: "http", containerPort: expect.any(Number) })]);
      expect(c.command).toEqual(["node", "--import", "tsx", `services/${name}/src/main.ts`]);
    }
  });

  it("annotates each pod template with the checksum of its ConfigMap", () => {
    for (const name of SERVICES) {
      const d = find(objects, "Deployment", name);
      const cm = find(objects, "ConfigMap", name);
      const sum = d.spec.template.metadata.annotations["checksum/config"];
      expect(sum).toMatch(/^[0-9a-f]{64}$/);
      // The ConfigMap is the Deployment's whole plain configuration.
      expect(d.spec.template.spec.containers[0].envFrom).toEqual([
        { configMapRef: { name: cm.metadata.name } },
      ]);
      expect(sum).toBe(createHash("sha256").update(stringify(cm.data).trimEnd()).digest("hex"));
    }
  });

  it("has a PodDisruptionBudget per service, selecting exactly its pods", () => {
    for (const name of SERVICES) {
      const pdb = find(objects, "PodDisruptionBudget", name);
      const d = find(objects, "Deployment", name);
      expect(pdb.spec.selector.matchLabels).toEqual(d.spec.selector.matchLabels);
      expect(pdb.spec.minAvailable ?? pdb.spec.maxUnavailable).toBeGreaterThanOrEqual(1);
      if (d.spec.replicas === 1) expect(pdb.spec.maxUnavailable).toBe(1);
    }
  });

  it("labels everything with one helper: name, instance, component; selectors match templates", () => {
    for (const o of objects) {
      expect(o.metadata.labels?.["app.kubernetes.io/instance"], `${o.kind}/${o.metadata.name}`).toBe(RELEASE);
      expect(component(o), `${o.kind}/${o.metadata.name}`).toBeTruthy();
    }
    for (const w of workloads) {
      for (const [k, v] of Object.entries(w.spec.selector.matchLabels as Record<string, string>)) {
        expect(w.spec.template.metadata.labels[k]).toBe(v);
      }
    }
    for (const svc of byKind(objects, "Service")) {
      const w = workloads.find((x) => component(x) === component(svc));
      for (const [k, v] of Object.entries(svc.spec.selector as Record<string, string>)) {
        expect(w?.spec.template.metadata.labels[k]).toBe(v);
      }
    }
  });

  it("renders no Secret and references secrets only by name", () => {
    expect(byKind(objects, "Secret")).toEqual([]);
    for (const w of workloads) {
      for (const c of w.spec.template.spec.containers) {
        for (const e of c.env ?? []) {
          if (e.valueFrom)
            expect(e.valueFrom.secretKeyRef?.name, `${w.metadata.name} ${e.name}`).toBeTruthy();
          else expect(e.value, e.name).not.toMatch(/BEGIN|PRIVATE/);
        }
      }
    }
  });

  it("lets sandbox-manager manage pods and exec in the sandbox namespace only", () => {
    expect(byKind(objects, "ClusterRole")).toEqual([]);
    expect(byKind(objects, "ClusterRoleBinding")).toEqual([]);
    const roles = byKind(objects, "Role");
    expect(roles).toHaveLength(1);
    const role = roles[0]!;
    expect(role.metadata.namespace).toBe(sandboxNs);
    expect(role.rules).toEqual([
      { apiGroups: [""], resources: ["pods"], verbs: ["get", "list", "create", "delete"] },
      { apiGroups: [""], resources: ["pods/exec"], verbs: ["create", "get"] },
    ]);
    const [binding] = byKind(objects, "RoleBinding");
    expect(binding?.metadata.namespace).toBe(sandboxNs);
    expect(binding?.roleRef).toEqual({
      apiGroup: "rbac.authorization.k8s.io",
      kind: "Role",
      name: role.metadata.name,
    });
    const sa = find(objects, "ServiceAccount", "sandbox-manager");
    expect(binding?.subjects).toEqual([
      { kind: "ServiceAccount", name: sa.metadata.name, namespace: NAMESPACE },
    ]);
    expect(find(objects, "Deployment", "sandbox-manager").spec.template.spec.serviceAccountName).toBe(
      sa.metadata.name,
    );
  });

  it("denies all traffic by default in both namespaces; sandboxes may only reach DNS and what is configured", () => {
    const policies = byKind(objects, "NetworkPolicy");
    const denyIn = (ns: string) =>
      policies.find(
        (p) =>
          p.metadata.namespace === ns &&
          p.spec.policyTypes.includes("Ingress") &&
          p.spec.policyTypes.includes("Egress") &&
          p.spec.ingress === undefined &&
          p.spec.egress === undefined,
      );
    const sandboxDeny = denyIn(sandboxNs);
    expect(sandboxDeny?.spec.podSelector).toEqual({});
    const releaseDeny = denyIn(NAMESPACE);
    expect(releaseDeny?.spec.podSelector.matchLabels["app.kubernetes.io/instance"]).toBe(RELEASE);

    const egress = policies.filter((p) => p.metadata.namespace === sandboxNs && p !== sandboxDeny);
    expect(egress).toHaveLength(1);
    const rules = egress[0]!.spec.egress as Array<{ to: Array<Record<string, unknown>>; ports: unknown[] }>;
    expect(egress[0]!.spec.ingress).toBeUndefined();
    expect(rules[0]!.ports).toEqual([
      { protocol: "UDP", port: 53 },
      { protocol: "TCP", port: 53 },
    ]);
    // The sandbox pods the driver makes are the ones selected.
    expect(egress[0]!.spec.podSelector.matchLabels).toEqual({
      "app.kubernetes.io/name": "kilo-sandbox",
      "app.kubernetes.io/instance": RELEASE,
    });
    for (const rule of rules.slice(1)) {
      for (const peer of rule.to) {
        const block = peer.ipBlock as { cidr: string; except?: string[] } | undefined;
        if (block?.cidr === "0.0.0.0/0") {
          // The public internet, never the cluster's ranges or the metadata service.
          expect(block.except).toEqual(
            expect.arrayContaining(["10.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12"]),
          );
        }
      }
      expect(rule.ports.length).toBeGreaterThan(0);
    }
    // Every service has its own policy naming who may connect.
    for (const name of SERVICES) {
      const p = policies.find((x) => x.metadata.namespace === NAMESPACE && component(x) === name);
      expect(p?.spec.policyTypes).toEqual(["Ingress", "Egress"]);
      if (name !== "gateway") expect(p?.spec.ingress[0].from.length).toBeGreaterThan(0);
    }
  });

  it("configures sandbox-manager so that the kubernetes driver accepts it and makes a valid restricted pod", async () => {
    const cm = find(objects, "ConfigMap", "sandbox-manager");
    expect(cm.data.SANDBOX_DRIVER).toBe("kubernetes");
    expect(cm.data.K8S_SANDBOX_NAMESPACE).toBe(sandboxNs);
    const config = loadKubernetesDriverConfig({ ...cm.data });
    expect(config.pod.instance).toBe(RELEASE);
    const pod = sandboxPod({ orgId: "org", userId: "user@example.com" }, config.pod);
    const Model = await modelOf(pod as K8sObject);
    expect(() => new Model(pod).validate()).not.toThrow();
    // It runs under the ServiceAccount the chart made for sandboxes, in their namespace.
    const sa = byKind(objects, "ServiceAccount").find((s) => s.metadata.namespace === sandboxNs);
    expect(pod.spec?.serviceAccountName).toBe(sa?.metadata.name);
    expect(pod.spec?.automountServiceAccountToken).toBe(false);
  });
});

describe("the chart's switches", () => {
  it("uses a schema validator that does refuse invalid objects", async () => {
    const broken: K8sObject = {
      apiVersion: "apps/v1",
      kind: "Deployment",
      metadata: { name: "x" },
      spec: {
        selector: {},
        template: { spec: { containers: [{ name: "c", ports: [{ containerPort: "http" }] }] } },
      },
    };
    const Model = await modelOf(broken);
    expect(() => new Model(broken).validate()).toThrow(/containerPort must be integer/);
  });

  it("bundles NATS and PostgreSQL by default and builds DATABASE_URL from the password key", () => {
    const objects = render();
    expect(byKind(objects, "StatefulSet").map(component).sort()).toEqual(["nats", "postgresql"]);
    const session = find(objects, "Deployment", "session").spec.template.spec.containers[0];
    const db = session.env.find((e: { name: string }) => e.name === "DATABASE_URL");
    expect(db.value).toBe(
      `postgres://kilo:$(KCA_POSTGRES_PASSWORD)@${RELEASE}-kilo-cloud-agent-postgresql:5432/kilo`,
    );
    expect(find(objects, "ConfigMap", "session").data.NATS_URL).toBe(
      `nats://${RELEASE}-kilo-cloud-agent-nats:4222`,
    );
    expect(byKind(objects, "ServiceMonitor")).toEqual([]);
  });

  it("uses external NATS and PostgreSQL from the CI values, and a ServiceMonitor", () => {
    const objects = render([CI_VALUES]);
    expect(byKind(objects, "StatefulSet")).toEqual([]);
    expect(find(objects, "ConfigMap", "sandbox-manager").data.NATS_URL).toBe(
      "nats://nats.messaging.svc.cluster.local:4222",
    );
    const token = find(objects, "Deployment", "token").spec.template.spec.containers[0];
    expect(token.env.find((e: { name: string }) => e.name === "DATABASE_URL").valueFrom.secretKeyRef).toEqual(
      {
        name: "kca-secrets",
        key: "database-url",
      },
    );
    const [sm] = byKind(objects, "ServiceMonitor");
    expect(sm?.spec.endpoints).toEqual([{ port: "http", path: "/metrics", interval: "30s" }]);
  });

  it("refuses values the schema does not allow, naming each field (values.schema.json)", () => {
    let message = "";
    try {
      render(
        [],
        [
          "services.gateway.replicas=two",
          "kiloProvider.kind=openai",
          "sandboxx.namespace=x",
          "sandbox.workspace.volume=hostPath",
          "services.session.secretEnv.bad-name.key=k",
        ],
      );
    } catch (err) {
      message = (err as Error).message;
    }
    expect(message).toContain("services.gateway.replicas: Invalid type. Expected: integer, given: string");
    expect(message).toMatch(/kiloProvider.kind must be one of the following: "kilo", "openai-compatible"/);
    expect(message).toContain("Additional property sandboxx is not allowed");
    expect(message).toMatch(/sandbox.workspace.volume must be one of the following/);
    expect(message).toMatch(/services.session.secretEnv/);
    // Lint refuses the same values.
    const r = helm(["lint", "--strict", CHART, "--set", "services.gateway.replicas=two"]);
    expect(r.status).not.toBe(0);
    expect(r.stdout + r.stderr).toContain("services.gateway.replicas");
  });

  it("packages into an installable archive that carries its schema", () => {
    const dir = mkdtempSync(join(tmpdir(), "kca-package-"));
    try {
      const r = helm(["package", CHART, "--destination", dir]);
      expect(r.status, r.stderr).toBe(0);
      const archive = join(dir, readdirSync(dir).find((f) => f.endsWith(".tgz")) ?? "none");
      const listed = spawnSync("tar", ["-tzf", archive], { encoding: "utf8" }).stdout.split("\n");
      expect(listed).toContain("kilo-cloud-agent/values.schema.json");
      expect(listed).toContain("kilo-cloud-agent/dashboards/kilo-cloud-agent.json");
      // The packaged chart refuses bad values as the source does.
      expect(helm(["template", "t", archive, "--set", "services.gateway.replicas=two"]).status).not.toBe(0);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("renders the Grafana dashboard and the alert rules only when asked", () => {
    expect(byKind(render(), "PrometheusRule")).toEqual([]);
    const objects = render([CI_VALUES]);
    const [rule] = byKind(objects, "PrometheusRule");
    const alerts = rule?.spec.groups[0].rules.map((r: { alert: string }) => r.alert);
    expect(alerts).toEqual([
      "KiloExecutionsStuck",
      "KiloExecutionFailureRateHigh",
      "KiloQueueWaitHigh",
      "KiloCallbackDeadLetters",
      "KiloServerErrors",
    ]);
    expect(rule?.metadata.labels?.release).toBe("prometheus");
    const dashboard = byKind(objects, "ConfigMap").find((c) => c.metadata.labels?.grafana_dashboard === "1");
    const json = JSON.parse(dashboard?.data["kilo-cloud-agent.json"]);
    expect(json.uid).toBe("kilo-cloud-agent");
    expect(json.panels.length).toBeGreaterThanOrEqual(8);
  });

  it("refuses external NATS without a URL, and a missing secret name", () => {
    expect(() => render([], ["nats.enabled=false"])).toThrow(/externalNats.url is required/);
    expect(() => render([], ["secrets.existingSecret="])).toThrow(/secrets.existingSecret must name/);
  });

  it("changes the checksum (and so rolls the pods) when a setting changes, and only that service's", () => {
    const sum = (objs: K8sObject[], name: string) =>
      find(objs, "Deployment", name).spec.template.metadata.annotations["checksum/config"];
    const before = render();
    const after = render([], ["services.gateway.env.UPSTREAM_TIMEOUT_MS=20000"]);
    expect(sum(after, "gateway")).not.toBe(sum(before, "gateway"));
    expect(sum(after, "session")).toBe(sum(before, "session"));
  });
});
