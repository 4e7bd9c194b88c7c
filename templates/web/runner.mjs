// gpuxc web bundle runner: load the bundle's model in ONNX Runtime Web and run it.
//
// Copied verbatim into every web bundle as web/runner.mjs (no templating: nothing bundle-specific
// lives here). The ONNX Runtime Web files are vendored next to it in web/ort/; nothing is fetched
// from a CDN.
//
//   import {load, infer} from "./runner.mjs";
//   const info = await load();            // {backend, fallback_reason, threads, cross_origin_isolated, ort_version}
//   const out = await infer({x: {data: new Float32Array(4), dims: [1, 4]}});
//   out.y.data, out.y.dims, out.y.type
//
// encode()/decode() are the wire format of the page's driver (index.html?driver=1), which gpuxc's
// Python side uses: base64 of the tensor's little-endian bytes with a numpy dtype name and a shape.

import * as ort from "./ort/ort.webgpu.min.mjs";

// Resolved against this module, not the page: the page may live anywhere under the bundle.
ort.env.wasm.wasmPaths = new URL("./ort/", import.meta.url).href;

export const ORT_VERSION = (ort.env.versions && (ort.env.versions.web || ort.env.versions.common)) || "unknown";

const MAX_THREADS = 4;

// numpy dtype name -> [ONNX Runtime Web tensor type, typed array holding its elements].
// float16 travels as raw IEEE half bits in a Uint16Array (ORT Web accepts that for "float16"); bool as
// one byte per element (0 or 1), as ORT Web stores it.
const DTYPES = {
  float32: ["float32", Float32Array],
  float64: ["float64", Float64Array],
  float16: ["float16", Uint16Array],
  int64: ["int64", BigInt64Array],
  uint64: ["uint64", BigUint64Array],
  int32: ["int32", Int32Array],
  uint32: ["uint32", Uint32Array],
  int16: ["int16", Int16Array],
  uint16: ["uint16", Uint16Array],
  int8: ["int8", Int8Array],
  uint8: ["uint8", Uint8Array],
  bool: ["bool", Uint8Array],
};

// A typed array's element type when a feed does not say.
const TYPE_OF_ARRAY = new Map([
  [Float32Array, "float32"], [Float64Array, "float64"], [BigInt64Array, "int64"],
  [BigUint64Array, "uint64"], [Int32Array, "int32"], [Uint32Array, "uint32"], [Int16Array, "int16"],
  [Uint16Array, "uint16"], [Int8Array, "int8"], [Uint8Array, "uint8"],
]);

let session = null;
let loaded = null;

/** One line from any error, keeping ONNX Runtime's wording (it names the op and the node). */
export function oneLine(error) {
  const text = error && error.message !== undefined ? error.message : String(error);
  return text.split(/\s*\n\s*/).filter(Boolean).join(" ").trim() || "unknown error";
}

/** Why WebGPU cannot be used here, or null when an adapter is available. */
async function webgpuUnavailable() {
  if (!self.isSecureContext) return "the page is not a secure context (WebGPU needs https or localhost)";
  if (!navigator.gpu) return "navigator.gpu is absent: this browser exposes no WebGPU";
  try {
    const adapter = await navigator.gpu.requestAdapter();
    return adapter ? null : "navigator.gpu.requestAdapter() found no GPU adapter";
  } catch (error) {
    return `navigator.gpu.requestAdapter() failed: ${oneLine(error)}`;
  }
}

/**
 * Load the model. backend: "auto" (WebGPU when an adapter exists, else WASM), "webgpu" or "wasm".
 * Threads are used only when the page is cross-origin isolated (SharedArrayBuffer needs COOP/COEP);
 * they are fixed by the first load of a page (ONNX Runtime Web initialises its WASM once).
 */
export async function load({modelUrl = new URL("../model/model.onnx", import.meta.url).href, backend = "auto", threads} = {}) {
  if (!["auto", "webgpu", "wasm"].includes(backend)) throw new Error(`backend '${backend}': expected auto, webgpu or wasm`);
  const isolated = Boolean(self.crossOriginIsolated);
  const wanted = threads === undefined ? Math.min(MAX_THREADS, navigator.hardwareConcurrency || 1) : Math.max(1, threads | 0);
  const numThreads = isolated ? wanted : 1;
  ort.env.wasm.numThreads = numThreads;
  let chosen = backend;
  let reason = null;
  if (backend !== "wasm") {
    reason = await webgpuUnavailable();
    if (reason && backend === "webgpu") throw new Error(`WebGPU requested but unavailable: ${reason}`);
    chosen = reason ? "wasm" : "webgpu";
  }
  if (session) await session.release();
  session = null;
  try {
    session = await ort.InferenceSession.create(modelUrl, {executionProviders: [chosen]});
  } catch (error) {
    if (chosen !== "webgpu" || backend === "webgpu") throw new Error(oneLine(error));
    // auto: a model WebGPU cannot take may still run on WASM; say why WebGPU was left.
    reason = `WebGPU session failed: ${oneLine(error)}`;
    chosen = "wasm";
    try {
      session = await ort.InferenceSession.create(modelUrl, {executionProviders: ["wasm"]});
    } catch (second) {
      throw new Error(oneLine(second));
    }
  }
  loaded = {
    backend: chosen,
    fallback_reason: reason,
    threads: numThreads,
    cross_origin_isolated: isolated,
    ort_version: ORT_VERSION,
  };
  return {...loaded};
}

/** What load() reported, or null before a model is loaded. */
export function loadedInfo() {
  return loaded ? {...loaded} : null;
}

function toTensor(name, feed) {
  if (!feed || feed.data === undefined || !Array.isArray(feed.dims)) {
    throw new Error(`input '${name}': expected {data, dims[, type]}`);
  }
  let type = feed.type;
  let data = feed.data;
  if (type === undefined) {
    type = TYPE_OF_ARRAY.get(data.constructor);
    if (type === undefined) throw new Error(`input '${name}': give a type for a plain array`);
  }
  const entry = DTYPES[type];
  if (!entry) throw new Error(`input '${name}': dtype '${type}' is not supported in the browser`);
  const [ortType, ArrayType] = entry;
  if (!(data instanceof ArrayType)) {
    // Plain arrays (JSON input): int64 needs BigInt elements, bool needs 0/1.
    const values = Array.from(data);
    if (ArrayType === BigInt64Array || ArrayType === BigUint64Array) data = ArrayType.from(values, (v) => BigInt(v));
    else if (type === "bool") data = Uint8Array.from(values, (v) => (v ? 1 : 0));
    else data = ArrayType.from(values);
  }
  const count = feed.dims.reduce((a, b) => a * b, 1);
  if (count !== data.length) {
    throw new Error(`input '${name}': ${data.length} element(s) for shape [${feed.dims.join(", ")}] (${count} expected)`);
  }
  return new ort.Tensor(ortType, data, feed.dims);
}

/** Run the loaded model: feeds {name: {data, dims, type?}} -> {name: {data, dims, type}}. */
export async function infer(feeds) {
  if (!session) throw new Error("no model loaded: call load() first");
  const tensors = {};
  for (const [name, feed] of Object.entries(feeds)) tensors[name] = toTensor(name, feed);
  let results;
  try {
    results = await session.run(tensors);
  } catch (error) {
    throw new Error(oneLine(error));
  }
  const out = {};
  for (const name of session.outputNames) {
    const tensor = results[name];
    out[name] = {data: tensor.data, dims: [...tensor.dims], type: tensor.type};
  }
  return out;
}

function bytesToBase64(bytes) {
  let binary = "";
  const chunk = 0x8000; // String.fromCharCode takes its arguments on the stack
  for (let i = 0; i < bytes.length; i += chunk) binary += String.fromCharCode.apply(null, bytes.subarray(i, i + chunk));
  return btoa(binary);
}

function base64ToBytes(text) {
  const binary = atob(text);
  const bytes = new Uint8Array(binary.length); // a fresh, aligned buffer for the typed array view
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes;
}

// Typed arrays use the platform's byte order; every browser ONNX Runtime Web runs on is little-endian,
// which is what the wire format (and numpy's "<") says.

/** A driver tensor {dtype, shape, b64} as a feed for infer(). */
export function decode(name, encoded) {
  const entry = DTYPES[encoded.dtype];
  if (!entry) throw new Error(`input '${name}': dtype '${encoded.dtype}' is not supported in the browser`);
  const [, ArrayType] = entry;
  const bytes = base64ToBytes(encoded.b64);
  if (bytes.length % ArrayType.BYTES_PER_ELEMENT) throw new Error(`input '${name}': ${bytes.length} bytes is not a whole number of ${encoded.dtype}`);
  return {data: new ArrayType(bytes.buffer, 0, bytes.length / ArrayType.BYTES_PER_ELEMENT), dims: encoded.shape, type: encoded.dtype};
}

/** An infer() output as a driver tensor {dtype, shape, b64}. */
export function encode(name, output) {
  if (!DTYPES[output.type]) throw new Error(`output '${name}': type '${output.type}' cannot be returned to Python`);
  const data = output.data;
  return {dtype: output.type, shape: output.dims, b64: bytesToBase64(new Uint8Array(data.buffer, data.byteOffset, data.byteLength))};
}

/** The driver's run: encoded feeds in, encoded outputs out. */
export async function runEncoded(encoded) {
  const feeds = {};
  for (const [name, tensor] of Object.entries(encoded)) feeds[name] = decode(name, tensor);
  const outputs = await infer(feeds);
  const answer = {};
  for (const [name, output] of Object.entries(outputs)) answer[name] = encode(name, output);
  return answer;
}
