#!/usr/bin/env node
// The kilo-cloud CLI. The project runs its TypeScript through tsx (no build step).
import { register } from "tsx/esm/api";

register();
const { run } = await import("../cli/main.ts");
await run();
