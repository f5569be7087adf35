// Mint a client secret with the published @navai/voice-frontend client, unchanged.
//
//   node mint.mjs <apiBaseUrl> [request-json]
//
// Prints the client's result as JSON; on failure prints the error message to
// stdout and exits 1. The request defaults to what a voice page would send.
import { createNavaiBackendClient } from "@navai/voice-frontend";

const [apiBaseUrl, rawRequest] = process.argv.slice(2);
if (!apiBaseUrl) {
  console.error("usage: node mint.mjs <apiBaseUrl> [request-json]");
  process.exit(2);
}
const request = rawRequest
  ? JSON.parse(rawRequest)
  : { model: "gpt-realtime", voice: "marin", language: "Spanish", voiceAccent: "neutral" };

try {
  const client = createNavaiBackendClient({ apiBaseUrl });
  const result = await client.createClientSecret(request);
  console.log(JSON.stringify(result));
} catch (error) {
  console.log(error instanceof Error ? error.message : String(error));
  process.exit(1);
}
