// The TypeScript reference as a benchmark arm: @navai/voice-backend's
// Express routes, unchanged, serving a listening socket handed over by the
// harness.
//
//   node reference_server.mjs --fd N --upstream http://127.0.0.1:PORT/v1 --key sk-...
//
// The package calls a hard-coded https://api.openai.com URL with the global
// fetch; the fetch wrapped below sends those calls to the loopback fake
// instead, and changes nothing else.
import { parseArgs } from "node:util";
import express from "express";
import { registerNavaiExpressRoutes } from "@navai/voice-backend";

const { values } = parseArgs({
  options: {
    fd: { type: "string" },
    upstream: { type: "string" },
    key: { type: "string" },
  },
});
const OPENAI = "https://api.openai.com/v1";
const upstream = values.upstream.replace(/\/+$/, "");
const realFetch = globalThis.fetch;
globalThis.fetch = (input, init) => {
  const url = String(input instanceof Request ? input.url : input);
  return realFetch(url.startsWith(OPENAI) ? upstream + url.slice(OPENAI.length) : input, init);
};

const app = express();
app.use(express.json());
app.get("/_bench/ready", (_req, res) => res.send("ok"));
registerNavaiExpressRoutes(app, {
  env: {},
  backendOptions: { openaiApiKey: values.key },
  includeFunctionsRoutes: false,
});
const server = app.listen({ fd: Number(values.fd) });
process.on("SIGTERM", () => server.close(() => process.exit(0)));
