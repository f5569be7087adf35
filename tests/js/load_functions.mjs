// Discover and load function modules with the published @navai/voice-backend
// loader, unchanged: the reference for tests/test_functions_differential.py.
//
//   node load_functions.mjs <baseDir> [options-json]
//
// options-json may hold "functionsFolders" and "agentsFolders" strings. The
// environment is empty, so NAVAI_* variables of the caller do not count.
// Prints {"items": [{name, description, source}...], "warnings": [...]} with
// the warnings concatenated as the reference's loadBackendFunctionsRuntime
// does: discovery warnings first, then load warnings.
import { loadNavaiFunctions, resolveNavaiBackendRuntimeConfig } from "@navai/voice-backend";

const [baseDir, rawOptions] = process.argv.slice(2);
if (!baseDir) {
  console.error("usage: node load_functions.mjs <baseDir> [options-json]");
  process.exit(2);
}
const options = rawOptions ? JSON.parse(rawOptions) : {};

const runtime = await resolveNavaiBackendRuntimeConfig({
  baseDir,
  functionsFolders: options.functionsFolders,
  agentsFolders: options.agentsFolders,
  env: {},
});
const registry = await loadNavaiFunctions(runtime.functionModuleLoaders);
console.log(
  JSON.stringify({
    items: registry.ordered.map(({ name, description, source }) => ({ name, description, source })),
    warnings: [...runtime.warnings, ...registry.warnings],
  }),
);
