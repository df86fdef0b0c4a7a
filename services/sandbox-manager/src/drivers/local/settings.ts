import { type EnvReader, egressPolicy, parseDomains, parseEndpoints } from "@kilo-cloud/common";
import type { KiloProvider } from "../../kilo/command.js";
import { DEFAULT_LIMITS, type SandboxLimits } from "./cgroup-limits.js";
import type { LocalDriverOptions } from "./local-driver.js";

/**
 * The operator's settings of local sandboxes' confinement (environment variables):
 *
 * - SANDBOX_NETWORK `fenced` (default) | `host` (development only: every host port reachable)
 * - SANDBOX_EGRESS_ALLOW `host:port,...` endpoints reachable whatever their address (e.g. a
 *   git server on this host's loopback); SANDBOX_EGRESS_DOMAINS `a.com,b.org` when set,
 *   only these domains (and subdomains) are reachable
 * - SANDBOX_MEMORY_MB (2048), SANDBOX_PIDS (1024), SANDBOX_CPU_MILLICORES (2000)
 */
export interface LocalSandboxSettings {
  network: "fenced" | "host";
  egressAllow: string | undefined;
  egressDomains: string | undefined;
  limits: SandboxLimits;
}

export const DEFAULT_LOCAL_SANDBOX: LocalSandboxSettings = Object.freeze({
  network: "fenced",
  egressAllow: undefined,
  egressDomains: undefined,
  limits: DEFAULT_LIMITS,
});

export function readLocalSandboxSettings(r: EnvReader): LocalSandboxSettings {
  const egressAllow = r.optional("SANDBOX_EGRESS_ALLOW");
  try {
    parseEndpoints(egressAllow);
  } catch (err) {
    r.problem(`SANDBOX_EGRESS_ALLOW: ${(err as Error).message}`);
  }
  return {
    network: r.oneOf("SANDBOX_NETWORK", ["fenced", "host"] as const, "fenced"),
    egressAllow,
    egressDomains: r.optional("SANDBOX_EGRESS_DOMAINS"),
    limits: {
      memoryBytes:
        r.int("SANDBOX_MEMORY_MB", DEFAULT_LIMITS.memoryBytes / 1024 ** 2, { min: 256 }) * 1024 ** 2,
      pids: r.int("SANDBOX_PIDS", DEFAULT_LIMITS.pids, { min: 64 }),
      cpuMillicores: r.int("SANDBOX_CPU_MILLICORES", DEFAULT_LIMITS.cpuMillicores, { min: 100 }),
    },
  };
}

/** The LocalDriver options these settings give, with the provider relayed when it has a key to hide. */
export function localDriverConfinement(
  s: LocalSandboxSettings,
  provider: KiloProvider,
): Pick<LocalDriverOptions, "network" | "egressPolicy" | "providerRelay" | "limits"> {
  return {
    network: s.network,
    egressPolicy: egressPolicy({
      allow: parseEndpoints(s.egressAllow),
      domains: parseDomains(s.egressDomains),
    }),
    providerRelay:
      provider.kind === "openai-compatible"
        ? { baseUrl: provider.baseUrl, apiKey: provider.apiKey }
        : undefined,
    limits: s.limits,
  };
}
