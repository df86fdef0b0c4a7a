import http from "node:http";
import https from "node:https";
import { isIP } from "node:net";
import { Readable } from "node:stream";
import { checkUrlShape, createSafeLookup, type OutboundPolicy, type ResolveAll, SsrfError } from "./ssrf.js";

export interface SafeFetchInit {
  method?: string;
  headers?: ConstructorParameters<typeof Headers>[0];
  body?: string | Uint8Array;
  /** Cancels the request (e.g. on shutdown); the timeout applies as well. */
  signal?: AbortSignal;
  policy: OutboundPolicy;
  /** Covers connect, request, response headers and reading the body. */
  timeoutMs: number;
  /** Replaces `dns.lookup` (tests simulate DNS with it). */
  resolve?: ResolveAll;
}

export type SafeFetchErrorKind = "timeout" | "aborted" | "network" | "bad-response";

/** A request that did not get a usable response. Never carries the URL's path or query. */
export class SafeFetchError extends Error {
  override name = "SafeFetchError";
  readonly kind: SafeFetchErrorKind;
  readonly host: string;
  constructor(kind: SafeFetchErrorKind, host: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.kind = kind;
    this.host = host;
  }
}

export type SafeFetch = (url: string | URL, init: SafeFetchInit) => Promise<Response>;

// Our own agents, not the global ones: Node 24 can make the global agent honour
// HTTP(S)_PROXY, and a proxy would do the DNS resolution our check is meant to guard.
// No keep-alive, so every request connects (and is checked) afresh.
const httpAgent = new http.Agent({ keepAlive: false });
const httpsAgent = new https.Agent({ keepAlive: false });

/** Headers that belong to the transport; a caller's value for them is dropped. */
const TRANSPORT_HEADERS = new Set([
  "host",
  "content-length",
  "transfer-encoding",
  "connection",
  "keep-alive",
]);

const NULL_BODY_STATUSES = new Set([101, 103, 204, 205, 304]);

/**
 * `fetch` for URLs that come from outside: the URL and every address its host resolves to
 * are checked against `policy` when the socket connects (see ssrf.ts), redirects are never
 * followed (a 3xx is returned as it is; callers should treat it as a failure), and the
 * whole exchange is bounded by `timeoutMs`.
 *
 * Rejects with SsrfError when the policy refuses the target and with SafeFetchError when
 * no response arrives. Resolves with a standard Response whose body the caller should
 * read or cancel.
 */
export const safeFetch: SafeFetch = async (input, init) => {
  const url = checkUrlShape(input, init.policy);
  const host = url.hostname;
  const hostname = host.startsWith("[") ? host.slice(1, -1) : host;
  const method = (init.method ?? "GET").toUpperCase();
  const body = typeof init.body === "string" ? Buffer.from(init.body, "utf8") : init.body;

  const headers: Record<string, string> = {};
  new Headers(init.headers).forEach((value, name) => {
    if (!TRANSPORT_HEADERS.has(name)) headers[name] = value;
  });
  if (body !== undefined) headers["content-length"] = String(body.byteLength);

  const timeout = AbortSignal.timeout(init.timeoutMs);
  const signal = init.signal ? AbortSignal.any([init.signal, timeout]) : timeout;

  // Node passes our lookup's error through to the request, but keep our own copy so an
  // SSRF refusal is never mistaken for a network failure (and retried).
  let refusal: SsrfError | undefined;
  const checkedLookup = createSafeLookup(init.policy, init.resolve ? { resolve: init.resolve } : {});
  const lookup: typeof checkedLookup = (name, options, callback) =>
    checkedLookup(name, options, (err, address, family) => {
      if (err instanceof SsrfError) refusal = new SsrfError(host, err.reason);
      callback(refusal ?? err, address, family);
    });

  return await new Promise<Response>((resolve, reject) => {
    const fail = (err: Error & { code?: string }) => {
      if (refusal) reject(refusal);
      else if (timeout.aborted) {
        reject(new SafeFetchError("timeout", host, `no response from ${host} within ${init.timeoutMs} ms`));
      } else if (signal.aborted)
        reject(new SafeFetchError("aborted", host, `request to ${host} was aborted`));
      else {
        const what = err.code ?? err.message;
        reject(new SafeFetchError("network", host, `request to ${host} failed: ${what}`, { cause: err }));
      }
    };

    const req = (url.protocol === "https:" ? https : http).request({
      protocol: url.protocol,
      hostname,
      port: url.port === "" ? undefined : Number(url.port),
      path: `${url.pathname}${url.search}`,
      method,
      headers,
      agent: url.protocol === "https:" ? httpsAgent : httpAgent,
      // Node skips `lookup` for IP literals; checkUrlShape has checked those already.
      lookup: isIP(hostname) === 0 ? lookup : undefined,
      signal,
    });
    req.on("error", fail);
    req.on("response", (res) => {
      const status = res.statusCode ?? 0;
      const responseHeaders = new Headers();
      for (let i = 0; i + 1 < res.rawHeaders.length; i += 2) {
        try {
          responseHeaders.append(res.rawHeaders[i]!, res.rawHeaders[i + 1]!);
        } catch {
          // A header undici would not accept is not one we need.
        }
      }
      const hasBody = method !== "HEAD" && !NULL_BODY_STATUSES.has(status);
      if (!hasBody) res.resume();
      try {
        const stream = hasBody ? (Readable.toWeb(res) as ReadableStream<Uint8Array>) : null;
        resolve(new Response(stream, { status, headers: responseHeaders }));
      } catch (err) {
        res.destroy();
        reject(
          new SafeFetchError("bad-response", host, `${host} answered with status ${status}`, { cause: err }),
        );
      }
    });
    req.end(body);
  });
};
