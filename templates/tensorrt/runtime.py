"""TensorRT adapter of this bundle: builds (first start) or loads the engine, runs it by tensor name.

The engine is cached under the engine cache directory, keyed by this model's sha256, the
GPU's name and compute capability and the TensorRT version: a different GPU or TensorRT
builds its own. Device memory goes through cuda-python (NVIDIA's own bindings to the CUDA
runtime).

An engine accepts only shapes inside its optimization profile. Image preprocessing's pixel input
(``fit_to_profile`` in the manifest) takes any picture: one whose height or width falls outside the
profile's band is first scaled into it, aspect ratio kept (Pillow's antialiased bilinear when
installed, else NumPy bilinear), and the runner says so once on stderr. Pictures inside the band
reach the engine untouched, so only those match the other targets' outputs exactly.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from runner import trt_builder

CACHE_ENV = "GPUXC_ENGINE_CACHE"


class InferenceTimeout(TimeoutError):
    """A run took longer than runtime.timeout."""


def _check(result: Any) -> Any:
    """cuda-python returns (error, value...): raise on an error, return the value(s)."""
    err, *rest = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise RuntimeError(f"CUDA error {int(err)}")
    return rest[0] if len(rest) == 1 else tuple(rest)


class Adapter:
    def __init__(self, model_path: Path, settings: dict[str, Any], preferred: str, verified_providers: list[str],
                 strict: bool = True) -> None:
        import tensorrt as trt
        from cuda.bindings import runtime as cudart

        self.trt, self.cudart, self.settings = trt, cudart, settings
        props = _check(cudart.cudaGetDeviceProperties(0))
        name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
        self.gpu = f"{name} (sm {props.major}.{props.minor})"
        bundled = model_path.parent / "model.engine"
        cache_dir = Path(os.environ.get(CACHE_ENV) or settings.get("engine_cache_dir")
                         or Path.home() / ".cache" / "gpuxc" / "engines")
        key = trt_builder.engine_key(settings["model_sha256"], name, f"{props.major}.{props.minor}", trt.__version__)
        same_tensorrt = settings.get("tensorrt_version") == trt.__version__
        if settings.get("engine") == "aot" and same_tensorrt and bundled.is_file():
            engine_bytes = bundled.read_bytes()
        else:
            cached = cache_dir / f"{key}.engine"
            if not cached.is_file():
                engine = trt_builder.build_engine(model_path, settings, cache_dir / "timing.cache")
                cache_dir.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(dir=cache_dir, suffix=".tmp")  # atomic: no half-written engine
                with os.fdopen(fd, "wb") as fh:
                    fh.write(engine)
                os.replace(tmp, cached)
            engine_bytes = cached.read_bytes()
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(engine_bytes)
        if self.engine is None:
            raise RuntimeError("TensorRT could not deserialize the engine")
        self.context = self.engine.create_execution_context()
        self.stream = _check(cudart.cudaStreamCreate())
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        profiles = settings.get("profiles") or {}
        self.fit = {n: profiles[n] for n in settings.get("fit_to_profile") or [] if n in profiles}
        self.fitted = False  # said once

    def run(self, feeds: dict[str, np.ndarray], output_names: list[str], timeout: float) -> dict[str, np.ndarray]:
        trt, cudart = self.trt, self.cudart
        allocations = []
        feeds = self._fitted(feeds)
        try:
            for name in self.inputs:
                host = np.ascontiguousarray(feeds[name], dtype=trt.nptype(self.engine.get_tensor_dtype(name)))
                self.context.set_input_shape(name, host.shape)
                device = _check(cudart.cudaMalloc(max(host.nbytes, 1)))
                allocations.append(device)
                _check(cudart.cudaMemcpyAsync(device, host.ctypes.data, host.nbytes,
                                              cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, self.stream))
                self.context.set_tensor_address(name, device)
            results = {}
            for name in self.outputs:
                shape = tuple(self.context.get_tensor_shape(name))
                host = np.empty(shape, dtype=trt.nptype(self.engine.get_tensor_dtype(name)))
                device = _check(cudart.cudaMalloc(max(host.nbytes, 1)))
                allocations.append(device)
                self.context.set_tensor_address(name, device)
                results[name] = (host, device)
            if not self.context.execute_async_v3(self.stream):
                raise RuntimeError("TensorRT execution failed")
            for host, device in results.values():
                _check(cudart.cudaMemcpyAsync(host.ctypes.data, device, host.nbytes,
                                              cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost, self.stream))
            _check(cudart.cudaStreamSynchronize(self.stream))
            return {name: results[name][0] for name in output_names}
        finally:
            for device in allocations:
                cudart.cudaFree(device)

    def _fitted(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``feeds`` with pixel inputs outside their profile scaled into it."""
        changed = {}
        for name, profile in self.fit.items():
            if name in feeds:
                pixels = fit_to_profile(np.asarray(feeds[name]), profile["min"], profile["max"])
                if pixels is not None:
                    changed[name] = pixels
                    if not self.fitted:
                        self.fitted = True
                        print(f"gpuxc runner: '{name}' {list(feeds[name].shape)} is outside the engine's profile "
                              f"(min {profile['min']}, max {profile['max']}): scaled to {list(pixels.shape)} first "
                              "(said once; build.options.tensorrt.profiles widens it)", file=sys.stderr)  # fmt: skip
        return {**feeds, **changed} if changed else feeds

    def provider_info(self) -> dict[str, Any]:
        return {"name": "tensorrt", "available": True, "providers": ["tensorrt"], "verified_at_build": False,
                "runtime": f"tensorrt {self.trt.__version__}", "options": {"gpu": self.gpu}}

    def available_providers(self) -> list[str]:
        return ["tensorrt"]

    def close(self) -> None:
        self.context = None
        self.engine = None


def fit_to_profile(pixels: np.ndarray, low: list[int], high: list[int]) -> np.ndarray | None:
    """uint8 ``pixels`` [N, H, W, C] scaled so H and W lie within the profile's [low, high] (axes 1
    and 2), aspect ratio kept where the band allows; None when they already do."""
    height, width = int(pixels.shape[1]), int(pixels.shape[2])
    if low[1] <= height <= high[1] and low[2] <= width <= high[2]:
        return None
    shrink = min(1.0, high[1] / height, high[2] / width)
    factor = shrink if shrink < 1.0 else max(low[1] / height, low[2] / width)
    new_h = min(max(round(height * factor), low[1]), high[1])
    new_w = min(max(round(width * factor), low[2]), high[2])
    try:
        from PIL import Image
    except ImportError:
        return _bilinear(pixels, new_h, new_w)
    out = np.empty((pixels.shape[0], new_h, new_w, pixels.shape[3]), np.uint8)
    for i, image in enumerate(pixels.astype(np.uint8, copy=False)):
        picture = Image.fromarray(image[..., 0] if image.shape[2] == 1 else image)
        resized = np.asarray(picture.resize((new_w, new_h), Image.Resampling.BILINEAR))
        out[i] = resized.reshape(new_h, new_w, -1)
    return out


def _bilinear(pixels: np.ndarray, new_h: int, new_w: int) -> np.ndarray:
    """Half-pixel bilinear resize of [N, H, W, C] (ONNX Resize's linear mode, no antialias)."""
    height, width = pixels.shape[1], pixels.shape[2]

    def grid(size: int, new: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pos = np.clip((np.arange(new) + 0.5) * size / new - 0.5, 0, size - 1)
        first = np.floor(pos).astype(np.int64)
        return first, np.minimum(first + 1, size - 1), (pos - first).astype(np.float32)

    y0, y1, wy = grid(height, new_h)
    x0, x1, wx = grid(width, new_w)
    f = pixels.astype(np.float32)
    top = f[:, y0][:, :, x0] * (1 - wx)[:, None] + f[:, y0][:, :, x1] * wx[:, None]
    bottom = f[:, y1][:, :, x0] * (1 - wx)[:, None] + f[:, y1][:, :, x1] * wx[:, None]
    rows = top * (1 - wy)[:, None, None] + bottom * wy[:, None, None]
    return np.clip(np.rint(rows), 0, 255).astype(np.uint8)
