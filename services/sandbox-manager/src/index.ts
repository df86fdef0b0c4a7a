export {
  buildSandboxManager,
  connectSandboxManagerInfra,
  createDriver,
  runnerSettings,
  type SandboxManagerInfra,
} from "./build.js";
export { loadSandboxManagerConfig, type SandboxManagerConfig } from "./config.js";
export * from "./drivers/driver.js";
export { RELAY_HOST } from "./drivers/local/egress-proxy.js";
export { LocalDriver, type LocalDriverOptions } from "./drivers/local/local-driver.js";
export {
  DEFAULT_LOCAL_SANDBOX,
  type LocalSandboxSettings,
  localDriverConfinement,
  readLocalSandboxSettings,
} from "./drivers/local/settings.js";
export {
  baseSessionEnvironment,
  DEFAULT_RUNNER_SETTINGS,
  ExecutionRunner,
  type RepositoryTokens,
  type RunnerSettings,
} from "./execution/runner.js";
export { type KiloProvider, packagedKiloBinary } from "./kilo/command.js";
export {
  createSandboxManager,
  SANDBOX_SERVICE_AUDIENCE,
  type SandboxManagerApp,
  SESSION_SERVICE_ISSUER,
} from "./server.js";
