// Runs a GGUF file in llama.cpp (through node-llama-cpp's prebuilt CPU
// binary) and prints, as one JSON line, how llama.cpp tokenizes the prompt
// and the tokens it picks greedily after it. tests/gguf.rs compares both
// with ferrite. Usage: node test_llama_cpp.mjs MODEL.gguf PROMPT N
// (NODE_PATH or a node_modules beside the script must hold node-llama-cpp).
import { createRequire } from "node:module";
import path from "node:path";

const [modelPath, prompt, n] = process.argv.slice(2);
const require = createRequire(path.join(process.env.FERRITE_NODE_MODULES ?? process.cwd(), "x.js"));
const { getLlama, LlamaLogLevel } = await import(require.resolve("node-llama-cpp"));

const llama = await getLlama({ gpu: false, build: "never", logLevel: LlamaLogLevel.error });
const model = await llama.loadModel({ modelPath });
// An f32 cache, as ferrite's test side uses: no rounding of keys and values.
const context = await model.createContext({
  contextSize: 64,
  batchSize: 64,
  experimentalKvCacheKeyType: "F32",
  experimentalKvCacheValueType: "F32",
});
const sequence = context.getSequence();
const tokens = model.tokenize(prompt, false);
const out = [];
for await (const token of sequence.evaluate(tokens, { temperature: 0 })) {
  out.push(token);
  if (out.length >= Number(n)) break;
}
console.log(JSON.stringify({ prompt: tokens, greedy: out, text: model.detokenize(out) }));
await context.dispose();
await model.dispose();
await llama.dispose();
