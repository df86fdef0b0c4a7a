#!/usr/bin/env node
// The kilo-cloud CLI from a clone (`npx kilo-cloud …`): packages/cli's sources through tsx,
// with workspace packages resolved to their sources (the "kilo-cloud-source" export condition), so no
// build is needed. Installed users get @kilo-cloud/cli's built bin instead.
import { register } from "node:module";
import { register as registerTsx } from "tsx/esm/api";

register(
  "data:text/javascript,export function resolve(s,c,n){return n(s,{...c,conditions:[...c.conditions,'kilo-cloud-source']})}",
);
registerTsx();
const { run } = await import("../packages/cli/src/main.ts");
await run();
