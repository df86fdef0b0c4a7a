export { loadSessionConfig, type SessionConfig } from "./config.js";
export {
  createSessionService,
  migrateSessionSchema,
  SESSION_SERVICE_AUDIENCE,
  type SessionServiceDeps,
} from "./server.js";
