import { isIP } from "node:net";
import { GitError } from "./git-error.js";

export interface RemoteUrlPolicy {
  /** Accept `http:` as well as `https:` (development and tests only). */
  allowHttp?: boolean | undefined;
  /** Accept loopback, private, link-local and other non-public addresses and `localhost`. */
  allowLoopback?: boolean | undefined;
}

export interface RemoteUrl {
  /** The URL handed to git: normalised, without credentials, query or fragment. */
  url: string;
  /** `https://github.com`: what the Authorization header is scoped to. */
  origin: string;
}

/**
 * Checks a repository URL before git ever sees it. Credentials travel separately, per
 * command, so a URL that carries them is refused rather than silently stripped: it would
 * mean the caller's token is about to be stored somewhere it should not be.
 */
export function parseRemoteUrl(raw: string, policy: RemoteUrlPolicy = {}): RemoteUrl {
  let u: URL;
  try {
    u = new URL(raw);
  } catch {
    throw new GitError("clone", "the repository URL is not a valid URL");
  }
  if (u.username !== "" || u.password !== "") {
    throw new GitError(
      "clone",
      "the repository URL must not contain credentials; they are passed separately",
    );
  }
  const shown = `${u.protocol}//${u.host}${u.pathname}`;
  if (u.protocol !== "https:" && !(u.protocol === "http:" && policy.allowHttp)) {
    throw new GitError(
      "clone",
      `refusing repository URL ${shown}: only https${policy.allowHttp ? " and http" : ""} URLs are allowed`,
    );
  }
  if (u.search !== "" || u.hash !== "") {
    throw new GitError("clone", `refusing repository URL ${shown}: it must not have a query or fragment`);
  }
  if (!policy.allowLoopback && isNonPublicHost(u.hostname)) {
    throw new GitError(
      "clone",
      `refusing repository URL ${shown}: the host is a loopback or private address`,
    );
  }
  return { url: u.href, origin: u.origin };
}

/**
 * `localhost` names and IP literals outside the public internet. WHATWG URL parsing has
 * already turned `2130706433` and `0x7f.1` into `127.0.0.1`. Names that merely resolve to
 * such addresses are not caught here; the sandbox's egress policy is the real fence.
 */
export function isNonPublicHost(hostname: string): boolean {
  let h = hostname.toLowerCase();
  if (h.startsWith("[") && h.endsWith("]")) h = h.slice(1, -1);
  if (h.endsWith(".")) h = h.slice(0, -1);
  if (h === "localhost" || h.endsWith(".localhost")) return true;
  const family = isIP(h);
  if (family === 4) return isNonPublicV4(h.split(".").map(Number) as [number, number, number, number]);
  if (family === 6) return isNonPublicV6(h);
  return false;
}

function isNonPublicV4([a, b]: [number, number, number, number]): boolean {
  return (
    a === 0 ||
    a === 10 ||
    a === 127 ||
    (a === 100 && b >= 64 && b <= 127) ||
    (a === 169 && b === 254) ||
    (a === 172 && b >= 16 && b <= 31) ||
    (a === 192 && b === 168) ||
    (a === 198 && (b === 18 || b === 19)) ||
    a >= 224
  );
}

function isNonPublicV6(h: string): boolean {
  const groups = expandV6(h);
  if (!groups) return true;
  const [g0 = 0, g1 = 0, g2 = 0, g3 = 0, g4 = 0, g5 = 0, g6 = 0, g7 = 0] = groups;
  if (g0 === 0 && g1 === 0 && g2 === 0 && g3 === 0 && g4 === 0) {
    // ::, ::1, and IPv4-mapped ::ffff:a.b.c.d
    if (g5 === 0 && g6 === 0 && (g7 === 0 || g7 === 1)) return true;
    if (g5 === 0xffff) return isNonPublicV4([g6 >> 8, g6 & 0xff, g7 >> 8, g7 & 0xff]);
  }
  return (g0 & 0xfe00) === 0xfc00 || (g0 & 0xffc0) === 0xfe80 || (g0 & 0xff00) === 0xff00;
}

function expandV6(h: string): number[] | undefined {
  let text = h.split("%")[0] ?? "";
  const v4 = /(\d+)\.(\d+)\.(\d+)\.(\d+)$/.exec(text);
  if (v4) {
    const [, a, b, c, d] = v4.map(Number) as [number, number, number, number, number];
    text = `${text.slice(0, v4.index)}${((a << 8) | b).toString(16)}:${((c << 8) | d).toString(16)}`;
  }
  const [head = "", tail] = text.split("::");
  const parse = (s: string) => (s === "" ? [] : s.split(":").map((g) => Number.parseInt(g, 16)));
  const left = parse(head);
  const right = tail === undefined ? [] : parse(tail);
  const fill = 8 - left.length - right.length;
  if (fill < 0 || (tail === undefined && fill !== 0)) return undefined;
  return [...left, ...new Array<number>(fill).fill(0), ...right];
}
