// Runs a GGUF file in llama.cpp (through node-llama-cpp's prebuilt CPU
// binary) and prints, as one JSON line, how llama.cpp tokenizes the prompt
// and the tokens it picks greedily after it. tests/gguf.rs compares both
// with ferrite; scripts/bench_llama_cpp.py times it. Usage:
//   node test_llama_cpp.mjs MODEL.gguf PROMPT N [KV_TYPE]
// KV_TYPE: the cache's type, F32 (default: no rounding, as the test's
// ferrite side) or F16 (llama.cpp's own default). FERRITE_NODE_MODULES
// names the node_modules that holds node-llama-cpp.
import { createRequire } from "node:module";
import path from "node:path";

const [modelPath, prompt, n, kvType = "F32"] = process.argv.slice(2);
const require = createRequire(path.join(process.env.FERRITE_NODE_MODULES ?? process.cwd(), "x.js"));
const { getLlama, LlamaLogLevel } = await import(require.resolve("node-llama-cpp"));

const llama = await getLlama({ gpu: false, build: "never", logLevel: LlamaLogLevel.error });
const model = await llama.loadModel({ modelPath });
const context = await model.createContext({
  contextSize: Math.min(model.trainContextSize, 1024),
  batchSize: 64,
  // One thread per core: node-llama-cpp's default counts hyper-threads,
  // and llama.cpp's spinning threads then fight over the cores.
  threads: llama.cpuMathCores,
  experimentalKvCacheKeyType: kvType,
  experimentalKvCacheValueType: kvType,
});
const sequence = context.getSequence();
const tokens = model.tokenize(prompt, false);
const out = [];
const start = performance.now();
for await (const token of sequence.evaluate(tokens, { temperature: 0 })) {
  out.push(token);
  if (out.length >= Number(n)) break;
}
const seconds = (performance.now() - start) / 1000;
console.log(JSON.stringify({ prompt: tokens, greedy: out, text: model.detokenize(out), seconds }));
await context.dispose();
await model.dispose();
await llama.dispose();
