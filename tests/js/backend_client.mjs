// Call one method of the published @navai/voice-frontend backend client, unchanged.
//
//   node backend_client.mjs <apiBaseUrl> <method> [input-json]
//
// <method> is createClientSecret, listFunctions, executeFunction (input
// {"functionName": ..., "payload": ...}) or synthesizeSpeech. Prints
// {"ok": true, "result": ...} with what the method returned, or
// {"ok": false, "error": ...} with the message of the error it threw; exits
// 0 either way, and 2 on a usage error.
import { createNavaiBackendClient } from "@navai/voice-frontend";

const METHODS = ["createClientSecret", "listFunctions", "executeFunction", "synthesizeSpeech"];

const [apiBaseUrl, method, rawInput] = process.argv.slice(2);
if (!apiBaseUrl || !METHODS.includes(method)) {
  console.error(`usage: node backend_client.mjs <apiBaseUrl> <${METHODS.join("|")}> [input-json]`);
  process.exit(2);
}
let input;
try {
  input = rawInput === undefined ? undefined : JSON.parse(rawInput);
} catch (error) {
  console.error(`input-json is not JSON: ${error instanceof Error ? error.message : error}`);
  process.exit(2);
}

try {
  const client = createNavaiBackendClient({ apiBaseUrl });
  const result = await client[method](input);
  console.log(JSON.stringify({ ok: true, result: result ?? null }));
} catch (error) {
  console.log(JSON.stringify({ ok: false, error: error instanceof Error ? error.message : String(error) }));
}
