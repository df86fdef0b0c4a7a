import { defineConfig } from "vitest/config";

/**
 * The cluster tier: tests against a real Kubernetes API server and kubelet. Run by
 * `npm run test:cluster` (deploy/local-cluster/test-cluster.sh), which brings the cluster
 * up, loads the sandbox image, runs these and tears the cluster down.
 */
export default defineConfig({
  test: {
    include: ["deploy/test/cluster/**/*.cluster.test.ts"],
    testTimeout: 180_000,
    hookTimeout: 300_000,
    // One node with two cores: the files share it, one at a time.
    fileParallelism: false,
    pool: "forks",
  },
});
