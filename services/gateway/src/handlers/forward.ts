import type { DescMethod } from "@bufbuild/protobuf";
import {
  type CallOptions,
  type Client,
  Code,
  ConnectError,
  type HandlerContext,
  type ServiceImpl,
} from "@connectrpc/connect";
import {
  type Identity,
  requireIdentity,
  type ServiceTokenSigner,
  sha256Base64url,
  USER_TOKEN_HEADER,
  userTokenKey,
} from "@kilo-cloud/common";
import { SessionService } from "@kilo-cloud/proto";

/** Codes whose messages are written for callers and pass through the gateway unchanged. */
const CALLER_CODES = new Set([
  Code.InvalidArgument,
  Code.NotFound,
  Code.AlreadyExists,
  Code.PermissionDenied,
  Code.Unauthenticated,
  Code.FailedPrecondition,
  Code.Aborted,
  Code.OutOfRange,
  Code.ResourceExhausted,
  Code.Unimplemented,
  Code.Canceled,
]);

/** Methods whose handler keeps the caller's token (sealed) to act for the user later. */
const KEEPS_USER_TOKEN = new Set([
  "PrepareSession",
  "PrepareLegacySession",
  "InitiateSession",
  "SendMessage",
]);

/** Whether the session service's `method` keeps the caller's own token (so it is forwarded). */
export function keepsUserToken(method: string): boolean {
  return KEEPS_USER_TOKEN.has(method);
}

export interface UpstreamOptions {
  sign: ServiceTokenSigner;
  audience: string;
  timeoutMs: number;
}

/** Call options that carry the caller's identity to a service behind the gateway. */
export async function upstreamCallOptions(
  caller: { identity: Identity; userToken?: string | undefined; signal: AbortSignal },
  opts: UpstreamOptions,
): Promise<CallOptions> {
  const { identity, userToken } = caller;
  const token = await opts.sign(opts.audience, {
    userId: identity.userId,
    internal: identity.internal,
    ...(userToken ? { userTokenHash: sha256Base64url(userToken) } : {}),
  });
  const headers = new Headers({ authorization: `Bearer ${token}` });
  if (userToken) headers.set(USER_TOKEN_HEADER, userToken);
  return { headers, signal: caller.signal, timeoutMs: opts.timeoutMs };
}

/** The caller of a handler, as the auth interceptor established it. */
export function callerOf(ctx: HandlerContext, withUserToken: boolean) {
  return {
    identity: requireIdentity(ctx.values),
    userToken: withUserToken ? ctx.values.get(userTokenKey) : undefined,
    signal: ctx.signal,
  };
}

/** Errors of the services behind the gateway, made safe to show to the caller. */
export function upstreamError(err: unknown, service: string): ConnectError {
  const ce = ConnectError.from(err);
  // Details (e.g. validation violations) pass on as received; connect serialises both kinds.
  if (CALLER_CODES.has(ce.code))
    return new ConnectError(
      ce.rawMessage,
      ce.code,
      undefined,
      ce.details as ConstructorParameters<typeof ConnectError>[3],
    );
  if (ce.code === Code.DeadlineExceeded) {
    return new ConnectError(
      `${service} did not answer in time`,
      Code.DeadlineExceeded,
      undefined,
      undefined,
      ce,
    );
  }
  if (ce.code === Code.Unavailable) {
    return new ConnectError(`${service} is unavailable`, Code.Unavailable, undefined, undefined, ce);
  }
  return new ConnectError(`${service} failed`, Code.Internal, undefined, undefined, ce);
}

/**
 * SessionService on the gateway: every method forwards to the session service with the
 * caller's identity in a service token. `overrides` replaces methods the gateway serves
 * itself.
 */
export function forwardingSessionHandlers(
  client: Client<typeof SessionService>,
  opts: UpstreamOptions,
  overrides: Partial<ServiceImpl<typeof SessionService>> = {},
): ServiceImpl<typeof SessionService> {
  const impl: Record<string, unknown> = {};
  for (const method of SessionService.methods as DescMethod[]) {
    const call = (client as unknown as Record<string, (req: unknown, o: CallOptions) => Promise<unknown>>)[
      method.localName
    ];
    if (!call) continue;
    impl[method.localName] = async (req: unknown, ctx: HandlerContext) => {
      const callOpts = await upstreamCallOptions(callerOf(ctx, KEEPS_USER_TOKEN.has(method.name)), opts);
      try {
        return await call(req, callOpts);
      } catch (err) {
        throw upstreamError(err, "session service");
      }
    };
  }
  return { ...(impl as ServiceImpl<typeof SessionService>), ...overrides };
}
