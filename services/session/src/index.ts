export { CallbackSender, verifyCallbackSignature } from "./callbacks/callbacks.js";
export { loadSessionConfig, type SessionConfig } from "./config.js";
export { resealLegacySessions } from "./db/reseal-legacy.js";
export type { CallbackPayload, CallbackSenderLike, CallbackTargetJson } from "./dispatch/callback-outbox.js";
export { legacySealContext, SEAL_VERSION, sealContext } from "./handlers/seal-context.js";
export {
  createSessionService,
  migrateSessionSchema,
  SESSION_SERVICE_AUDIENCE,
  type SessionServiceDeps,
} from "./server.js";
