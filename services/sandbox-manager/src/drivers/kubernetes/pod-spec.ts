import type { V1Pod, V1Toleration, V1Volume } from "@kubernetes/client-node";
import type { SandboxKey } from "../driver.js";
import { sandboxLabels, sandboxPodName } from "./names.js";

/** The container every exec goes to. */
export const SANDBOX_CONTAINER = "sandbox";

/**
 * PID 1 of a sandbox pod: does nothing until it is told to stop, and stops at once then
 * (a shell as PID 1 ignores SIGTERM unless it traps it, which would make every pod
 * deletion wait for the whole grace period). Commands arrive through exec.
 */
export const SANDBOX_PID1 = ["/bin/sh", "-c", "trap 'exit 0' TERM INT; sleep infinity & wait"];

export interface ResourceList {
  cpu?: string | undefined;
  memory?: string | undefined;
  "ephemeral-storage"?: string | undefined;
}

export type WorkspaceVolume =
  /** Node-local scratch space, capped by `sizeLimit` (the kubelet evicts a pod that goes over). */
  | { kind: "emptyDir"; sizeLimit: string }
  /**
   * A generic ephemeral volume: a PersistentVolumeClaim created with the pod and deleted
   * with it, from `storageClassName` (the cluster default when absent). Real disk with a
   * hard size, for nodes with little local storage; like emptyDir, it goes with the pod.
   */
  | { kind: "ephemeral"; size: string; storageClassName?: string | undefined };

export interface SandboxPodOptions {
  namespace: string;
  image: string;
  imagePullPolicy?: "Always" | "IfNotPresent" | "Never" | undefined;
  imagePullSecrets?: string[] | undefined;
  /** e.g. `gvisor` or `kata`: a RuntimeClass that puts the sandbox in its own kernel. */
  runtimeClassName?: string | undefined;
  /** Tells this installation's pods apart from another's in the same namespace. */
  instance: string;
  /** Makes label and name hashes HMACs (keep it stable: pods are found by these names). */
  hashKey?: string | undefined;
  runAsUser: number;
  runAsGroup: number;
  fsGroup: number;
  requests: ResourceList;
  limits: ResourceList;
  workspace: WorkspaceVolume;
  homeSizeLimit: string;
  /** /tmp is memory-backed (it holds an exec's stdin for a moment) and counts against the memory limit. */
  tmpSizeLimit: string;
  serviceAccountName?: string | undefined;
  priorityClassName?: string | undefined;
  nodeSelector?: Record<string, string> | undefined;
  tolerations?: V1Toleration[] | undefined;
  terminationGracePeriodSeconds?: number | undefined;
}

function definedOnly(r: ResourceList): Record<string, string> {
  return Object.fromEntries(Object.entries(r).filter((e): e is [string, string] => !!e[1]));
}

/**
 * The pod of one sandbox, meeting the `restricted` Pod Security Standard: a non-root user,
 * no privilege escalation, no capabilities, the runtime's seccomp profile, a read-only
 * root filesystem with writable volumes only at /workspace, /home and /tmp, no service
 * account token (the agent must never hold cluster credentials), no service links (no
 * environment describing the cluster's services), and resource requests and limits.
 */
export function sandboxPod(key: SandboxKey, o: SandboxPodOptions): V1Pod {
  const workspace: V1Volume =
    o.workspace.kind === "emptyDir"
      ? { name: "workspace", emptyDir: { sizeLimit: o.workspace.sizeLimit } }
      : {
          name: "workspace",
          ephemeral: {
            volumeClaimTemplate: {
              metadata: { labels: sandboxLabels(key, o.instance, o.hashKey) },
              spec: {
                accessModes: ["ReadWriteOnce"],
                ...(o.workspace.storageClassName ? { storageClassName: o.workspace.storageClassName } : {}),
                resources: { requests: { storage: o.workspace.size } },
              },
            },
          },
        };
  return {
    apiVersion: "v1",
    kind: "Pod",
    metadata: {
      name: sandboxPodName(key, o.hashKey),
      namespace: o.namespace,
      labels: sandboxLabels(key, o.instance, o.hashKey),
    },
    spec: {
      automountServiceAccountToken: false,
      enableServiceLinks: false,
      ...(o.serviceAccountName ? { serviceAccountName: o.serviceAccountName } : {}),
      hostNetwork: false,
      hostPID: false,
      hostIPC: false,
      // A sandbox whose PID 1 died is recreated by the driver rather than restarted in place.
      restartPolicy: "Never",
      terminationGracePeriodSeconds: o.terminationGracePeriodSeconds ?? 5,
      ...(o.runtimeClassName ? { runtimeClassName: o.runtimeClassName } : {}),
      ...(o.priorityClassName ? { priorityClassName: o.priorityClassName } : {}),
      ...(o.nodeSelector && Object.keys(o.nodeSelector).length > 0 ? { nodeSelector: o.nodeSelector } : {}),
      ...(o.tolerations && o.tolerations.length > 0 ? { tolerations: o.tolerations } : {}),
      ...(o.imagePullSecrets && o.imagePullSecrets.length > 0
        ? { imagePullSecrets: o.imagePullSecrets.map((name) => ({ name })) }
        : {}),
      securityContext: {
        runAsNonRoot: true,
        runAsUser: o.runAsUser,
        runAsGroup: o.runAsGroup,
        fsGroup: o.fsGroup,
        seccompProfile: { type: "RuntimeDefault" },
      },
      containers: [
        {
          name: SANDBOX_CONTAINER,
          image: o.image,
          ...(o.imagePullPolicy ? { imagePullPolicy: o.imagePullPolicy } : {}),
          command: SANDBOX_PID1,
          workingDir: "/workspace",
          securityContext: {
            runAsNonRoot: true,
            runAsUser: o.runAsUser,
            runAsGroup: o.runAsGroup,
            allowPrivilegeEscalation: false,
            privileged: false,
            readOnlyRootFilesystem: true,
            capabilities: { drop: ["ALL"] },
            seccompProfile: { type: "RuntimeDefault" },
          },
          resources: { requests: definedOnly(o.requests), limits: definedOnly(o.limits) },
          volumeMounts: [
            { name: "workspace", mountPath: "/workspace" },
            { name: "home", mountPath: "/home" },
            { name: "tmp", mountPath: "/tmp" },
          ],
        },
      ],
      volumes: [
        workspace,
        { name: "home", emptyDir: { sizeLimit: o.homeSizeLimit } },
        { name: "tmp", emptyDir: { medium: "Memory", sizeLimit: o.tmpSizeLimit } },
      ],
    },
  };
}
