import { lookup as dnsLookup, type LookupAddress, type LookupOptions } from "node:dns";
import { isIP } from "node:net";
import { type AddressClass, classifyAddress } from "./ip-address.js";

/**
 * Guarding requests whose URL comes from a caller (callbacks, webhooks) against
 * server-side request forgery: the request must not reach the cluster, the host, or a
 * cloud metadata endpoint on the caller's behalf.
 *
 * Checking the URL up front is not enough: a hostname can resolve to a public address
 * when checked and to 127.0.0.1 a moment later, when the socket connects (DNS
 * rebinding). So the check that matters runs inside the socket's own `lookup`: the
 * addresses it approves are the only ones the socket may connect to. `checkOutboundUrl`
 * is for rejecting a bad URL early (e.g. when it is configured), not for protection.
 */
export interface OutboundPolicy {
  /** Allow plain http:// (https:// is always allowed). */
  allowHttp: boolean;
  /** Allow 127.0.0.0/8 and ::1. For tests and single-host development. */
  allowLoopback: boolean;
  /** Allow RFC 1918, unique-local fc00::/7 and shared 100.64.0.0/10 (in-cluster receivers). */
  allowPrivate?: boolean;
}

/** Resolves every address of a hostname; `dns.lookup` unless a test injects another. */
export type ResolveAll = (hostname: string) => Promise<LookupAddress[]>;

export class SsrfError extends Error {
  override name = "SsrfError";
  /** The host as written in the URL; never the path or query, which may carry secrets. */
  readonly host: string;
  readonly reason: string;
  constructor(host: string, reason: string) {
    super(`outbound request to ${host} refused: ${reason}`);
    this.host = host;
    this.reason = reason;
  }
}

const CLASS_TEXT: Record<AddressClass, string> = {
  public: "a public address",
  loopback: "a loopback address",
  private: "a private address",
  shared: "a shared (carrier-grade NAT) address",
  "link-local": "a link-local address",
  metadata: "a cloud metadata address",
  unspecified: "an unspecified address",
  multicast: "a multicast address",
  benchmarking: "a benchmarking address",
  documentation: "a documentation address",
  reserved: "a reserved address",
  invalid: "something that is not an IP address",
};

/** Why `address` may not be reached under `policy`, or undefined when it may. */
export function addressRefusal(address: string, policy: OutboundPolicy): string | undefined {
  const cls = classifyAddress(address);
  if (cls === "public") return undefined;
  if (cls === "loopback" && policy.allowLoopback) return undefined;
  if ((cls === "private" || cls === "shared") && policy.allowPrivate) return undefined;
  return CLASS_TEXT[cls];
}

function bareHost(url: URL): string {
  const h = url.hostname;
  return h.startsWith("[") && h.endsWith("]") ? h.slice(1, -1) : h;
}

/**
 * The checks that need no DNS: scheme, credentials, and the address itself when the host
 * is an IP literal. `new URL()` has already turned every IPv4 spelling (2130706433,
 * 0x7f.1, 0177.0.0.1 …) into dotted decimal, so a literal is recognised whatever its
 * notation. Returns the parsed URL.
 */
export function checkUrlShape(input: string | URL, policy: OutboundPolicy): URL {
  let url: URL;
  try {
    url = new URL(input);
  } catch {
    throw new SsrfError("(unparseable URL)", "not a valid URL");
  }
  const host = url.hostname || "(no host)";
  if (url.protocol !== "https:" && !(url.protocol === "http:" && policy.allowHttp)) {
    throw new SsrfError(host, `scheme ${url.protocol} is not allowed`);
  }
  if (url.username !== "" || url.password !== "") {
    throw new SsrfError(host, "credentials in the URL are not accepted; send them as headers");
  }
  if (url.hostname === "") throw new SsrfError(host, "the URL has no host");
  const bare = bareHost(url);
  if (isIP(bare) !== 0) {
    const why = addressRefusal(bare, policy);
    if (why) throw new SsrfError(host, `it is ${why}`);
  }
  return url;
}

const systemResolve: ResolveAll = (hostname) =>
  new Promise((resolve, reject) => {
    dnsLookup(hostname, { all: true, verbatim: true }, (err, addresses) =>
      err ? reject(err) : resolve(addresses),
    );
  });

/** Resolves `hostname` and refuses it if ANY of its addresses is refused. */
async function resolveChecked(
  hostname: string,
  displayHost: string,
  policy: OutboundPolicy,
  resolve: ResolveAll,
): Promise<LookupAddress[]> {
  const addresses = await resolve(hostname);
  if (addresses.length === 0) throw new SsrfError(displayHost, "the host has no addresses");
  for (const a of addresses) {
    const why = addressRefusal(a.address, policy);
    // One bad address is enough: which one a client picks is not ours to choose.
    if (why) throw new SsrfError(displayHost, `it resolves to ${why}`);
  }
  return addresses;
}

/**
 * Checks a URL against `policy`, resolving its host. Use it to reject a bad URL when it is
 * given to us; the request itself must still go through `safeFetch` (or
 * `createSafeLookup`), because what a name resolves to can change.
 */
export async function checkOutboundUrl(
  input: string | URL,
  policy: OutboundPolicy,
  opts: { resolve?: ResolveAll } = {},
): Promise<{ url: URL; addresses: LookupAddress[] }> {
  const url = checkUrlShape(input, policy);
  const bare = bareHost(url);
  if (isIP(bare) !== 0) return { url, addresses: [{ address: bare, family: isIP(bare) }] };
  const addresses = await resolveChecked(bare, url.hostname, policy, opts.resolve ?? systemResolve);
  return { url, addresses };
}

type LookupCallback = (
  err: NodeJS.ErrnoException | null,
  address: string | LookupAddress[],
  family?: number,
) => void;

/**
 * A `lookup` for `net.connect` / `http.request` / `tls.connect` that resolves the host,
 * refuses it with an SsrfError if any address is refused, and otherwise hands the socket
 * exactly the addresses it checked — so the connection goes where the check looked.
 * Node does not call `lookup` for IP literals: check those with `checkUrlShape`.
 */
export function createSafeLookup(
  policy: OutboundPolicy,
  opts: { resolve?: ResolveAll } = {},
): (hostname: string, options: LookupOptions, callback: LookupCallback) => void {
  const resolve = opts.resolve ?? systemResolve;
  return (hostname, options, callback) => {
    resolveChecked(hostname, hostname, policy, resolve).then(
      (checked) => {
        const family = options.family === "IPv4" ? 4 : options.family === "IPv6" ? 6 : options.family;
        const usable = family === 4 || family === 6 ? checked.filter((a) => a.family === family) : checked;
        const first = usable[0];
        if (!first) {
          const err: NodeJS.ErrnoException = new Error(`no IPv${family} address for ${hostname}`);
          err.code = "ENOTFOUND";
          callback(err, "");
          return;
        }
        if (options.all) callback(null, usable);
        else callback(null, first.address, first.family);
      },
      (err: NodeJS.ErrnoException) => callback(err, ""),
    );
  };
}
