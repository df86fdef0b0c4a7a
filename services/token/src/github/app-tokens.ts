import { Code, ConnectError } from "@connectrpc/connect";
import type { Logger } from "@kilo-cloud/common";
import { createAppAuth } from "@octokit/auth-app";
import { request as octokitRequest } from "@octokit/request";
import { RequestError } from "@octokit/request-error";
import { scrub } from "./scrub.js";

/**
 * What a coding agent needs on the one repository it works on: read and push code, open
 * pull requests. GitHub adds `metadata: read` by itself.
 */
export const AGENT_PERMISSIONS: Readonly<Record<string, "read" | "write">> = Object.freeze({
  contents: "write",
  pull_requests: "write",
});

export interface MintedToken {
  token: string;
  expiresAt: Date;
}

/** Mints an installation token limited to one repository (name without owner). */
export type MintToken = (installationId: string, repository: string) => Promise<MintedToken>;

export interface GitHubAppOptions {
  appId: string;
  /** PEM, PKCS#1 (as GitHub hands it out) or PKCS#8. */
  privateKey: string;
  /** `https://api.github.com`, or `https://<host>/api/v3` for GitHub Enterprise Server. */
  apiUrl: string;
  timeoutMs: number;
  logger: Logger;
}

/** Why GitHub refused, without anything that was sent (the cause of a ConnectError). */
export class GitHubRequestFailed extends Error {
  override name = "GitHubRequestFailed";
  constructor(
    readonly status: number | undefined,
    message: string,
  ) {
    super(message);
  }
}

// auth-app keeps tokens in an in-memory LRU of its own; this service caches (sealed, in
// Postgres) itself and decides when a token is too old, so auth-app's cache stays empty.
const NO_CACHE = { get: () => "", set: () => {} };

/**
 * Mints installation tokens with `@octokit/auth-app`: an App JWT (RS256, `iss` = App id,
 * 10 minutes) signed with the App key, then `POST /app/installations/{id}/access_tokens`
 * with `{repositories: [name], permissions}`. Each call goes to GitHub; callers cache.
 */
export function createGitHubAppMinter(opts: GitHubAppOptions): MintToken {
  const { logger } = opts;
  const log = {
    debug: (message: string) => logger.debug({ detail: scrub(message) }, "octokit"),
    info: (message: string) => logger.info({ detail: scrub(message) }, "octokit"),
    warn: (message: string) => logger.warn({ detail: scrub(message) }, "octokit"),
    error: (message: string) => logger.error({ detail: scrub(message) }, "octokit"),
  };
  const timeoutMs = opts.timeoutMs;
  const request = octokitRequest.defaults({
    baseUrl: opts.apiUrl,
    headers: { "user-agent": "kilo-cloud-token", "x-github-api-version": "2022-11-28" },
    request: {
      log,
      // One deadline per call to GitHub, whoever waits for it (callers share one mint).
      fetch: (url: string | URL, init?: RequestInit) =>
        fetch(url, {
          ...init,
          signal: init?.signal
            ? AbortSignal.any([init.signal, AbortSignal.timeout(timeoutMs)])
            : AbortSignal.timeout(timeoutMs),
        }),
    },
  });
  const auth = createAppAuth({
    appId: opts.appId,
    privateKey: opts.privateKey,
    request,
    cache: NO_CACHE,
    log,
  });
  return async (installationId, repository) => {
    let result: { token: string; expiresAt: string };
    try {
      result = await auth({
        type: "installation",
        installationId,
        repositoryNames: [repository],
        permissions: { ...AGENT_PERMISSIONS },
        refresh: true,
      });
    } catch (err) {
      const failure = describeFailure(err);
      logger.warn(
        { installationId, repository, status: failure.status, reason: failure.message },
        "GitHub refused an installation token",
      );
      throw toConnectError(failure, installationId);
    }
    const expiresAt = new Date(result.expiresAt);
    if (typeof result.token !== "string" || !/^[\x21-\x7e]{8,}$/.test(result.token)) {
      throw new ConnectError(
        "GitHub answered with a malformed token",
        Code.Internal,
        undefined,
        undefined,
        new GitHubRequestFailed(201, "malformed token"),
      );
    }
    if (Number.isNaN(expiresAt.getTime())) {
      throw new ConnectError(
        "GitHub answered without a valid expiry",
        Code.Internal,
        undefined,
        undefined,
        new GitHubRequestFailed(201, `bad expires_at ${scrub(String(result.expiresAt), 40)}`),
      );
    }
    return { token: result.token, expiresAt };
  };
}

interface Failure {
  status: number | undefined;
  /** GitHub's message or the network error, scrubbed. */
  message: string;
  /** Rate limited (429, or 403 with the limit exhausted). */
  rateLimited: boolean;
  /** No answer from GitHub at all (network, timeout). */
  noResponse: boolean;
}

function describeFailure(err: unknown): Failure {
  if (err instanceof RequestError) {
    const headers = err.response?.headers ?? {};
    const rateLimited =
      err.status === 429 ||
      (err.status === 403 &&
        (headers["x-ratelimit-remaining"] === "0" || headers["retry-after"] !== undefined));
    return {
      status: err.status,
      message: scrub(err.message),
      rateLimited,
      noResponse: err.response === undefined,
    };
  }
  const e = err as { name?: unknown; message?: unknown; status?: unknown };
  // @octokit/request rethrows an aborted fetch as is, with `status` 500.
  const aborted = e?.name === "AbortError" || e?.name === "TimeoutError";
  return {
    status: undefined,
    message: scrub(`${String(e?.name ?? "Error")}: ${String(e?.message ?? err)}`),
    rateLimited: false,
    noResponse: aborted,
  };
}

/**
 * The caller's view of a failed mint: a fixed text per kind of failure, the details (already
 * scrubbed) only in the cause.
 */
function toConnectError(f: Failure, installationId: string): ConnectError {
  const cause = new GitHubRequestFailed(f.status, f.message);
  const error = (message: string, code: Code) => new ConnectError(message, code, undefined, undefined, cause);
  if (f.noResponse || (f.status !== undefined && f.status >= 500)) {
    return error("GitHub is unavailable", Code.Unavailable);
  }
  if (f.rateLimited) return error("GitHub is rate limiting the App; try again later", Code.Unavailable);
  switch (f.status) {
    case 401:
      return error("GitHub refused the App credentials", Code.Internal);
    case 403:
      return error(
        `GitHub refused a token for installation ${installationId} (is it suspended?)`,
        Code.FailedPrecondition,
      );
    case 404:
      return error(
        `GitHub does not know installation ${installationId} (the App was uninstalled; register the new installation)`,
        Code.FailedPrecondition,
      );
    case 422:
      return error(
        `installation ${installationId} cannot access the repository with the permissions a coding agent needs (contents and pull requests: write)`,
        Code.FailedPrecondition,
      );
    default:
      return error("GitHub refused the token request", Code.Internal);
  }
}
