export { TOKEN_SERVICE_AUDIENCE, TOKEN_SERVICE_CALLER_ISSUER } from "./audience.js";
export { METHOD_AUTH, type MethodAuth } from "./auth.js";
export { buildToken, connectTokenInfra, type TokenInfra } from "./build.js";
export {
  createTokenClient,
  type RepositoryTokenKey,
  type TokenClient,
  type TokenClientOptions,
} from "./client.js";
export { loadTokenConfig, type TokenConfig } from "./config.js";
export { AGENT_PERMISSIONS, type MintedToken, type MintToken } from "./github/app-tokens.js";
export {
  createTokenService,
  DEFAULT_CACHE_MARGIN_MS,
  type GitHubAppSettings,
  migrateTokenSchema,
  type TokenServiceApp,
  type TokenServiceDeps,
} from "./server.js";
