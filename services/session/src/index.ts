export { buildSession, connectSessionInfra, type SessionInfra } from "./build.js";
export { CallbackSender, verifyCallbackSignature } from "./callbacks/callbacks.js";
export { loadSessionConfig, type SessionConfig } from "./config.js";
export type { CallbackPayload, CallbackSenderLike, CallbackTargetJson } from "./dispatch/callback-outbox.js";
export {
  createSessionService,
  migrateSessionSchema,
  SESSION_SERVICE_AUDIENCE,
  type SessionServiceApp,
  type SessionServiceDeps,
} from "./server.js";
