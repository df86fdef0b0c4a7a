import { Code, ConnectError } from "@connectrpc/connect";
import { internalError, type Logger, type Pool, type Sealer } from "@kilo-cloud/common";
import { Counter, type Registry } from "prom-client";
import { deleteExpiredTokens, readCachedToken, writeCachedToken } from "../db/cached-tokens.js";
import { AGENT_PERMISSIONS, type MintedToken, type MintToken } from "./app-tokens.js";

export interface TokenCacheOptions {
  pool: Pool;
  sealer: Sealer;
  mint: MintToken;
  logger: Logger;
  metrics: Registry;
  /** A cached token is served until this long before it expires. */
  marginMs: number;
  now: () => number;
}

export interface CachedToken extends MintedToken {
  /** Where the token came from (for logs and metrics; callers see no difference). */
  source: "cache" | "github";
}

const PERMISSIONS_SCOPE = Object.entries(AGENT_PERMISSIONS)
  .map(([k, v]) => `${k}=${v}`)
  .sort()
  .join(",");

/**
 * The sealing context of a cached token: bound to the installation, the repository and the
 * permissions asked for, so a row copied elsewhere, or left from a release that asked for
 * other permissions, does not open (and is minted again).
 */
export const cachedTokenContext = (installationId: string, repository: string) =>
  `token:cached:${installationId}:${repository}:${PERMISSIONS_SCOPE}`;

/**
 * Installation tokens per installation and repository: in Postgres (sealed) so that every
 * replica, and a replica after a restart, reuses them; one load at a time per key in this
 * process, so concurrent requests share a single read and at most one call to GitHub.
 */
export class RepositoryTokenCache {
  private readonly inFlight = new Map<string, Promise<CachedToken>>();
  private readonly lookups: Counter<"result">;

  constructor(private readonly opts: TokenCacheOptions) {
    this.lookups = new Counter({
      name: "token_cache_lookups_total",
      help: "Token requests by how they were served: hit (cached), miss (minted), shared (joined a load in flight)",
      labelNames: ["result"],
      registers: [opts.metrics],
    });
  }

  /**
   * A token for `repository` (name without owner) of the installation, valid for at least
   * the margin. The caller's signal ends its own wait, never the shared load.
   */
  get(installationId: string, repository: string, signal?: AbortSignal): Promise<CachedToken> {
    const repo = repository.toLowerCase();
    const key = `${installationId}/${repo}`;
    let load = this.inFlight.get(key);
    if (load) {
      this.lookups.inc({ result: "shared" });
    } else {
      load = this.load(installationId, repo, repository).finally(() => this.inFlight.delete(key));
      this.inFlight.set(key, load);
    }
    return signal ? untilAborted(load, signal) : load;
  }

  private fresh(expiresAt: Date): boolean {
    return expiresAt.getTime() - this.opts.marginMs > this.opts.now();
  }

  private async load(installationId: string, repo: string, repository: string): Promise<CachedToken> {
    const { pool, sealer, logger } = this.opts;
    const context = cachedTokenContext(installationId, repo);
    let row: Awaited<ReturnType<typeof readCachedToken>>;
    try {
      row = await readCachedToken(pool, installationId, repo);
    } catch (err) {
      throw internalError("could not read the token cache", err);
    }
    if (row && this.fresh(row.expires_at)) {
      try {
        const token = sealer.open(row.token_sealed, context);
        this.lookups.inc({ result: "hit" });
        return { token, expiresAt: row.expires_at, source: "cache" };
      } catch (err) {
        // A retired sealing key or a row from another release: mint a new one.
        logger.warn(
          { installationId, repository: repo, reason: (err as Error).message },
          "cached token does not open",
        );
      }
    }
    this.lookups.inc({ result: "miss" });
    const minted = await this.opts.mint(installationId, repository);
    try {
      await writeCachedToken(pool, {
        installation_id: installationId,
        repository: repo,
        token_sealed: sealer.seal(minted.token, context),
        expires_at: minted.expiresAt,
      });
      await deleteExpiredTokens(pool, new Date(this.opts.now()));
    } catch (err) {
      // The token is good; the next request mints again. (A foreign-key violation here means
      // the installation was removed meanwhile: nothing to cache.)
      logger.warn(
        { installationId, repository: repo, reason: (err as Error).message },
        "could not cache a minted token",
      );
    }
    return { ...minted, source: "github" };
  }
}

/** Waits for `promise` unless `signal` aborts first (the promise itself goes on). */
function untilAborted<T>(promise: Promise<T>, signal: AbortSignal): Promise<T> {
  if (signal.aborted) return Promise.reject(abortError(signal));
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(abortError(signal));
    signal.addEventListener("abort", onAbort, { once: true });
    promise.then(
      (v) => {
        signal.removeEventListener("abort", onAbort);
        resolve(v);
      },
      (err: unknown) => {
        signal.removeEventListener("abort", onAbort);
        reject(err);
      },
    );
  });
}

function abortError(signal: AbortSignal): ConnectError {
  return new ConnectError("the request was cancelled", Code.Canceled, undefined, undefined, signal.reason);
}
