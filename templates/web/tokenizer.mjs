// Text -> token inputs in the browser, as the bundle's Python runner does it (runner/preprocess.py
// TextEncoder, Hugging Face `tokenizers`), for the BERT family: the page of a text bundle runs this.
//
// It reads the bundle's tokenizer.json and re-implements only what BERT-style files use, each step
// after the `tokenizers` (Rust) source so the ids are the same:
//   added tokens  split out of the raw text first (normalized: false), or of the normalised text
//   normalizer    BertNormalizer (clean_text, handle_chinese_chars, strip_accents, lowercase),
//                 Lowercase, NFD/NFC/NFKD/NFKC, StripAccents, Sequence of these
//   pre_tokenizer BertPreTokenizer, Whitespace, WhitespaceSplit, Sequence of these
//   model         WordPiece (continuing_subword_prefix, max_input_chars_per_word, unk_token), WordLevel
//   post          TemplateProcessing, BertProcessing ([CLS] $A [SEP] and their type ids)
// Anything else throws one line naming the component, so the page can fall back to JSON token ids.
// Unicode classes come from the browser's regexes (\p{...}): its Unicode version may differ from
// the Rust crates' on characters assigned since, which no test sentence here touches.

const WHITESPACE = /\p{White_Space}/u; // Rust's char::is_whitespace
// BertNormalizer's "control" (`unicode_categories`' is_other): Cc Cf Co Cs, but not unassigned (Cn)
// code points, which it keeps (U+218C stays, as a [UNK]).
const OTHER = /[\p{Cc}\p{Cf}\p{Co}\p{Cs}]/u;
const MARK_NONSPACING = /\p{Mn}/u;
const MARK = /\p{M}/u;
const PUNCTUATION = /\p{P}/u;
const ASCII_PUNCTUATION = /[!-/:-@[-`{-~]/;
const WORD = /[\p{Alphabetic}\p{M}\p{Nd}\p{Pc}\p{Join_Control}]/u; // the `regex` crate's Unicode \w
const PYTHON_SPACE = /^[\p{White_Space}\x1c-\x1f]*$/u; // what Python's str.strip() removes

/** A one-line error naming the unsupported component; the page shows it and falls back to JSON. */
export class UnsupportedTokenizer extends Error {
  constructor(message) { super(message); this.name = "UnsupportedTokenizer"; }
}

const chars = (text) => Array.from(text); // code points, as Rust's chars()
const lowerEach = (text) => chars(text).map((c) => c.toLowerCase()).join(""); // per char: no final sigma
// BertNormalizer's strip_accents drops nonspacing marks (Mn) after NFD; the StripAccents normalizer
// drops every combining mark (Mn, Mc, Me: unicode-normalization's is_combining_mark), NFD or not.
const dropMarks = (pattern) => (text) => chars(text).filter((c) => !pattern.test(c)).join("");
const stripNonspacing = dropMarks(MARK_NONSPACING);
const stripCombining = dropMarks(MARK);

function isChinese(c) {
  const p = c.codePointAt(0);
  return (p >= 0x4e00 && p <= 0x9fff) || (p >= 0x3400 && p <= 0x4dbf) || (p >= 0x20000 && p <= 0x2a6df) ||
    (p >= 0x2a700 && p <= 0x2b73f) || (p >= 0x2b740 && p <= 0x2b81f) || (p >= 0x2b920 && p <= 0x2ceaf) ||
    (p >= 0xf900 && p <= 0xfaff) || (p >= 0x2f800 && p <= 0x2fa1f);
}

function bertNormalizer(config) {
  const stripAccents = config.strip_accents ?? config.lowercase; // null follows lowercase, as in tokenizers
  return (text) => {
    let out = text;
    if (config.clean_text) {
      out = chars(out).filter((c) => {
        if (c === "\t" || c === "\n" || c === "\r") return true;
        const p = c.codePointAt(0);
        return p !== 0 && p !== 0xfffd && !OTHER.test(c);
      }).map((c) => (WHITESPACE.test(c) ? " " : c)).join("");
    }
    if (config.handle_chinese_chars) out = chars(out).map((c) => (isChinese(c) ? ` ${c} ` : c)).join("");
    if (stripAccents) out = stripNonspacing(out.normalize("NFD"));
    if (config.lowercase) out = lowerEach(out);
    return out;
  };
}

function normalizer(config, where) {
  if (!config) return (text) => text;
  switch (config.type) {
    case "BertNormalizer": return bertNormalizer(config);
    case "Lowercase": return lowerEach;
    case "StripAccents": return stripCombining;
    case "NFD": case "NFC": case "NFKD": case "NFKC": return (text) => text.normalize(config.type);
    case "Sequence": {
      const steps = config.normalizers.map((step) => normalizer(step, where));
      return (text) => steps.reduce((out, step) => step(out), text);
    }
    default: throw new UnsupportedTokenizer(`${where}: normalizer '${config.type}' is not supported in the page`);
  }
}

/** Split each piece on characters: `isolate` ones become pieces of their own, `remove` ones go. */
function splitOn(pieces, remove, isolate) {
  const out = [];
  for (const piece of pieces) {
    let current = "";
    for (const c of chars(piece)) {
      if (remove(c) || isolate(c)) {
        if (current) out.push(current);
        current = "";
        if (isolate(c)) out.push(c);
      } else {
        current += c;
      }
    }
    if (current) out.push(current);
  }
  return out;
}

const never = () => false;
const isWhitespace = (c) => WHITESPACE.test(c);
const isBertPunctuation = (c) => ASCII_PUNCTUATION.test(c) || PUNCTUATION.test(c);

/** tokenizers' Whitespace: the regex \w+|[^\w\s]+ (runs of word chars, runs of other non-space). */
function wordRuns(pieces) {
  const out = [];
  for (const piece of pieces) {
    let current = "", kind = null;
    for (const c of chars(piece)) {
      const k = WORD.test(c) ? "word" : isWhitespace(c) ? null : "other";
      if (k !== kind && current) { out.push(current); current = ""; }
      kind = k;
      if (k) current += c;
    }
    if (current) out.push(current);
  }
  return out;
}

function preTokenizer(config, where) {
  if (!config) return (pieces) => pieces;
  switch (config.type) {
    case "BertPreTokenizer":
      return (pieces) => splitOn(splitOn(pieces, isWhitespace, never), never, isBertPunctuation);
    case "WhitespaceSplit": return (pieces) => splitOn(pieces, isWhitespace, never);
    case "Whitespace": return wordRuns;
    case "Sequence": {
      const steps = config.pretokenizers.map((step) => preTokenizer(step, where));
      return (pieces) => steps.reduce((out, step) => step(out), pieces);
    }
    default: throw new UnsupportedTokenizer(`${where}: pre_tokenizer '${config.type}' is not supported in the page`);
  }
}

function model(config, where) {
  const vocab = new Map(Object.entries(config.vocab || {}));
  const unkId = () => {
    const id = vocab.get(config.unk_token);
    if (id === undefined) throw new Error(`${where}: unk_token '${config.unk_token}' is not in the vocabulary`);
    return id;
  };
  if (config.type === "WordLevel") return {vocab, tokenize: (word) => [vocab.has(word) ? vocab.get(word) : unkId()]};
  if (config.type !== "WordPiece") throw new UnsupportedTokenizer(`${where}: model '${config.type}' is not supported in the page (WordPiece and WordLevel are)`);
  const prefix = config.continuing_subword_prefix ?? "##";
  const maxChars = config.max_input_chars_per_word ?? 100;
  // Greedy longest match first, as tokenizers' WordPiece; a word with any piece not found is one unk.
  const tokenize = (word) => {
    const cs = chars(word);
    if (cs.length > maxChars) return [unkId()];
    const ids = [];
    for (let start = 0; start < cs.length;) {
      let end = cs.length, found;
      for (; start < end; end--) {
        const piece = (start > 0 ? prefix : "") + cs.slice(start, end).join("");
        if (vocab.has(piece)) { found = vocab.get(piece); break; }
      }
      if (found === undefined) return [unkId()];
      ids.push(found);
      start = end;
    }
    return ids;
  };
  return {vocab, tokenize};
}

/** The single-sequence template: [{special: ids} | {sequence: true}, type id] parts, in order. */
function template(config, where) {
  if (!config) return [{sequence: true, typeId: 0}];
  if (config.type === "BertProcessing") {
    return [{ids: [config.cls[1]], typeId: 0}, {sequence: true, typeId: 0}, {ids: [config.sep[1]], typeId: 0}];
  }
  if (config.type !== "TemplateProcessing") throw new UnsupportedTokenizer(`${where}: post_processor '${config.type}' is not supported in the page`);
  return config.single.map((part) => {
    if (part.Sequence) return {sequence: true, typeId: part.Sequence.type_id};
    const special = config.special_tokens[part.SpecialToken.id];
    if (!special) throw new Error(`${where}: template token '${part.SpecialToken.id}' has no special_tokens entry`);
    return {ids: special.ids, typeId: part.SpecialToken.type_id};
  });
}

/** Added tokens (what tokenizers matches before the model): raw-text ones, and normalised-text ones
 * matched by their own normalised content, as tokenizers' AddedVocabulary does. */
function addedTokens(list, normalize, where) {
  const raw = [], normalized = [];
  for (const token of list || []) {
    if (!token.content) continue;
    for (const flag of ["lstrip", "rstrip", "single_word"]) {
      if (token[flag]) throw new UnsupportedTokenizer(`${where}: added token '${token.content}' with ${flag} is not supported in the page`);
    }
    if (token.normalized) normalized.push({id: token.id, content: normalize(token.content)});
    else raw.push(token);
  }
  // Leftmost, then longest: the Aho-Corasick match kind tokenizers uses.
  for (const group of [raw, normalized]) group.sort((a, b) => b.content.length - a.content.length);
  return {raw, normalized};
}

/** Pieces of text: {text} to tokenise further, or {id} of an added token found in it. */
function splitAdded(text, tokens) {
  if (!tokens.length) return [{text}];
  const out = [];
  let from = 0;
  for (let i = 0; i < text.length;) {
    const hit = tokens.find((t) => text.startsWith(t.content, i));
    if (!hit) { i++; continue; }
    if (i > from) out.push({text: text.slice(from, i)});
    out.push({id: hit.id});
    i += hit.content.length;
    from = i;
  }
  if (from < text.length) out.push({text: text.slice(from)});
  return out;
}

/**
 * A tokenizer.json (its parsed JSON) for the page. Throws UnsupportedTokenizer naming the first
 * component the page cannot run. encode(text, {maxLength, truncate}) -> {ids, typeIds}, special
 * tokens included; with truncate, the text's tokens are cut so that all fit in maxLength.
 */
export function createTokenizer(json, where = "tokenizer.json") {
  if (!json || typeof json !== "object" || !json.model) throw new Error(`${where}: not a tokenizers tokenizer.json`);
  const normalize = normalizer(json.normalizer, where);
  const preTokenize = preTokenizer(json.pre_tokenizer, where);
  const {vocab, tokenize} = model(json.model, where);
  const parts = template(json.post_processor, where);
  const added = addedTokens(json.added_tokens, normalize, where);
  const specialCount = parts.reduce((n, part) => n + (part.ids ? part.ids.length : 0), 0);
  const addedIds = new Map((json.added_tokens || []).map((t) => [t.content, t.id]));

  function textIds(text) {
    const ids = [];
    for (const rawPiece of splitAdded(text, added.raw)) {
      if (rawPiece.id !== undefined) { ids.push(rawPiece.id); continue; }
      for (const piece of splitAdded(normalize(rawPiece.text), added.normalized)) {
        if (piece.id !== undefined) { ids.push(piece.id); continue; }
        for (const word of preTokenize([piece.text])) ids.push(...tokenize(word));
      }
    }
    return ids;
  }

  return {
    specialCount,
    tokenToId: (token) => (addedIds.has(token) ? addedIds.get(token) : vocab.get(token)),
    padding: json.padding || null,
    encode(text, {maxLength = Infinity, truncate = false} = {}) {
      let sequence = textIds(text);
      if (truncate) sequence = sequence.slice(0, Math.max(0, maxLength - specialCount)); // direction right
      const ids = [], typeIds = [];
      for (const part of parts) {
        const partIds = part.sequence ? sequence : part.ids;
        ids.push(...partIds);
        typeIds.push(...partIds.map(() => part.typeId));
      }
      return {ids, typeIds};
    },
  };
}

/** The pad id: the file's padding, else the usual pad tokens, else 0 (runner/preprocess.py's _pad_id). */
function padId(tokenizer) {
  if (tokenizer.padding) return tokenizer.padding.pad_id;
  for (const token of ["[PAD]", "<pad>", "<|padding|>", "<pad_token>"]) {
    const id = tokenizer.tokenToId(token);
    if (id !== undefined) return id;
  }
  return 0;
}

const ID_ARRAYS = {int64: [BigInt64Array, BigInt], int32: [Int32Array, Number]};

/**
 * The bundle's text encoder: manifest.preprocessing (kind "text") and manifest.inputs with the
 * tokenizer. encode(text | text[]) -> feeds {name: {data, dims, type}} for runner.mjs's infer(),
 * padded, truncated and named as the Python runner's TextEncoder does.
 */
export function createTextEncoder(tokenizerJson, preprocessing, inputs = [], where = preprocessing.tokenizer) {
  const tokenizer = createTokenizer(tokenizerJson, where);
  const maxLength = Number(preprocessing.max_length);
  const truncate = preprocessing.truncation !== false;
  const dtype = preprocessing.dtype || "int64";
  if (!ID_ARRAYS[dtype]) throw new UnsupportedTokenizer(`${where}: token inputs of dtype ${dtype} are not supported in the page`);
  const [ArrayType, cast] = ID_ARRAYS[dtype];
  const pad = padId(tokenizer);
  // A static sequence length in the bundle's inputs (a fixed-shape model): pad to it.
  const idsSpec = inputs.find((spec) => spec.name === preprocessing.ids);
  const dim = idsSpec && idsSpec.shape && idsSpec.shape.length === 2 ? idsSpec.shape[1] : null;
  const fixedLength = Number.isInteger(dim) && dim > 0 ? dim : null;
  const label = preprocessing.input || "text";

  function encode(texts) {
    const batch = typeof texts === "string" ? [texts] : Array.from(texts);
    const at = (i) => (typeof texts === "string" ? label : `${label}[${i}]`);
    if (!batch.length) throw new Error(`${label}: no text given`);
    const rows = batch.map((text, i) => {
      if (typeof text !== "string") throw new Error(`${at(i)}: text must be a string, got ${typeof text}`);
      if (PYTHON_SPACE.test(text)) throw new Error(`${at(i)}: the text is empty`);
      const row = tokenizer.encode(text, {maxLength, truncate});
      if (row.ids.length > maxLength) {
        throw new Error(`${at(i)}: ${row.ids.length} tokens, over max_length ${maxLength} (this bundle does not truncate)`);
      }
      return row;
    });
    const longest = Math.max(...rows.map((row) => row.ids.length));
    let length = preprocessing.padding === "max_length" ? maxLength : longest;
    if (fixedLength !== null) {
      if (longest > fixedLength) throw new Error(`${label}: over ${fixedLength} tokens, the length this bundle's model is fixed to`);
      length = fixedLength;
    }
    const ids = new ArrayType(rows.length * length).fill(cast(pad));
    const mask = new ArrayType(rows.length * length);
    const typeIds = new ArrayType(rows.length * length);
    rows.forEach((row, r) => {
      row.ids.forEach((id, i) => {
        ids[r * length + i] = cast(id);
        mask[r * length + i] = cast(1);
        typeIds[r * length + i] = cast(row.typeIds[i]);
      });
    });
    const dims = [rows.length, length];
    const feeds = {[preprocessing.ids]: {data: ids, dims, type: dtype}};
    if (preprocessing.mask) feeds[preprocessing.mask] = {data: mask, dims, type: dtype};
    if (preprocessing.type_ids) feeds[preprocessing.type_ids] = {data: typeIds, dims, type: dtype};
    return feeds;
  }

  return {encode, tokenizer};
}

/** Fetch the bundle's tokenizer (manifest.preprocessing.tokenizer, relative to the bundle root). */
export async function loadTextEncoder(manifest, bundleRoot = new URL("../", import.meta.url)) {
  const pre = manifest.preprocessing;
  const url = new URL(pre.tokenizer, bundleRoot);
  const response = await fetch(url);
  if (!response.ok) throw new Error(`${pre.tokenizer}: HTTP ${response.status}`);
  return createTextEncoder(await response.json(), pre, manifest.inputs || []);
}
