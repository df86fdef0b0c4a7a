import { isIPv4, isIPv6 } from "node:net";

/**
 * What kind of address an IP is, for deciding whether an outbound request may reach it.
 * Ranges follow the IANA special-purpose registries (RFC 6890 and successors). Anything
 * not listed as something else is "public".
 */
export type AddressClass =
  | "public"
  | "loopback"
  | "private"
  | "shared"
  | "link-local"
  | "metadata"
  | "unspecified"
  | "multicast"
  | "benchmarking"
  | "documentation"
  | "reserved"
  | "invalid";

/**
 * Cloud instance-metadata and platform endpoints. Always refused, whatever the policy:
 * some sit inside ranges a policy may allow (100.100.100.200 in the shared range,
 * fd00:ec2::254 in fc00::/7) and one is an ordinary-looking public address (Azure's
 * WireServer, 168.63.129.16).
 */
const METADATA_ADDRESSES = new Set([
  "169.254.169.254", // AWS, GCP, Azure, OpenStack, DigitalOcean …
  "169.254.170.2", // AWS ECS task metadata / credentials
  "100.100.100.200", // Alibaba Cloud
  "192.0.0.192", // Oracle Cloud (classic)
  "168.63.129.16", // Azure WireServer
  "fd00:ec2::254", // AWS IMDS over IPv6
]);

type V4Range = readonly [base: string, prefix: number, cls: AddressClass];

const V4_RANGES: readonly V4Range[] = [
  ["0.0.0.0", 8, "unspecified"], // "this network"; 0.0.0.0 reaches the local host on Linux
  ["10.0.0.0", 8, "private"],
  ["100.64.0.0", 10, "shared"], // carrier-grade NAT; also pod networks on some clusters
  ["127.0.0.0", 8, "loopback"],
  ["169.254.0.0", 16, "link-local"],
  ["172.16.0.0", 12, "private"],
  ["192.0.0.0", 24, "reserved"], // IETF protocol assignments
  ["192.0.2.0", 24, "documentation"],
  ["192.88.99.0", 24, "reserved"], // deprecated 6to4 relay anycast
  ["192.168.0.0", 16, "private"],
  ["198.18.0.0", 15, "benchmarking"],
  ["198.51.100.0", 24, "documentation"],
  ["203.0.113.0", 24, "documentation"],
  ["224.0.0.0", 4, "multicast"],
  ["240.0.0.0", 4, "reserved"], // includes 255.255.255.255
];

type V6Range = readonly [base: string, prefix: number, cls: AddressClass | "embedded-v4"];

/** Checked in order; the first match wins, so narrower ranges come first. */
const V6_RANGES: readonly V6Range[] = [
  ["::", 128, "unspecified"],
  ["::1", 128, "loopback"],
  ["::ffff:0:0", 96, "embedded-v4"], // IPv4-mapped: the socket talks IPv4 to the embedded address
  ["64:ff9b::", 96, "embedded-v4"], // NAT64 well-known prefix
  ["2002::", 16, "embedded-v4"], // 6to4
  ["64:ff9b:1::", 48, "reserved"], // local-use NAT64
  ["100::", 64, "reserved"], // discard-only
  ["2001:db8::", 32, "documentation"],
  ["2001::", 23, "reserved"], // IETF protocol assignments, Teredo (which embeds IPv4) among them
  ["3fff::", 20, "documentation"],
  ["fc00::", 7, "private"], // unique local
  ["fe80::", 10, "link-local"],
  ["fec0::", 10, "reserved"], // deprecated site-local
  ["ff00::", 8, "multicast"],
  // Everything outside global unicast (2000::/3) is unassigned or special: refuse it.
];

function v4ToInt(addr: string): number {
  const [a = 0, b = 0, c = 0, d = 0] = addr.split(".").map(Number);
  return ((a << 24) | (b << 16) | (c << 8) | d) >>> 0;
}

function intToV4(n: number): string {
  return [n >>> 24, (n >>> 16) & 0xff, (n >>> 8) & 0xff, n & 0xff].join(".");
}

/** 128-bit value of an IPv6 address already accepted by `net.isIPv6` (no zone id). */
function v6ToBigInt(addr: string): bigint {
  let s = addr;
  const lastColon = s.lastIndexOf(":");
  const last = s.slice(lastColon + 1);
  if (last.includes(".")) {
    const v4 = v4ToInt(last);
    s = `${s.slice(0, lastColon + 1)}${(v4 >>> 16).toString(16)}:${(v4 & 0xffff).toString(16)}`;
  }
  const [head = "", tail] = s.split("::");
  const headWords = head === "" ? [] : head.split(":");
  const tailWords = tail === undefined || tail === "" ? [] : tail.split(":");
  const zeros =
    tail === undefined ? [] : new Array<string>(8 - headWords.length - tailWords.length).fill("0");
  let value = 0n;
  for (const w of [...headWords, ...zeros, ...tailWords])
    value = (value << 16n) | BigInt(Number.parseInt(w, 16));
  return value;
}

const v4Table = V4_RANGES.map(([base, prefix, cls]) => ({
  net: v4ToInt(base),
  mask: prefix === 0 ? 0 : (0xffffffff << (32 - prefix)) >>> 0,
  cls,
}));

const v6Table = V6_RANGES.map(([base, prefix, cls]) => ({
  net: v6ToBigInt(base) >> BigInt(128 - prefix),
  shift: BigInt(128 - prefix),
  cls,
}));

function classifyV4(n: number): AddressClass {
  if (METADATA_ADDRESSES.has(intToV4(n))) return "metadata";
  for (const r of v4Table) if ((n & r.mask) >>> 0 === r.net) return r.cls;
  return "public";
}

function classifyV6(value: bigint, text: string): AddressClass {
  if (METADATA_ADDRESSES.has(text)) return "metadata";
  for (const r of v6Table) {
    if (value >> r.shift !== r.net) continue;
    if (r.cls !== "embedded-v4") return r.cls;
    // 6to4 carries the IPv4 address in bits 16..48; the others in the low 32 bits.
    const v4 = r.shift === 112n ? Number((value >> 80n) & 0xffffffffn) : Number(value & 0xffffffffn);
    return classifyV4(v4);
  }
  return value >> 125n === 1n ? "public" : "reserved";
}

/**
 * Classifies one IP address in canonical notation (what `dns.lookup` returns and what
 * `new URL()` leaves in `hostname`, with or without IPv6 brackets and zone id). Anything
 * that is not an IP address is "invalid".
 */
export function classifyAddress(address: string): AddressClass {
  let a = address;
  if (a.startsWith("[") && a.endsWith("]")) a = a.slice(1, -1);
  const zone = a.indexOf("%");
  if (zone !== -1) a = a.slice(0, zone);
  if (isIPv4(a)) return classifyV4(v4ToInt(a));
  if (isIPv6(a)) {
    const value = v6ToBigInt(a);
    // Compare metadata in one canonical spelling, whatever notation was used.
    const canonical = canonicalV6(value);
    return classifyV6(value, canonical);
  }
  return "invalid";
}

function canonicalV6(value: bigint): string {
  const words: string[] = [];
  for (let i = 7; i >= 0; i--) words.push(Number((value >> BigInt(i * 16)) & 0xffffn).toString(16));
  // Longest run of zero words → "::" (first one wins on ties), as RFC 5952.
  let best = -1;
  let bestLen = 1;
  for (let i = 0; i < 8; ) {
    if (words[i] !== "0") {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && words[j] === "0") j++;
    if (j - i > bestLen) {
      best = i;
      bestLen = j - i;
    }
    i = j;
  }
  if (best === -1) return words.join(":");
  return `${words.slice(0, best).join(":")}::${words.slice(best + bestLen).join(":")}`;
}
