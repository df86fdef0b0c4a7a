import { newSessionId } from "@kilo-cloud/common";
import {
  DeleteSessionRequestSchema,
  GetSessionRequestSchema,
  InitiateSessionRequestSchema,
  InterruptSessionRequestSchema,
} from "@kilo-cloud/proto";
import { TRPCError } from "@trpc/server";
import { authedProcedure, callSession, type FacadeDeps, t } from "./context.js";
import {
  type CloudAgentSessionIdInput,
  hostedInput,
  type InitiateFromKilocodeSessionInput,
  type InitiateSessionAsyncInput,
  type InitiateSessionInput,
  type PrepareLegacySessionInput,
  type PrepareSessionInput,
  type SendMessageStreamInput,
  type SendMessageV2Input,
  type SessionIdInput,
  type UpdateSessionInput,
} from "./hosted-types.js";
import {
  asObject,
  byCloudAgentSessionId,
  bySessionId,
  prepareLegacySessionRequest,
  prepareSessionRequest,
  sendMessageRequest,
  updateSessionRequest,
} from "./inputs.js";
import { renderLog } from "./logs.js";
import { queueAck, sessionOutput } from "./outputs.js";
import { executionEvents, v1Event } from "./v1-events.js";

type Caller = Parameters<typeof callSession>[1];

/**
 * The hosted `cloud-agent` tRPC router (every procedure, same names, inputs and outputs),
 * each a translation onto the SessionService call the Connect API makes.
 */
export function createCloudAgentRouter(deps: FacadeDeps) {
  const authed = authedProcedure(deps);
  const caller = (opts: { ctx: Omit<Caller, "signal">; signal: AbortSignal | undefined }): Caller => ({
    identity: opts.ctx.identity,
    token: opts.ctx.token,
    signal: opts.signal,
  });
  const eventLog = () => {
    if (!deps.events)
      throw new TRPCError({ code: "NOT_IMPLEMENTED", message: "streaming is not configured" });
    return deps.events;
  };

  /** Checks ownership (NOT_FOUND otherwise) and renders the session's log from its events. */
  const logs = async (c: Caller, sessionId: string, executionId?: string) => {
    await callSession(deps, c, "getSession", { cloudAgentSessionId: sessionId });
    return renderLog(eventLog(), sessionId, executionId, c.signal);
  };

  /** V1: the started execution's events, as flat V1 events, until its end. */
  async function* v1Stream(c: Caller, ack: { cloudAgentSessionId: string; executionId: string }) {
    for await (const event of executionEvents(
      eventLog(),
      ack.cloudAgentSessionId,
      ack.executionId,
      c.signal,
    )) {
      const v1 = v1Event(event);
      if (v1) yield v1;
    }
  }

  /** V1 initiate: prepare (backend rule: needs the internal key here too), start, stream. */
  async function* prepareAndRun(c: Caller, raw: unknown) {
    const prepared = await callSession(deps, c, "prepareSession", prepareSessionRequest(raw));
    const ack = await callSession(deps, c, "initiateSession", {
      cloudAgentSessionId: prepared.cloudAgentSessionId,
    });
    yield* v1Stream(c, ack);
  }

  return t.router({
    prepareSession: authed
      .input(hostedInput<PrepareSessionInput>()(prepareSessionRequest))
      .mutation(async (o) => {
        const res = await callSession(deps, caller(o), "prepareSession", o.input);
        return { cloudAgentSessionId: res.cloudAgentSessionId, kiloSessionId: res.kiloSessionId };
      }),
    prepareLegacySession: authed
      .input(hostedInput<PrepareLegacySessionInput>()(prepareLegacySessionRequest))
      .mutation(async (o) => {
        const res = await callSession(deps, caller(o), "prepareLegacySession", o.input);
        return { cloudAgentSessionId: res.cloudAgentSessionId, kiloSessionId: res.kiloSessionId };
      }),
    updateSession: authed
      .input(hostedInput<UpdateSessionInput>()(updateSessionRequest))
      .mutation(async (o) => {
        await callSession(deps, caller(o), "updateSession", o.input);
        return { success: true as const };
      }),
    getSession: authed
      .input(
        hostedInput<CloudAgentSessionIdInput>()((raw) => byCloudAgentSessionId(GetSessionRequestSchema, raw)),
      )
      .query(async (o) => {
        const res = await callSession(deps, caller(o), "getSession", o.input);
        if (!res.session) throw new TRPCError({ code: "NOT_FOUND", message: "session not found" });
        return sessionOutput(res.session);
      }),
    initiateFromKilocodeSessionV2: authed
      .input(
        hostedInput<CloudAgentSessionIdInput>()((raw) =>
          byCloudAgentSessionId(InitiateSessionRequestSchema, raw),
        ),
      )
      .mutation(async (o) => queueAck(await callSession(deps, caller(o), "initiateSession", o.input))),
    sendMessageV2: authed
      .input(hostedInput<SendMessageV2Input>()(sendMessageRequest))
      .mutation(async (o) => queueAck(await callSession(deps, caller(o), "sendMessage", o.input))),
    interruptSession: authed
      .input(hostedInput<SessionIdInput>()((raw) => bySessionId(InterruptSessionRequestSchema, raw)))
      .mutation(async (o) => {
        const res = await callSession(deps, caller(o), "interruptSession", o.input);
        return {
          success: res.success,
          killedProcessIds: res.killedProcessIds,
          failedProcessIds: res.failedProcessIds,
          message: res.message,
        };
      }),
    deleteSession: authed
      .input(hostedInput<SessionIdInput>()((raw) => bySessionId(DeleteSessionRequestSchema, raw)))
      .mutation(async (o) => {
        await callSession(deps, caller(o), "deleteSession", o.input);
        return { success: true as const };
      }),
    getSessionLogs: authed
      .input(hostedInput<SessionIdInput>()((raw) => bySessionId(GetSessionRequestSchema, raw)))
      .query(async (o) => {
        const sessionId = o.input.cloudAgentSessionId;
        return { content: await logs(caller(o), sessionId), sessionId };
      }),
    getWrapperLogs: authed
      .input(
        hostedInput<SessionIdInput & { executionId: string }>()((raw) => {
          const { executionId } = asObject(raw);
          if (typeof executionId !== "string" || !/^exec_[A-Za-z0-9-]{1,64}$/.test(executionId)) {
            throw new TRPCError({
              code: "BAD_REQUEST",
              message: "executionId: must be an execution id (exec_…)",
            });
          }
          return { ...bySessionId(GetSessionRequestSchema, raw), executionId };
        }),
      )
      .query(async (o) => {
        const { cloudAgentSessionId: sessionId, executionId } = o.input;
        return { content: await logs(caller(o), sessionId, executionId), sessionId, executionId };
      }),
    health: authed.query(() => ({
      status: "ok" as const,
      timestamp: new Date().toISOString(),
      version: "1.0.0-trpc",
    })),

    // Deprecated V1 SSE subscriptions.
    initiateSessionStream: authed
      .input(hostedInput<InitiateSessionInput>()(asObject))
      .subscription((o) => prepareAndRun(caller(o), o.input)),
    initiateSessionAsync: authed
      .input(hostedInput<InitiateSessionAsyncInput>()(asObject))
      .subscription((o) => {
        const { callbackUrl, callbackHeaders, ...rest } = o.input;
        const callbackTarget =
          callbackUrl === undefined ? undefined : { url: callbackUrl, headers: callbackHeaders ?? {} };
        return prepareAndRun(caller(o), { ...rest, ...(callbackTarget ? { callbackTarget } : {}) });
      }),
    initiateFromKilocodeSession: authed
      .input(hostedInput<InitiateFromKilocodeSessionInput>()(asObject))
      .subscription(async function* (o) {
        const c = caller(o);
        let cloudAgentSessionId = o.input.cloudAgentSessionId;
        if (o.input.kiloSessionId !== undefined) {
          cloudAgentSessionId = newSessionId();
          await callSession(
            deps,
            c,
            "prepareLegacySession",
            prepareLegacySessionRequest({ ...o.input, cloudAgentSessionId }),
          );
        }
        const req = byCloudAgentSessionId(InitiateSessionRequestSchema, { cloudAgentSessionId });
        yield* v1Stream(c, await callSession(deps, c, "initiateSession", req));
      }),
    sendMessageStream: authed
      .input(hostedInput<SendMessageStreamInput>()(asObject))
      .subscription(async function* (o) {
        const c = caller(o);
        const req = sendMessageRequest({ ...o.input, cloudAgentSessionId: o.input.sessionId });
        yield* v1Stream(c, await callSession(deps, c, "sendMessage", req));
      }),
  });
}

export type CloudAgentRouter = ReturnType<typeof createCloudAgentRouter>;
