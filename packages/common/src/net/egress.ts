import { lookup as dnsLookup, type LookupAddress } from "node:dns";
import { connect, isIP, type Socket } from "node:net";
import { networkInterfaces } from "node:os";
import { classifyAddress } from "./ip-address.js";
import { addressRefusal, type ResolveAll, SsrfError } from "./ssrf.js";

/**
 * Where a sandbox may open connections (through the egress proxy). The default is the
 * callback policy without its relaxations: public addresses only, never loopback, private,
 * shared (CGNAT), link-local or metadata addresses, and never an address of this host's own
 * interfaces (its public address reaches the services as well as loopback does). What an
 * operator adds:
 *
 * - `allow`: explicit `host:port` endpoints reachable whatever their address class (e.g. a
 *   git server on the host's loopback in tests, an in-cluster package mirror). The host must
 *   be written exactly as the client asks for it; metadata addresses stay refused.
 * - `domains`: when non-empty, only these domains (and their subdomains) may be reached, on
 *   top of the address rules.
 */
export interface EgressPolicy {
  allow: readonly Endpoint[];
  domains: readonly string[];
  /** Addresses always refused (this host's interfaces); see `hostAddresses`. */
  refused: ReadonlySet<string>;
}

export interface Endpoint {
  host: string;
  port: number;
}

/** Parses `host:port,[v6]:port,...` (SANDBOX_EGRESS_ALLOW). Throws on a malformed entry. */
export function parseEndpoints(text: string | undefined): Endpoint[] {
  const out: Endpoint[] = [];
  for (const raw of (text ?? "").split(",")) {
    const entry = raw.trim();
    if (entry === "") continue;
    const m = /^(?:\[([0-9a-fA-F:.]+)\]|([A-Za-z0-9.-]+)):(\d{1,5})$/.exec(entry);
    const port = Number(m?.[3]);
    if (!m || port < 1 || port > 65535) {
      throw new Error(`egress allow entry must be host:port or [ipv6]:port: ${JSON.stringify(entry)}`);
    }
    out.push({ host: (m[1] ?? m[2]!).toLowerCase(), port });
  }
  return out;
}

/** Parses `example.com,.npmjs.org,...` (SANDBOX_EGRESS_DOMAINS): lowercase, no leading dot. */
export function parseDomains(text: string | undefined): string[] {
  return (text ?? "")
    .split(",")
    .map((d) => d.trim().toLowerCase().replace(/^\./, ""))
    .filter((d) => d !== "");
}

/** Every address of this host's network interfaces. */
export function hostAddresses(): Set<string> {
  const out = new Set<string>();
  for (const list of Object.values(networkInterfaces())) {
    for (const a of list ?? []) out.add(a.address.toLowerCase());
  }
  return out;
}

export function egressPolicy(opts: { allow?: Endpoint[]; domains?: string[] } = {}): EgressPolicy {
  return { allow: opts.allow ?? [], domains: opts.domains ?? [], refused: hostAddresses() };
}

function bare(host: string): string {
  return (host.startsWith("[") && host.endsWith("]") ? host.slice(1, -1) : host).toLowerCase();
}

function explicitlyAllowed(host: string, port: number, policy: EgressPolicy): boolean {
  return policy.allow.some((e) => e.host === host && e.port === port);
}

function domainAllowed(host: string, policy: EgressPolicy): boolean {
  if (policy.domains.length === 0) return true;
  return policy.domains.some((d) => host === d || host.endsWith(`.${d}`));
}

/** Why one resolved address may not be reached, or undefined. */
function refusal(address: string, policy: EgressPolicy): string | undefined {
  if (policy.refused.has(address.toLowerCase())) return "an address of this host";
  return addressRefusal(address, { allowHttp: true, allowLoopback: false, allowPrivate: false });
}

const systemResolve: ResolveAll = (hostname) =>
  new Promise((resolve, reject) => {
    dnsLookup(hostname, { all: true, verbatim: true }, (err, addresses) =>
      err ? reject(err) : resolve(addresses),
    );
  });

/**
 * The addresses a connection to `host:port` may use under `policy`, resolved now (the
 * caller connects to exactly these, so DNS cannot change the answer between check and
 * connect). Throws SsrfError when the destination is refused.
 */
export async function resolveEgress(
  hostInput: string,
  port: number,
  policy: EgressPolicy,
  resolve: ResolveAll = systemResolve,
): Promise<LookupAddress[]> {
  const host = bare(hostInput);
  const display = `${host}:${port}`;
  if (!Number.isInteger(port) || port < 1 || port > 65535) throw new SsrfError(display, "not a valid port");
  const allowed = explicitlyAllowed(host, port, policy);
  if (!allowed && !domainAllowed(host, policy)) throw new SsrfError(display, "not an allowed domain");
  const addresses = isIP(host) !== 0 ? [{ address: host, family: isIP(host) }] : await resolve(host);
  if (addresses.length === 0) throw new SsrfError(display, "the host has no addresses");
  for (const a of addresses) {
    if (allowed && classifyAddress(a.address) !== "metadata") continue;
    const why = refusal(a.address, policy);
    if (why) throw new SsrfError(display, `it is ${why}`);
  }
  return addresses;
}

/**
 * Opens a TCP connection to `host:port` if the policy allows it, to the addresses that
 * were checked (the first that answers). Rejects with SsrfError when refused.
 */
export async function connectEgress(
  host: string,
  port: number,
  policy: EgressPolicy,
  opts: { timeoutMs?: number; resolve?: ResolveAll } = {},
): Promise<Socket> {
  const addresses = await resolveEgress(host, port, policy, opts.resolve);
  let last: Error | undefined;
  for (const a of addresses) {
    try {
      return await connectOne(a.address, port, opts.timeoutMs ?? 15_000);
    } catch (err) {
      last = err as Error;
    }
  }
  throw last ?? new Error("no address to connect to");
}

function connectOne(address: string, port: number, timeoutMs: number): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host: address, port });
    const timer = setTimeout(() => socket.destroy(new Error("connect timed out")), timeoutMs);
    socket.once("connect", () => {
      clearTimeout(timer);
      socket.removeListener("error", reject);
      resolve(socket);
    });
    socket.once("error", (err) => {
      clearTimeout(timer);
      reject(err);
    });
  });
}
