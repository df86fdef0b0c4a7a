export { buildSession, connectSessionInfra, type SessionInfra } from "./build.js";
export {
  type AttemptResult,
  type CallbackPayload,
  CallbackSender,
  type CallbackTarget,
} from "./callbacks/callbacks.js";
export { DEFAULT_RETRY_SCHEDULE_MS, parseRetrySchedule } from "./callbacks/retry-schedule.js";
export { generateWebhookSecret, receiverSecret } from "./callbacks/standard-webhooks.js";
export { loadSessionConfig, type SessionConfig } from "./config.js";
export { resealLegacySessions } from "./db/reseal-legacy.js";
export type { CallbackSenderLike } from "./dispatch/callback-outbox.js";
export { legacySealContext, SEAL_VERSION, sealContext } from "./handlers/seal-context.js";
export {
  createSessionService,
  migrateSessionSchema,
  SESSION_SERVICE_AUDIENCE,
  type SessionServiceApp,
  type SessionServiceDeps,
} from "./server.js";
