"""templates/web/tokenizer.mjs in a real headless Chromium, against the bundle runner's own TextEncoder.

The page of a text bundle tokenises in the browser: every id, mask and type id must be the ones
`tokenizers` (runner/preprocess.py) gives, for the real all-MiniLM-L6-v2 tokenizer.json and the
tiny word-level one of fixtures/text_models.py. A tokenizer.json the page cannot run is refused
naming the component, and the page then falls back to JSON token ids, saying why.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from gpuxc_web.ortweb import ORT_WEB_FILES
from onnx import TensorProto, helper

from fixtures.text_models import write_bag_model, write_tokenizer
from gpuxc.build.pipeline import compile_project
from gpuxc.bundle.runner_source import runner_module

# The page tests' fixtures (browser, Chromium-served folders with COOP/COEP, the vendored ORT Web).
from tests.plugins.gpuxc_web.test_page import TEMPLATES, browser, make_bundle, open_page, ort_web_dir, serve

__all__ = ["browser", "ort_web_dir", "serve"]  # fixtures used by name below

pytest.importorskip("tokenizers")

SENTENCES = [
    "Hello, world!",
    "The QUICK brown fox Jumps over the lazy dog.",
    "Café naïve résumé façade Ångström coöperate",
    "Crème brûlée à la carte, s'il vous plaît.",
    "北京欢迎你 and 東京 too",
    "日本語のテキストとカタカナ、ひらがな。",
    "한국어 문장도 있습니다",
    "Numbers: 3.14159, 2,718 and 1e-10; also 42nd, 1st, ½ and ²",
    "Price: $1,299.99 (was €1.500) — save 15%!!!",
    "email@example.com https://example.org/path?q=1&r=2#frag",
    "unbelievably antidisestablishmentarianism pneumonoultramicroscopicsilicovolcanoconiosis",
    "a" * 150 + " word longer than max_input_chars_per_word",
    "don't can't won't y'all'd've",
    "ΣΊΣΥΦΟΣ Ὀδυσσεύς ΑΣ",
    "İstanbul ıspanak ẞtraße Straße",
    "Tabs\tand\nnewlines\r\nand  double  spaces",
    "zero\u200bwidth\u200djoiner\u00a0nbsp\u3000ideographic",
    "control\u0000chars\u0007and\ufffdreplacement\u200eLRM",
    "emoji 😀🎉👍🏽 and ♥ ★ ∑ ∞",
    "Привет, мир! Съешь же ещё этих мягких французских булок.",
    "مرحبا بالعالم",
    "नमस्ते दुनिया हिन्दी",
    "ﬁ ligature Ⅻ roman ｆｕｌｌｗｉｄｔｈ",
    "[MASK] is a special token, [CLS] too, but [cls] is not",
    "mIxEd CaSe WoRdS: iPhone eBay McDonald's",
    "___underscores___ and --dashes-- and ...dots...",
    "x",
    "!?.",
    " ".join(f"word{i}" for i in range(60)),  # over max_length: truncated, keeping [CLS] and [SEP]
    "The quick brown fox. " * 20,
]


def spec(tokenizer: str, **changes: Any) -> dict[str, Any]:
    """A manifest preprocessing record (docs/preprocessing.md), as the Python runner and the page read it."""
    record = {"kind": "text", "input": "text", "tokenizer": tokenizer, "max_length": 32, "padding": "longest",
              "truncation": True, "ids": "input_ids", "mask": "attention_mask", "type_ids": "token_type_ids",
              "dtype": "int64"}  # fmt: skip
    return {**record, **changes}


def python_encode(folder: Path, record: dict[str, Any], texts: str | list[str]) -> dict[str, np.ndarray]:
    return runner_module("preprocess").TextEncoder(record, folder).encode(texts)


def js_page(browser: Any, serve: Any, folder: Path) -> Any:
    """A blank page served from ``folder`` (which holds tokenizer.mjs) to import the module in."""
    shutil.copyfile(TEMPLATES / "tokenizer.mjs", folder / "tokenizer.mjs")
    (folder / "blank.html").write_text("<!doctype html><title>tokenizer</title>", encoding="utf-8")
    page = browser.new_page()
    page.goto(serve(folder) + "/blank.html")
    return page


JS_ENCODE = """async ({file, record, inputs, texts}) => {
  const {createTextEncoder} = await import("./tokenizer.mjs");
  const json = await (await fetch(file)).json();
  try {
    const feeds = createTextEncoder(json, record, inputs).encode(texts);
    const out = {};
    for (const [name, f] of Object.entries(feeds)) {
      out[name] = {data: Array.from(f.data, Number), dims: f.dims, type: f.type, array: f.data.constructor.name};
    }
    return out;
  } catch (error) {
    return {error: error.message, name: error.name};
  }
}"""


def js_encode(page: Any, file: str, record: dict[str, Any], texts: str | list[str],
              inputs: list[dict[str, Any]] | None = None) -> dict[str, Any]:  # fmt: skip
    return page.evaluate(JS_ENCODE, {"file": file, "record": record, "inputs": inputs or [], "texts": texts})


def assert_same(js: dict[str, Any], py: dict[str, np.ndarray], what: str) -> None:
    assert "error" not in js, f"{what}: {js.get('error')}"
    assert sorted(js) == sorted(py), what
    for name, expected in py.items():
        got = js[name]
        assert got["dims"] == list(expected.shape), (what, name)
        assert got["type"] == expected.dtype.name, (what, name)
        assert got["data"] == expected.ravel().tolist(), (what, name)


@pytest.fixture(scope="module")
def minilm_tokenizer() -> Path:
    from fixtures.minilm import fetch_minilm

    try:
        return fetch_minilm()[1]
    except RuntimeError as exc:
        pytest.skip(f"MiniLM not available: {exc}")


def test_minilm_tokenizer_gives_the_python_runner_ids_masks_and_type_ids(browser, serve, tmp_path, minilm_tokenizer):
    shutil.copyfile(minilm_tokenizer, tmp_path / "tokenizer.json")
    page = js_page(browser, serve, tmp_path)
    record = spec("tokenizer.json")
    for text in SENTENCES:
        assert_same(js_encode(page, "tokenizer.json", record, text), python_encode(tmp_path, record, text), text)
    truncated = python_encode(tmp_path, record, SENTENCES[-1])["input_ids"]
    assert truncated.shape == (1, 32) and truncated[0, 0] == 101 and truncated[0, -1] == 102  # [CLS] ... [SEP]
    # A batch, padded to the longest with the file's pad id; and padding to max_length, int32 ids.
    batch = SENTENCES[:6]
    assert_same(js_encode(page, "tokenizer.json", record, batch), python_encode(tmp_path, record, batch), "batch")
    fixed = spec("tokenizer.json", padding="max_length", max_length=48, dtype="int32", type_ids=None)
    assert_same(js_encode(page, "tokenizer.json", fixed, batch), python_encode(tmp_path, fixed, batch), "max_length")
    # A model fixed to 40 tokens (static shape in the manifest's inputs) is padded to 40.
    inputs = [{"name": "input_ids", "shape": [1, 40]}]
    encoder = runner_module("preprocess").TextEncoder(record, tmp_path)
    encoder.fixed_length = 40
    assert_same(js_encode(page, "tokenizer.json", record, batch[:2], inputs), encoder.encode(batch[:2]), "fixed")
    answer = js_encode(page, "tokenizer.json", record, SENTENCES[0])
    assert answer["input_ids"]["array"] == "BigInt64Array"
    page.close()


def random_texts(count: int, seed: int = 0) -> list[str]:
    """Seeded random strings over the scripts and character classes the normaliser treats apart."""
    pools = [range(0x20, 0x7F), range(0xA0, 0x180), range(0x300, 0x370), range(0x370, 0x400), range(0x400, 0x460),
             range(0x900, 0x980), range(0x3040, 0x3100), range(0x4E00, 0x4E80), range(0xAC00, 0xAC80),
             range(0x2000, 0x2070), range(0xFF00, 0xFF60), range(0x1F300, 0x1F360), range(0x0, 0x20),
             range(0xFB00, 0xFB07), range(0x2150, 0x2190)]  # fmt: skip
    rng = np.random.default_rng(seed)
    texts = []
    for _ in range(count):
        chosen = [pools[i] for i in rng.choice(len(pools), size=3, replace=False)]
        chars = [chr(int(rng.choice(chosen[rng.integers(3)]))) for _ in range(int(rng.integers(1, 40)))]
        texts.append("a " + "".join(chars))  # never blank: the runner refuses blank text
    return texts


def test_random_text_gives_the_python_runner_ids(browser, serve, tmp_path, minilm_tokenizer):
    shutil.copyfile(minilm_tokenizer, tmp_path / "tokenizer.json")
    page = js_page(browser, serve, tmp_path)
    record = spec("tokenizer.json", max_length=64)
    for text in random_texts(150):
        assert_same(js_encode(page, "tokenizer.json", record, text), python_encode(tmp_path, record, text), repr(text))
    page.close()


def test_bad_text_is_refused_as_the_python_runner_refuses_it(browser, serve, tmp_path, minilm_tokenizer):
    shutil.copyfile(minilm_tokenizer, tmp_path / "tokenizer.json")
    page = js_page(browser, serve, tmp_path)
    strict = spec("tokenizer.json", truncation=False, max_length=8)
    long = "one two three four five six seven eight"
    with pytest.raises(ValueError) as refused:
        python_encode(tmp_path, strict, long)
    assert js_encode(page, "tokenizer.json", strict, long)["error"] == str(refused.value)
    with pytest.raises(ValueError) as empty:
        python_encode(tmp_path, strict, ["fine", " \t\n"])
    assert js_encode(page, "tokenizer.json", strict, ["fine", " \t\n"])["error"] == str(empty.value)
    page.close()


def test_word_level_tokenizer_with_whitespace_pre_tokenizer(browser, serve, tmp_path):
    write_tokenizer(tmp_path / "tokenizer.json")
    page = js_page(browser, serve, tmp_path)
    record = spec("tokenizer.json", type_ids=None, padding="max_length", max_length=6)
    for text in ["the quick brown fox", "The quick, brown fox!", "a short model that is unknown", "fox"]:
        assert_same(js_encode(page, "tokenizer.json", record, text), python_encode(tmp_path, record, text), text)
    page.close()


def variant_tokenizers(folder: Path, minilm: Path) -> list[str]:
    """MiniLM's WordPiece vocabulary behind the other components the page runs, built with `tokenizers`."""
    from tokenizers import AddedToken, Tokenizer, normalizers, pre_tokenizers, processors

    def base() -> Any:
        tok = Tokenizer.from_file(str(minilm))
        tok.no_padding()
        tok.no_truncation()
        return tok

    made = []
    uncased = base()  # NFD + Lowercase + StripAccents, the Whitespace regex, BertProcessing
    uncased.normalizer = normalizers.Sequence([normalizers.NFD(), normalizers.Lowercase(), normalizers.StripAccents()])
    uncased.pre_tokenizer = pre_tokenizers.Whitespace()
    uncased.post_processor = processors.BertProcessing(("[SEP]", 102), ("[CLS]", 101))
    uncased.add_tokens([AddedToken("new york", normalized=True), AddedToken("Só Far", normalized=True)])
    made.append(uncased)
    cased = base()  # BertNormalizer without lowercase but stripping accents; type ids 1 in the template
    cased.normalizer = normalizers.BertNormalizer(lowercase=False, strip_accents=True)
    cased.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.BertPreTokenizer()])
    cased.post_processor = processors.TemplateProcessing(single="[CLS] $A:1 [SEP]:1 [SEP]:1",
                                                         special_tokens=[("[CLS]", 101), ("[SEP]", 102)])  # fmt: skip
    made.append(cased)
    bare = base()  # NFKC + Lowercase, no post-processor: no special tokens at all
    bare.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    bare.post_processor = None
    made.append(bare)
    names = []
    for i, tok in enumerate(made):
        tok.save(str(folder / f"variant{i}.json"))
        names.append(f"variant{i}.json")
    return names


def test_other_supported_components_give_the_python_runner_ids(browser, serve, tmp_path, minilm_tokenizer):
    names = variant_tokenizers(tmp_path, minilm_tokenizer)
    page = js_page(browser, serve, tmp_path)
    texts = [*SENTENCES[:10], *SENTENCES[12:], "New York and NEW YORK, Ｎｅｗ Ｙｏｒｋ", "so far, SO FAR, Só Far"]
    for name in names:
        record = spec(name)
        for text in texts:
            expected = python_encode(tmp_path, record, text)
            assert_same(js_encode(page, name, record, text), expected, f"{name}: {text}")
    page.close()


def unsupported_tokenizers(folder: Path) -> dict[str, str]:
    """tokenizer.json files the page cannot run, built with `tokenizers`, and the component each names."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    vocab = {"[UNK]": 0, "a": 1, "b": 2, "ab": 3}
    bpe = Tokenizer(models.BPE(vocab, [("a", "b")], unk_token="[UNK]"))
    bpe.pre_tokenizer = pre_tokenizers.Whitespace()
    bpe.save(str(folder / "bpe.json"))
    byte_level = Tokenizer(models.BPE(vocab, [("a", "b")], unk_token="[UNK]"))
    byte_level.pre_tokenizer = pre_tokenizers.ByteLevel()
    byte_level.save(str(folder / "byte_level.json"))
    replace = Tokenizer(models.WordPiece({"[UNK]": 0, "a": 1}, unk_token="[UNK]"))
    replace.normalizer = normalizers.Replace("a", "b")
    replace.save(str(folder / "replace.json"))
    return {"bpe.json": "model 'BPE' is not supported in the page (WordPiece and WordLevel are)",
            "byte_level.json": "pre_tokenizer 'ByteLevel' is not supported in the page",
            "replace.json": "normalizer 'Replace' is not supported in the page"}  # fmt: skip


def test_an_unsupported_tokenizer_is_refused_naming_the_component(browser, serve, tmp_path):
    page = js_page(browser, serve, tmp_path)
    for name, why in unsupported_tokenizers(tmp_path).items():
        answer = js_encode(page, name, spec(name), "ab a b")
        assert answer == {"error": f"{name}: {why}", "name": "UnsupportedTokenizer"}, name
    page.close()


TEXT = "The quick brown fox, a short model"


def text_project(folder: Path) -> Path:
    folder.mkdir(parents=True)
    write_tokenizer(folder / "tokenizer.json")
    write_bag_model(folder / "model.onnx")
    (folder / "gpux.yml").write_text("name: bag\nmodel:\n  source: model.onnx\npreprocessing:\n"
                                     "  tokenizer: tokenizer.json\n  max_length: 32\n")  # fmt: skip
    return folder


def python_runner_outputs(bundle: Path, text: str, out: Path) -> dict[str, np.ndarray]:
    """What `python <bundle> run --text` (the bundle's own runner, tokenizers) answers."""
    subprocess.run([sys.executable, str(bundle), "run", "--text", text, "-o", str(out)], check=True,
                   capture_output=True, timeout=300)  # fmt: skip
    with np.load(out) as saved:
        return {name: saved[name] for name in saved.files}


def type_text_in_page(browser: Any, url: str, text: str) -> tuple[str, list[float]]:
    """The page's token ids line and first output values after typing ``text`` and pressing Run."""
    page = open_page(browser, url + "/web/index.html?backend=wasm")
    assert page.locator("body").get_attribute("data-status") == "passed", page.text_content("#failures")
    assert page.is_visible("#text-input") and not page.is_visible("#json-input")
    page.fill("#text-input", text)
    page.click("#text-run")
    page.wait_for_function("() => document.getElementById('own-result').textContent.includes('y [1, 4]')")
    tokens = page.text_content("#text-tokens")
    values = [float(v) for v in page.text_content("#own-result pre").strip("[]").split(", ")]
    page.close()
    return tokens, values


def test_typed_text_in_the_page_gives_the_python_runners_outputs(browser, ort_web_dir, serve, tmp_path):
    # The page's files over the cpu bundle of the tiny text project (model, reference, manifest,
    # preprocessing/tokenizer.json): the page alone, whatever the web target's verification.
    [cpu] = compile_project(text_project(tmp_path / "p"), ["cpu"], tmp_path / "dist", use_cache=False)
    expected = python_runner_outputs(cpu.path, TEXT, tmp_path / "out.npz")["y"]
    ids = python_encode(cpu.path, json.loads((cpu.path / "gpux-bundle.json").read_text())["preprocessing"], TEXT)
    web = tmp_path / "web-bundle"
    shutil.copytree(cpu.path, web)
    (web / "web" / "ort").mkdir(parents=True)
    for name in ("runner.mjs", "tokenizer.mjs", "index.html"):
        shutil.copyfile(TEMPLATES / name, web / "web" / name)
    for name in ORT_WEB_FILES:
        (web / "web" / "ort" / name).symlink_to(ort_web_dir / name)
    tokens, values = type_text_in_page(browser, serve(web), TEXT)
    assert tokens == f"input_ids: [{', '.join(map(str, ids['input_ids'][0]))}]"
    np.testing.assert_allclose(values, expected[0], rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(not (TEMPLATES / "runtime.py").is_file(), reason="templates/web/runtime.py (the web "
                    "bundle's Python adapter, which verifies at compile time) is not in this tree")  # fmt: skip
def test_a_compiled_web_bundle_tokenises_typed_text_like_the_cpu_bundle(browser, ort_web_dir, serve, tmp_path,
                                                                        monkeypatch):  # fmt: skip
    from gpuxc_web.ortweb import ORT_WEB_DIR_ENV

    monkeypatch.setenv(ORT_WEB_DIR_ENV, str(ort_web_dir))
    cpu, web = compile_project(text_project(tmp_path / "p"), ["cpu", "web"], tmp_path / "dist", use_cache=False)
    assert json.loads((web.path / "gpux-bundle.json").read_text())["verification"]["status"] == "passed"
    assert (web.path / "web" / "tokenizer.mjs").is_file() and (web.path / "preprocessing" / "tokenizer.json").is_file()
    expected = python_runner_outputs(cpu.path, TEXT, tmp_path / "out.npz")["y"]
    _, values = type_text_in_page(browser, serve(web.path), TEXT)
    np.testing.assert_allclose(values, expected[0], rtol=1e-4, atol=1e-5)


def test_a_text_bundle_whose_tokenizer_the_page_cannot_run_takes_json_ids(browser, ort_web_dir, serve, tmp_path):
    x = np.array([[2, 4, 3]], np.int64)
    graph = helper.make_graph([helper.make_node("Identity", ["input_ids"], ["seen"])], "ids",
                              [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, "seq"])],
                              [helper.make_tensor_value_info("seen", TensorProto.INT64, [1, "seq"])])  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    bundle = make_bundle(tmp_path / "bundle", ort_web_dir, model, {"input_ids": x}, {"seen": x})
    shutil.copyfile(TEMPLATES / "tokenizer.mjs", bundle / "web" / "tokenizer.mjs")  # make_bundle: the page's own two
    (bundle / "preprocessing").mkdir()
    unsupported_tokenizers(tmp_path)
    shutil.copyfile(tmp_path / "byte_level.json", bundle / "preprocessing" / "tokenizer.json")
    manifest = json.loads((bundle / "gpux-bundle.json").read_text())
    manifest["preprocessing"] = spec("preprocessing/tokenizer.json", mask=None, type_ids=None)
    (bundle / "gpux-bundle.json").write_text(json.dumps(manifest))
    page = open_page(browser, serve(bundle) + "/web/index.html?backend=wasm")
    assert page.locator("body").get_attribute("data-status") == "passed"
    assert page.is_visible("#json-input") and not page.is_visible("#text-input")
    why = "preprocessing/tokenizer.json: pre_tokenizer 'ByteLevel' is not supported in the page"
    assert page.locator("body").get_attribute("data-tokenizer-error") == why
    assert why in page.text_content("#json-note")
    page.close()
