import { fileURLToPath } from "node:url";
import { configDefaults, defineConfig } from "vitest/config";

export default defineConfig({
  // The SDK is built for users (dist/); tests run its sources, never a stale build.
  resolve: {
    alias: [
      {
        find: /^@kilo-cloud\/sdk$/,
        replacement: fileURLToPath(new URL("packages/sdk/src/index.ts", import.meta.url)),
      },
    ],
  },
  test: {
    include: [
      "app/**/*.test.ts",
      "packages/*/src/**/*.test.ts",
      "packages/*/test/**/*.test.ts",
      "services/*/src/**/*.test.ts",
      "services/*/test/**/*.test.ts",
      "deploy/test/**/*.test.ts",
      // As deployed: the chart rendered, each service a process from its main.ts.
      "test/deployed/**/*.test.ts",
    ],
    // The cluster tier needs a running cluster: `npm run test:cluster` (vitest.cluster.config.ts).
    exclude: [...configDefaults.exclude, "**/*.cluster.test.ts"],
    testTimeout: 30_000,
    hookTimeout: 60_000,
    // Integration tests start real servers; two cores do not gain from many workers.
    pool: "forks",
    poolOptions: { forks: { maxForks: 2, minForks: 1 } },
  },
});
