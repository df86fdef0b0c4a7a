import { type Client, Code, ConnectError } from "@connectrpc/connect";
import {
  bearerToken,
  type EventLog,
  type Identity,
  INTERNAL_API_KEY_HEADER,
  type Logger,
  secretEquals,
  type UserTokenVerifier,
} from "@kilo-cloud/common";
import type { SessionService } from "@kilo-cloud/proto";
import { initTRPC } from "@trpc/server";
import { keepsUserToken, type UpstreamOptions, upstreamCallOptions } from "../handlers/forward.js";
import { toTRPCError } from "./errors.js";

/** What the facade needs of the gateway: the same clients and checks the Connect API uses. */
export interface FacadeDeps {
  sessions: Client<typeof SessionService>;
  upstream: UpstreamOptions;
  verifyUser: UserTokenVerifier;
  internalApiKey: string;
  events?: EventLog | undefined;
  logger: Logger;
}

/** Per request: the two headers authentication reads. */
export interface RequestContext {
  authorization: string | undefined;
  internalKey: string | undefined;
}

const header = (v: string | string[] | undefined) => (Array.isArray(v) ? v[0] : v);

export function requestContext(headers: Record<string, string | string[] | undefined>): RequestContext {
  return {
    authorization: header(headers.authorization),
    internalKey: header(headers[INTERNAL_API_KEY_HEADER]),
  };
}

// `isDev: false`: no server stack traces in client-visible error bodies.
export const t = initTRPC.context<RequestContext>().create({ isDev: false });

/** Every procedure needs a valid bearer token: UNAUTHORIZED (a tRPC JSON body) otherwise. */
export function authedProcedure(deps: FacadeDeps) {
  return t.procedure.use(async ({ ctx, next }) => {
    try {
      const token = bearerToken(ctx.authorization ?? null);
      if (!token) {
        throw new ConnectError("missing bearer token (Authorization: Bearer <token>)", Code.Unauthenticated);
      }
      const { userId } = await deps.verifyUser(token);
      const identity: Identity = { userId, internal: secretEquals(ctx.internalKey, deps.internalApiKey) };
      return next({ ctx: { identity, token } });
    } catch (err) {
      throw toTRPCError(err);
    }
  });
}

/**
 * Calls one SessionService method as the caller, exactly as the Connect API forwards it
 * (service token with the caller's identity, the user token where the method keeps it);
 * errors come back as tRPC errors through the one code mapping.
 */
export async function callSession<M extends keyof Client<typeof SessionService>>(
  deps: FacadeDeps,
  caller: { identity: Identity; token: string; signal: AbortSignal | undefined },
  method: M,
  req: Parameters<Client<typeof SessionService>[M]>[0],
): Promise<Awaited<ReturnType<Client<typeof SessionService>[M]>>> {
  const rpcName = method.charAt(0).toUpperCase() + method.slice(1);
  try {
    const opts = await upstreamCallOptions(
      {
        identity: caller.identity,
        userToken: keepsUserToken(rpcName) ? caller.token : undefined,
        signal: caller.signal ?? new AbortController().signal,
      },
      deps.upstream,
    );
    const call = deps.sessions[method] as (r: unknown, o: unknown) => Promise<unknown>;
    return (await call(req, opts)) as Awaited<ReturnType<Client<typeof SessionService>[M]>>;
  } catch (err) {
    throw toTRPCError(err);
  }
}
