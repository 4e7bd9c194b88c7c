"""Realistic inputs for the real models, made offline: photos, rendered text, synthesised speech, real files.

Calibration and validation come from *disjoint sources*, not just disjoint samples: the sentences,
photos, voices and files the quantizer calibrates on are never the ones accuracy is judged on.

- Photos: the ones that ship inside the scikit-image wheel (``skimage/data``).
- Text: sentences from the licence texts Debian ships (``/usr/share/common-licenses``) and the Zen of
  Python, rendered with Pillow in the DejaVu fonts (sizes, ink and paper colours vary).
- Document pages: those sentences laid out as titles, paragraphs and lists on a page.
- Speech: those sentences spoken by ``espeak-ng`` (several voices and speeds), resampled to 16 kHz
  mono with ``sox``; recurrent models get the state they would have at each chunk, by running the
  source model over the audio in order.
- Files (magika): real files on this machine (Python sources, docs, ELF binaries, images, fonts).

Needs: ``pip install pillow scikit-image`` and ``apt-get install espeak-ng sox`` (benchmarks only).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import wave
from collections.abc import Callable
from pathlib import Path

import numpy as np

FONTS = Path("/usr/share/fonts/truetype/dejavu")
LICENSES = Path("/usr/share/common-licenses")
# (calibration, validation) split of every source, by index parity of a shuffled list.
Split = tuple[list, list]


def _split(items: list, seed: int = 0) -> Split:
    order = np.random.default_rng(seed).permutation(len(items))
    shuffled = [items[i] for i in order]
    cut = max(1, (len(shuffled) * 3) // 4)
    return shuffled[:cut], shuffled[cut:]


# -- sources -------------------------------------------------------------------------------------


def sentences() -> Split:
    """Real English sentences, 5-25 words, calibration and validation from different texts."""
    import codecs
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):  # importing `this` prints the Zen of Python
        import this
    zen = codecs.decode(this.s, "rot13")
    texts = {"zen": zen}
    for name in ("Apache-2.0", "GPL-3", "Artistic", "MPL-2.0", "LGPL-3", "GFDL-1.3", "CC0-1.0"):
        path = LICENSES / name
        if path.is_file():
            texts[name] = path.read_text(encoding="utf-8", errors="replace")
    found: dict[str, list[str]] = {}
    for name, text in texts.items():
        flat = " ".join(text.split())
        for sentence in re.split(r"(?<=[.!?])\s+", flat):
            words = sentence.split()
            if 5 <= len(words) <= 25 and sum(ch.isalpha() for ch in sentence) > 0.7 * len(sentence):
                found.setdefault(name, []).append(sentence)
    if not found:
        raise RuntimeError(f"no sentences found in {LICENSES}")
    # Whole texts go to one side: the validation sentences are from texts calibration never read.
    names = sorted(found)
    cal = [s for n in names if n not in ("GPL-3", "zen") for s in found[n]]
    val = [s for n in names if n in ("GPL-3", "zen") for s in found[n]]
    held_out = set(val)  # the LGPL and GFDL quote the GPL: a quoted sentence stays on the validation side
    return list(dict.fromkeys(s for s in cal if s not in held_out)), list(dict.fromkeys(val))


def photos() -> Split:
    """RGB uint8 photos from scikit-image's wheel."""
    import skimage
    from PIL import Image

    folder = Path(skimage.__file__).parent / "data"
    names = ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png", "horse.png",
             "hubble_deep_field.jpg", "retina.jpg", "camera.png", "coins.png", "page.png", "text.png",
             "brick.png", "grass.png", "gravel.png", "ihc.png", "moon.png", "motorcycle_right.png"]  # fmt: skip
    images = [np.asarray(Image.open(folder / n).convert("RGB")) for n in names if (folder / n).is_file()]
    return images[:-5], images[-5:]


def _fonts() -> list[Path]:
    fonts = sorted(FONTS.glob("DejaVu*.ttf"))
    if not fonts:
        raise RuntimeError(f"no DejaVu fonts in {FONTS} (apt-get install fonts-dejavu-core)")
    return fonts


def text_line(text: str, height: int, rng: np.random.Generator) -> np.ndarray:
    """One line of text rendered tightly (RGB uint8), like a text-line crop from a detector."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.truetype(str(rng.choice(_fonts())), int(height * rng.uniform(0.6, 0.8)))
    paper = tuple(int(v) for v in rng.integers(200, 256, 3))
    ink = tuple(int(v) for v in rng.integers(0, 70, 3))
    left, top, right, bottom = font.getbbox(text)
    image = Image.new("RGB", (right - left + 8, height), paper)
    ImageDraw.Draw(image).text((4 - left, (height - (bottom - top)) // 2 - top), text, font=font, fill=ink)
    array = np.asarray(image).astype(np.int16)
    noise = rng.normal(0, 6, array.shape)
    return np.clip(array + noise, 0, 255).astype(np.uint8)


def page(lines: list[str], size: int, rng: np.random.Generator) -> np.ndarray:
    """A document page: a title, paragraphs and a list, wrapped to the width (RGB uint8, size x size)."""
    from PIL import Image, ImageDraw, ImageFont

    fonts = _fonts()
    image = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(225, 256, 3)))
    draw = ImageDraw.Draw(image)
    margin, y = size // 12, size // 14
    body = ImageFont.truetype(str(fonts[0]), max(9, size // 48))
    title = ImageFont.truetype(str(next((f for f in fonts if "Bold" in f.name), fonts[0])), max(12, size // 26))
    words = iter(" ".join(lines).split())
    draw.text((margin, y), " ".join(next(words, "") for _ in range(5)).title(), font=title, fill=(10, 10, 10))
    y += size // 14
    while y < size - margin:
        indent = margin + (size // 20 if rng.random() < 0.25 else 0)
        line = ""
        for word in words:
            if body.getlength(f"{line} {word}") > size - indent - margin:
                draw.text((indent, y), line.strip(), font=body, fill=(20, 20, 20))
                y += int(body.size * 1.5)
                line = word
                if y >= size - margin or rng.random() < 0.08:
                    break
            else:
                line += " " + word
        else:
            break
        y += int(body.size * rng.uniform(0.5, 2.0))  # paragraph gap
    return np.asarray(image)


def speech(texts: list[str], rate: int = 16000) -> list[np.ndarray]:
    """Each text spoken by espeak-ng (varying voice and speed), as float32 mono at ``rate`` Hz."""
    for tool in ("espeak-ng", "sox"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} is not installed (apt-get install espeak-ng sox)")
    voices = ["en-us", "en-gb", "en-gb-scotland", "en-us+f3", "en-gb+m3"]
    clips = []
    with tempfile.TemporaryDirectory(prefix="gpuxc-speech-") as tmp:
        for i, text in enumerate(texts):
            raw, out = Path(tmp) / f"{i}.wav", Path(tmp) / f"{i}-16k.wav"
            voice, speed = voices[i % len(voices)], 140 + (i * 17) % 60
            subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(raw), text], check=True,
                           capture_output=True)  # fmt: skip
            subprocess.run(["sox", str(raw), "-r", str(rate), "-c", "1", "-b", "16", str(out)], check=True,
                           capture_output=True)  # fmt: skip
            with wave.open(str(out)) as w:
                pcm = np.frombuffer(w.readframes(w.getnframes()), np.int16)
            # Leading/trailing silence kept: a voice detector must see both.
            clips.append(pcm.astype(np.float32) / 32768.0)
    return clips


def files() -> Split:
    """Real files of many kinds on this machine: (calibration paths, validation paths)."""
    import skimage

    roots = [Path(os.__file__).parent, Path("/usr/share/doc"), Path("/usr/bin"), Path(skimage.__file__).parent,
             FONTS, Path("/etc")]  # fmt: skip
    found: list[Path] = []
    for root in roots:
        picked = 0
        for path in sorted(root.rglob("*")) if root.is_dir() else []:
            try:
                if path.is_file() and not path.is_symlink() and path.stat().st_size > 64:
                    found.append(path)
                    picked += 1
            except OSError:
                continue
            if picked >= 40:
                break
    return _split(found, seed=1)


# -- per-model samples ---------------------------------------------------------------------------

Samples = dict[str, np.ndarray]


def _stack(samples: list[Samples]) -> Samples:
    return {k: np.stack([s[k] for s in samples]) for k in samples[0]}


def _chw(image: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    return ((image.astype(np.float32) / 255.0 - mean) / std).transpose(2, 0, 1)[None].astype(np.float32)


def _resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))


IMAGENET = (np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32))
HALF = (np.array([0.5] * 3, np.float32), np.array([0.5] * 3, np.float32))


def _ocr_line(text: str, width: int, rng: np.random.Generator, flip: bool = False) -> np.ndarray:
    line = text_line(text, 48, rng)
    new_w = min(width, max(8, int(line.shape[1] * 48 / line.shape[0])))
    line = _resize(line, new_w, 48)
    if flip:
        line = line[::-1, ::-1]
    x = np.zeros((1, 3, 48, width), np.float32)  # PaddleOCR pads the right with zeros after normalising
    x[..., :new_w] = _chw(line, *HALF)
    return x


def ocr_det(texts: list[str], n: int, seed: int) -> list[Samples]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        picked = [texts[(i * 7 + k) % len(texts)] for k in range(12)]
        image = page(picked, 640, rng)
        top, left = rng.integers(0, 320, 2)  # a crop, as a detector sees a tile of a page
        out.append({"x": _chw(_resize(image[top:top + 320, left:left + 320], 320, 320), *IMAGENET)})
    return out


def ocr_rec(texts: list[str], n: int, seed: int) -> list[Samples]:
    rng = np.random.default_rng(seed)
    return [{"x": _ocr_line(" ".join(texts[i % len(texts)].split()[:6]), 320, rng)} for i in range(n)]


def ocr_cls(texts: list[str], n: int, seed: int) -> list[Samples]:
    rng = np.random.default_rng(seed)
    return [{"x": _ocr_line(" ".join(texts[i % len(texts)].split()[:4]), 192, rng, flip=i % 2 == 1)}
            for i in range(n)]  # fmt: skip


def layout_pages(texts: list[str], images: list[np.ndarray], n: int, seed: int) -> list[Samples]:
    """Document pages (text, and a photo pasted on some) for the DocLayNet detector, 1024x1024 in [0, 1]."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        image = page([texts[(i * 5 + k) % len(texts)] for k in range(30)], 1024, rng).copy()
        if i % 2 == 0 and images:
            photo = _resize(images[i % len(images)], 400, 300)
            image[600:900, 300:700] = photo
        out.append({"images": (image.astype(np.float32) / 255.0).transpose(2, 0, 1)[None]})
    return out


def magika_bytes(paths: list[Path], n: int) -> list[Samples]:
    """Magika's features: the first and last 1024 bytes (whitespace-stripped), padded with token 256."""
    out = []
    for path in paths[:n]:
        data = path.read_bytes()
        begin = list(data.lstrip()[:1024])
        end = list(data.rstrip()[-1024:])
        row = begin + [256] * (1024 - len(begin)) + [256] * (1024 - len(end)) + end
        out.append({"bytes": np.asarray([row], np.int32)})
    return out


def recurrent_chunks(model: Path, clips: list[np.ndarray], n: int, window: int, context: int,
                     make_feed: Callable[[np.ndarray, np.ndarray], Samples], state_name: str,
                     state_out: str, state: np.ndarray) -> list[Samples]:  # fmt: skip
    """Chunks of speech with the state the model has when it reaches them (the source model run in order)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    stride = window - context
    chunks: list[Samples] = []
    every = max(1, sum(len(c) // stride for c in clips) // n)
    step = 0
    for clip in clips:
        h = state.copy()
        for start in range(context, len(clip) - stride, stride):
            feed = make_feed(clip[start - context : start + stride], h)
            if step % every == 0 and len(chunks) < n:
                chunks.append({k: v.copy() for k, v in feed.items()})
            h = session.run([state_out], feed)[0]
            step += 1
    return chunks


def silero(model: Path, clips: list[np.ndarray], n: int) -> list[Samples]:
    def feed(audio: np.ndarray, h: np.ndarray) -> Samples:
        return {"input": audio[None].astype(np.float32), "state": h, "sr": np.array(16000, np.int64)}

    return recurrent_chunks(model, clips, n, 576, 64, feed, "state", "stateN", np.zeros((2, 1, 128), np.float32))


def akiki(model: Path, clips: list[np.ndarray], n: int) -> list[Samples]:
    def feed(audio: np.ndarray, h: np.ndarray) -> Samples:
        return {"audio_with_context": audio[None].astype(np.float32), "h": h}

    return recurrent_chunks(model, clips, n, 576, 320, feed, "h", "h_out", np.zeros((1, 1, 128), np.float32))


def for_model(key: str, model: Path, calibration: int, validation: int) -> tuple[list[Samples], list[Samples]]:
    """(calibration samples, validation samples) for a catalog model, from disjoint sources."""
    cal_text, val_text = sentences()
    if key == "ppocrv4-det":
        return ocr_det(cal_text, calibration, 0), ocr_det(val_text, validation, 1)
    if key == "ppocrv4-rec":
        return ocr_rec(cal_text, calibration, 0), ocr_rec(val_text, validation, 1)
    if key == "ppocr-cls":
        return ocr_cls(cal_text, calibration, 0), ocr_cls(val_text, validation, 1)
    if key == "yolov8n-doclaynet":
        cal_photos, val_photos = photos()
        return (layout_pages(cal_text, cal_photos, calibration, 0),
                layout_pages(val_text, val_photos, validation, 1))  # fmt: skip
    if key == "magika":
        cal_files, val_files = files()
        return magika_bytes(cal_files, calibration), magika_bytes(val_files, validation)
    if key in ("silero-vad", "akiki-vad"):
        make = silero if key == "silero-vad" else akiki
        cal_clips, val_clips = speech(cal_text[: calibration // 2 + 4]), speech(val_text[: validation // 2 + 2])
        return make(model, cal_clips, calibration), make(model, val_clips, validation)
    if key == "minilm":
        from fixtures.minilm import fetch_minilm

        _model, tokenizer = fetch_minilm()
        return encoder_inputs(tokenizer, cal_text, calibration), encoder_inputs(tokenizer, val_text, validation)
    raise KeyError(f"no realistic data for {key}")


def encoder_inputs(tokenizer_json: Path, texts: list[str], n: int, length: int = 32) -> list[Samples]:
    """Real sentences through the model's own tokenizer.json, padded and truncated to ``length`` tokens."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_json))
    tokenizer.enable_padding(length=length)
    tokenizer.enable_truncation(max_length=length)
    out = []
    for text in texts[:n]:
        encoding = tokenizer.encode(text)
        out.append({"input_ids": np.asarray([encoding.ids], np.int64),
                    "attention_mask": np.asarray([encoding.attention_mask], np.int64),
                    "token_type_ids": np.asarray([encoding.type_ids], np.int64)})  # fmt: skip
    return out


def write_npz(path: Path, calibration: list[Samples], validation: list[Samples]) -> None:
    """One .npz with a leading sample axis (each sample keeps the model's own batch axis): calibration
    first, then validation (gpuxc calibrates on the first ``build.calibration.samples`` and verifies
    on the ones after)."""
    np.savez(path, **_stack(calibration + validation))


if __name__ == "__main__":  # a quick look: python benchmarks/realistic_data.py ppocrv4-rec
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from fixtures.real_models import CATALOG, fetch

    key = sys.argv[1]
    cal, val = for_model(key, fetch(CATALOG[key]), 4, 2)
    for name, array in _stack(cal).items():
        print(name, array.shape, array.dtype, float(array.astype(np.float64).mean()))
