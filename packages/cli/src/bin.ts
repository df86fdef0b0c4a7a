#!/usr/bin/env node
import { run } from "./main.js";

await run();
