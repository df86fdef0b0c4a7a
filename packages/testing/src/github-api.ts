import {
  generateKeyPair as generateKeyPairCb,
  type KeyObject,
  randomInt,
  timingSafeEqual,
} from "node:crypto";
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { promisify } from "node:util";
import { importSPKI, type JWTPayload, errors as joseErrors, jwtVerify } from "jose";
import type { GitAuth } from "./git-server.js";

/**
 * A GitHub REST API double for the App installation-token flow, on loopback. It is strict
 * where GitHub is: the App JWT must be RS256, signed with the App's key, `iss` = App id,
 * `iat` not in the future, `exp` in the future and at most 10 minutes after `iat`; the
 * access-token body must have GitHub's shape; a repository outside the installation or a
 * permission it was not granted is refused with 422. Tokens come back in GitHub's JSON
 * shape, in the `ghs_` format, and every call is counted so tests can assert on them.
 */

const DOCS = "https://docs.github.com/rest";
const TOKEN_LIFETIME_MS = 60 * 60_000;
/** GitHub's limit on `exp - iat` (and on how far `exp` may be in the future). */
const MAX_JWT_LIFETIME_S = 600;
/** How far in the future `iat` may be before GitHub calls it invalid (clock drift). */
const IAT_LEEWAY_S = 60;
const LOGIN = /^[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})$/;
const REPO_NAME = /^[A-Za-z0-9._-]{1,100}$/;
/** The App permissions the double knows; GitHub knows more, these are the ones tests need. */
const PERMISSION_LEVELS: Record<string, readonly string[]> = {
  contents: ["read", "write"],
  pull_requests: ["read", "write"],
  issues: ["read", "write"],
  metadata: ["read"],
  checks: ["read", "write"],
  statuses: ["read", "write"],
  workflows: ["write"],
  actions: ["read", "write"],
};

export type GitHubPermissions = Record<string, string>;

export interface GitHubInstallation {
  /** Login of the user or organization the App is installed on. */
  account: string;
  accountType?: "Organization" | "User";
  /** Repository names (without owner) it may access; omitted: all of the account's. */
  repositories?: string[];
  /** What the installation was granted (default contents/pull_requests write, metadata read). */
  permissions?: GitHubPermissions;
  /** A suspended installation gets 403 for token requests, as on GitHub. */
  suspended?: boolean;
}

export interface GitHubApiOptions {
  appId: number | string;
  /** The App's public key (SPKI PEM, RSA); GitHub keeps this half of the key pair. */
  publicKeyPem: string | KeyObject;
  /** Installations by id. */
  installations?: Record<string, GitHubInstallation>;
  /** Clock for token lifetimes (the App JWT is checked against the real clock it is signed with). */
  now?: () => number;
}

/** An installation access token the double issued. */
export interface IssuedGitHubToken {
  token: string;
  installationId: number;
  account: string;
  /** Repository names it is limited to; undefined when it covers the whole installation. */
  repositories: string[] | undefined;
  permissions: GitHubPermissions;
  expiresAt: Date;
}

export interface GitHubApiRequest {
  method: string;
  path: string;
  status: number;
}

export interface GitHubApi extends AsyncDisposable {
  /** `http://127.0.0.1:<port>`: the API base URL (as `https://api.github.com`). */
  readonly url: string;
  /** Access-token requests received (`POST /app/installations/:id/access_tokens`), any outcome. */
  readonly calls: number;
  /** Every request, in order, with the status answered. */
  readonly requests: readonly GitHubApiRequest[];
  /** Every token issued, in order. */
  readonly tokens: readonly IssuedGitHubToken[];
  /** The issued tokens by value, for fixtures that must accept exactly these. */
  readonly issuedTokens: ReadonlyMap<string, IssuedGitHubToken>;
  addInstallation(id: number, installation: GitHubInstallation): void;
  removeInstallation(id: number): void;
  /** Makes access-token requests answer this status (e.g. 502) until called with undefined. */
  failWith(status: number | undefined): void;
  /** Holds every access-token answer this long (to make concurrent requests overlap). */
  setLatency(ms: number): void;
  /**
   * The issued, unexpired token that allows `access` on `repo` ("owner/name"), or undefined:
   * what a forge checks when git presents the token.
   */
  checkToken(token: string, repo: string, access?: "read" | "write"): IssuedGitHubToken | undefined;
  /**
   * Basic auth for the git server fixture that accepts exactly the issued tokens, as GitHub
   * does: user `x-access-token`, password the token, limited to its repositories and
   * permissions (push needs contents: write).
   */
  gitAuth(): GitAuth;
  close(): Promise<void>;
}

/** A GitHub App key pair as GitHub hands it out: the private key in PKCS#1 PEM. */
export async function generateGitHubAppKey(): Promise<{ privateKeyPem: string; publicKeyPem: string }> {
  const { privateKey, publicKey } = await promisify(generateKeyPairCb)("rsa", { modulusLength: 2048 });
  return {
    privateKeyPem: privateKey.export({ type: "pkcs1", format: "pem" }).toString(),
    publicKeyPem: publicKey.export({ type: "spki", format: "pem" }).toString(),
  };
}

const BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

const CRC_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();

function crc32(text: string): number {
  let c = 0xffffffff;
  for (const byte of Buffer.from(text, "utf8")) c = CRC_TABLE[(c ^ byte) & 0xff]! ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

function base62(n: number, width: number): string {
  let s = "";
  let v = n;
  while (v > 0) {
    s = BASE62[v % 62] + s;
    v = Math.floor(v / 62);
  }
  return s.padStart(width, "0");
}

/**
 * A token in GitHub's current format: `ghs_`, 30 random base62 characters and a 6-character
 * base62 CRC32 of them (36 after the prefix).
 */
export function newGitHubInstallationToken(): string {
  let random = "";
  for (let i = 0; i < 30; i++) random += BASE62[randomInt(62)];
  return `ghs_${random}${base62(crc32(random), 6)}`;
}

/** True for a well-formed `ghs_` token whose checksum matches. */
export function isGitHubInstallationToken(token: string): boolean {
  const m = /^ghs_([0-9A-Za-z]{30})([0-9A-Za-z]{6})$/.exec(token);
  return m !== null && base62(crc32(m[1]!), 6) === m[2];
}

class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly extra: Record<string, unknown> = {},
  ) {
    super(message);
  }
}

function sameSecret(a: string, b: string): boolean {
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  return x.length === y.length && timingSafeEqual(x, y);
}

async function readJson(req: IncomingMessage): Promise<unknown> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    size += (chunk as Buffer).length;
    if (size > 64 * 1024) throw new HttpError(413, "Payload too large");
    chunks.push(chunk as Buffer);
  }
  if (size === 0) return {};
  try {
    return JSON.parse(Buffer.concat(chunks).toString("utf8"));
  } catch {
    throw new HttpError(400, "Problems parsing JSON");
  }
}

const invalid = (detail: string) => new HttpError(422, `Invalid request.\n\n${detail}`);

interface TokenRequestBody {
  repositories?: string[];
  repository_ids?: number[];
  permissions?: GitHubPermissions;
}

/** Checks the body against GitHub's schema for `POST /app/installations/{id}/access_tokens`. */
function parseTokenRequest(body: unknown): TokenRequestBody {
  if (typeof body !== "object" || body === null || Array.isArray(body)) {
    throw invalid("The request body must be an object.");
  }
  const out: TokenRequestBody = {};
  for (const [key, value] of Object.entries(body)) {
    if (key === "repositories") {
      if (!Array.isArray(value) || value.length > 500 || !value.every((v) => typeof v === "string")) {
        throw invalid("For 'properties/repositories', it must be an array of at most 500 strings.");
      }
      for (const name of value as string[]) {
        // GitHub wants names here; "owner/name" is a common mistake it refuses.
        if (!REPO_NAME.test(name)) throw invalid(`"${name}" is not a repository name.`);
      }
      out.repositories = value as string[];
    } else if (key === "repository_ids") {
      if (!Array.isArray(value) || !value.every((v) => Number.isInteger(v) && (v as number) > 0)) {
        throw invalid("For 'properties/repository_ids', it must be an array of integers.");
      }
      out.repository_ids = value as number[];
    } else if (key === "permissions") {
      if (typeof value !== "object" || value === null || Array.isArray(value)) {
        throw invalid("For 'properties/permissions', it must be an object.");
      }
      for (const [name, level] of Object.entries(value)) {
        const levels = PERMISSION_LEVELS[name];
        if (!levels) throw invalid(`"${name}" is not a permission.`);
        if (typeof level !== "string" || !levels.includes(level)) {
          throw invalid(`For 'permissions/${name}', "${String(level)}" is not one of ${levels.join(", ")}.`);
        }
      }
      out.permissions = value as GitHubPermissions;
    } else {
      // GitHub ignores unknown keys in most places but not here: be strict so a typo shows.
      throw invalid(`"${key}" is not a permitted key.`);
    }
  }
  return out;
}

const LEVEL_RANK: Record<string, number> = { read: 1, write: 2, admin: 3 };

const DEFAULT_PERMISSIONS: GitHubPermissions = {
  contents: "write",
  pull_requests: "write",
  metadata: "read",
};

export async function startGitHubApi(opts: GitHubApiOptions): Promise<GitHubApi> {
  const appId = String(opts.appId);
  const publicKey =
    typeof opts.publicKeyPem === "string" ? await importSPKI(opts.publicKeyPem, "RS256") : opts.publicKeyPem;
  const now = opts.now ?? Date.now;
  const installations = new Map<number, GitHubInstallation>(
    Object.entries(opts.installations ?? {}).map(([id, inst]) => [Number(id), inst]),
  );
  const requests: GitHubApiRequest[] = [];
  const tokens: IssuedGitHubToken[] = [];
  const issuedTokens = new Map<string, IssuedGitHubToken>();
  let calls = 0;
  let failure: number | undefined;
  let latencyMs = 0;
  let nextRepoId = 1000;
  const repoIds = new Map<string, number>();

  /** Verifies the App JWT as GitHub does; throws GitHub's 401 otherwise. */
  const authenticateApp = async (req: IncomingMessage): Promise<void> => {
    const m = /^(?:Bearer|bearer) +([^\s]+)$/.exec(req.headers.authorization ?? "");
    if (!m) {
      throw new HttpError(401, "A JSON web token could not be decoded");
    }
    let payload: JWTPayload;
    try {
      ({ payload } = await jwtVerify(m[1]!, publicKey, {
        algorithms: ["RS256"],
        requiredClaims: ["iat", "exp", "iss"],
      }));
    } catch (err) {
      if (err instanceof joseErrors.JWTExpired) {
        throw new HttpError(
          401,
          "'Expiration time' claim ('exp') must be a numeric value representing the future time at which the assertion expires",
        );
      }
      if (err instanceof joseErrors.JWSSignatureVerificationFailed) {
        throw new HttpError(401, "A JSON web token could not be decoded");
      }
      if (err instanceof joseErrors.JOSEAlgNotAllowed) {
        throw new HttpError(401, "A JSON web token could not be decoded");
      }
      if (err instanceof joseErrors.JWTClaimValidationFailed && err.claim === "iat") {
        throw new HttpError(
          401,
          "'Issued at' claim ('iat') must be an Integer representing the time that the assertion was issued",
        );
      }
      throw new HttpError(401, "A JSON web token could not be decoded");
    }
    const { iat, exp, iss } = payload;
    const nowS = Math.floor(Date.now() / 1000);
    if (!Number.isInteger(iat) || (iat as number) > nowS + IAT_LEEWAY_S) {
      throw new HttpError(
        401,
        "'Issued at' claim ('iat') must be an Integer representing the time that the assertion was issued",
      );
    }
    if (!Number.isInteger(exp) || (exp as number) <= nowS) {
      throw new HttpError(
        401,
        "'Expiration time' claim ('exp') must be a numeric value representing the future time at which the assertion expires",
      );
    }
    if (
      (exp as number) - (iat as number) > MAX_JWT_LIFETIME_S ||
      (exp as number) > nowS + MAX_JWT_LIFETIME_S
    ) {
      throw new HttpError(401, "'Expiration time' claim ('exp') is too far in the future");
    }
    // GitHub accepts the App id as a number or a string (or the client id).
    if ((typeof iss !== "string" && typeof iss !== "number") || String(iss) !== appId) {
      throw new HttpError(401, "'Issuer' claim ('iss') must be an Integer or the App's client ID");
    }
  };

  const repository = (account: string, name: string) => {
    const full = `${account}/${name}`.toLowerCase();
    let id = repoIds.get(full);
    if (id === undefined) {
      id = nextRepoId++;
      repoIds.set(full, id);
    }
    return {
      id,
      node_id: Buffer.from(`010:Repository${id}`).toString("base64"),
      name,
      full_name: `${account}/${name}`,
      private: true,
      owner: { login: account, id: 1, type: "Organization" },
    };
  };

  const installationJson = (id: number, inst: GitHubInstallation) => ({
    id,
    account: { login: inst.account, id: 1, type: inst.accountType ?? "Organization" },
    app_id: Number(appId) || appId,
    target_type: inst.accountType ?? "Organization",
    repository_selection: inst.repositories ? "selected" : "all",
    permissions: inst.permissions ?? DEFAULT_PERMISSIONS,
    suspended_at: inst.suspended ? new Date(now()).toISOString() : null,
  });

  const createToken = async (id: number, req: IncomingMessage) => {
    calls++;
    await authenticateApp(req);
    const body = parseTokenRequest(await readJson(req));
    if (latencyMs > 0) await new Promise((r) => setTimeout(r, latencyMs));
    if (failure !== undefined) {
      throw new HttpError(failure, failure >= 500 ? "Server Error" : "Error");
    }
    const inst = installations.get(id);
    if (!inst) throw new HttpError(404, "Not Found");
    if (inst.suspended) throw new HttpError(403, "This installation has been suspended");
    const granted = inst.permissions ?? DEFAULT_PERMISSIONS;
    const permissions = body.permissions ?? granted;
    for (const [name, level] of Object.entries(permissions)) {
      const has = granted[name];
      if (!has || (LEVEL_RANK[has] ?? 0) < (LEVEL_RANK[level] ?? 0)) {
        throw new HttpError(422, "The permissions requested are not granted to this installation.");
      }
    }
    let names: string[] | undefined;
    if (body.repositories || body.repository_ids) {
      names = [...(body.repositories ?? [])];
      for (const rid of body.repository_ids ?? []) {
        const known = [...repoIds].find(([, v]) => v === rid);
        if (!known) {
          throw new HttpError(
            422,
            "There is at least one repository that does not exist or is not accessible to the parent installation.",
          );
        }
        names.push(known[0].split("/")[1]!);
      }
      const allowed = inst.repositories?.map((r) => r.toLowerCase());
      if (allowed && !names.every((n) => allowed.includes(n.toLowerCase()))) {
        throw new HttpError(
          422,
          "There is at least one repository that does not exist or is not accessible to the parent installation.",
        );
      }
    }
    const token = newGitHubInstallationToken();
    // GitHub answers whole seconds.
    const expiresAt = new Date(Math.floor((now() + TOKEN_LIFETIME_MS) / 1000) * 1000);
    const fullPermissions = { ...permissions, metadata: "read" };
    const issued: IssuedGitHubToken = {
      token,
      installationId: id,
      account: inst.account,
      repositories: names,
      permissions: fullPermissions,
      expiresAt,
    };
    tokens.push(issued);
    issuedTokens.set(token, issued);
    const selected = names ?? inst.repositories;
    return {
      token,
      expires_at: expiresAt.toISOString().replace(/\.\d{3}Z$/, "Z"),
      permissions: fullPermissions,
      repository_selection: selected ? "selected" : "all",
      ...(selected ? { repositories: selected.map((n) => repository(inst.account, n)) } : {}),
    };
  };

  const route = async (req: IncomingMessage): Promise<[number, unknown]> => {
    const path = new URL(req.url ?? "/", "http://localhost").pathname;
    if (!req.headers["user-agent"]) {
      throw new HttpError(
        403,
        "Request forbidden by administrative rules. Please make sure your request has a User-Agent header",
      );
    }
    const tokenPath = /^\/app\/installations\/(\d+)\/access_tokens$/.exec(path);
    if (tokenPath) {
      if (req.method !== "POST") throw new HttpError(404, "Not Found");
      return [201, await createToken(Number(tokenPath[1]), req)];
    }
    if (req.method === "GET" && path === "/app") {
      await authenticateApp(req);
      return [
        200,
        { id: Number(appId) || appId, slug: "kilo-test", name: "Kilo test", owner: { login: "kilo" } },
      ];
    }
    const instPath = /^\/app\/installations\/(\d+)$/.exec(path);
    if (req.method === "GET" && instPath) {
      await authenticateApp(req);
      const id = Number(instPath[1]);
      const inst = installations.get(id);
      if (!inst) throw new HttpError(404, "Not Found");
      return [200, installationJson(id, inst)];
    }
    throw new HttpError(404, "Not Found");
  };

  const server = createServer((req: IncomingMessage, res: ServerResponse) => {
    const path = new URL(req.url ?? "/", "http://localhost").pathname;
    const send = (status: number, body: unknown) => {
      requests.push({ method: req.method ?? "", path, status });
      res.writeHead(status, {
        "content-type": "application/json; charset=utf-8",
        date: new Date().toUTCString(),
        "x-github-request-id": `TEST:${requests.length}`,
      });
      res.end(JSON.stringify(body));
    };
    route(req).then(
      ([status, body]) => send(status, body),
      (err: unknown) => {
        req.resume();
        if (err instanceof HttpError) {
          send(err.status, { message: err.message, documentation_url: DOCS, ...err.extra });
        } else {
          send(500, { message: "Server Error", documentation_url: DOCS });
        }
      },
    );
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => resolve());
  });
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;

  const checkToken: GitHubApi["checkToken"] = (token, repo, access = "read") => {
    const found = [...issuedTokens.values()].find((t) => sameSecret(t.token, token));
    if (!found || found.expiresAt.getTime() <= now()) return undefined;
    const [owner, name] = repo.split("/");
    if (!owner || !name || owner.toLowerCase() !== found.account.toLowerCase()) return undefined;
    const inst = installations.get(found.installationId);
    if (!inst) return undefined;
    const scope = (found.repositories ?? inst.repositories)?.map((r) => r.toLowerCase());
    if (scope && !scope.includes(name.toLowerCase())) return undefined;
    const level = found.permissions.contents;
    if (!level || (LEVEL_RANK[level] ?? 0) < (LEVEL_RANK[access] ?? 0)) return undefined;
    return found;
  };

  const close = () =>
    new Promise<void>((resolve) => {
      server.closeAllConnections();
      server.close(() => resolve());
    });

  return {
    url,
    get calls() {
      return calls;
    },
    requests,
    tokens,
    issuedTokens,
    addInstallation(id, installation) {
      if (!LOGIN.test(installation.account))
        throw new Error(`invalid account login "${installation.account}"`);
      installations.set(id, installation);
    },
    removeInstallation(id) {
      installations.delete(id);
    },
    failWith(status) {
      failure = status;
    },
    setLatency(ms) {
      latencyMs = ms;
    },
    checkToken,
    gitAuth() {
      return {
        checkPassword: (username, password, access) =>
          username === "x-access-token" &&
          access.repo !== undefined &&
          checkToken(password, access.repo, access.write ? "write" : "read") !== undefined,
      };
    },
    close,
    [Symbol.asyncDispose]: close,
  };
}
