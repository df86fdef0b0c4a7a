import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { REPO } from "./helm.js";

/**
 * The sandbox image has two builds: Dockerfile.sandbox (with Docker) and
 * deploy/local-cluster/sandbox-image.sh (a Debian rootfs, without Docker). Both follow
 * sandbox-image.json; this checks the Dockerfile against it (the script reads it directly,
 * and the cluster tier checks the image it built holds it).
 */
const manifest = JSON.parse(readFileSync(join(REPO, "deploy/local-cluster/sandbox-image.json"), "utf8")) as {
  debian: string;
  aptPackages: string[];
  node: string;
  kilo: string;
  gh: string;
  glab: string;
  user: { name: string; uid: number; gid: number; home: string };
  workdir: string;
};
const dockerfile = readFileSync(join(REPO, "Dockerfile.sandbox"), "utf8");
const arg = (name: string) => dockerfile.match(new RegExp(`^ARG ${name}=(\\S+)$`, "m"))?.[1];

describe("Dockerfile.sandbox and sandbox-image.json describe the same image", () => {
  it("the same versions of node, kilo, gh and glab, on the same Debian", () => {
    expect(arg("NODE_VERSION")).toBe(manifest.node);
    expect(arg("KILO_VERSION")).toBe(manifest.kilo);
    expect(arg("GH_VERSION")).toBe(manifest.gh);
    expect(arg("GLAB_VERSION")).toBe(manifest.glab);
    const bases = [...dockerfile.matchAll(/^FROM node:\$\{NODE_VERSION\}-(\w+)-slim/gm)].map((m) => m[1]);
    expect(bases.length).toBeGreaterThan(0);
    for (const suite of bases) expect(suite).toBe(manifest.debian);
  });

  it("the same apt packages", () => {
    const install = dockerfile.match(/apt-get install -y --no-install-recommends\s*\\\n([\s\S]*?)&&/);
    const packages = install?.[1]?.replace(/\\\n/g, " ").trim().split(/\s+/) ?? [];
    expect([...packages].sort()).toEqual([...manifest.aptPackages].sort());
  });

  it("the same user, home and working directory", () => {
    expect(dockerfile).toContain(`usermod --login ${manifest.user.name} --home ${manifest.user.home}`);
    expect(dockerfile).toMatch(new RegExp(`^USER ${manifest.user.uid}:${manifest.user.gid}$`, "m"));
    expect(dockerfile).toMatch(new RegExp(`^WORKDIR ${manifest.workdir}$`, "m"));
    // node's uid/gid 1000 in the node image becomes the sandbox user.
    expect(manifest.user.uid).toBe(1000);
  });

  it("kilo is the version the sandbox-manager depends on (and node_modules holds)", () => {
    const pkg = JSON.parse(readFileSync(join(REPO, "services/sandbox-manager/package.json"), "utf8"));
    expect(pkg.optionalDependencies["@kilocode/cli-linux-x64"]).toBe(manifest.kilo);
    const installed = join(REPO, "node_modules/@kilocode/cli-linux-x64/package.json");
    expect(JSON.parse(readFileSync(installed, "utf8")).version).toBe(manifest.kilo);
  });
});
