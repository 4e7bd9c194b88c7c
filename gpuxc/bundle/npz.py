"""The bundle's reference data: inputs and outputs as ``.npz`` files, byte for byte the same on every build."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from gpuxc.bundle import layout

if TYPE_CHECKING:
    import numpy as np

# numpy is imported where used: a warm rebuild from the build cache never writes reference data.

# The earliest time a zip entry can carry: reference files must not record when they were built.
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


def write_reference(bundle: Path, inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> None:
    """``reference/inputs.npz`` and ``reference/outputs.npz`` of ``bundle``."""
    (bundle / layout.REFERENCE_DIR).mkdir(parents=True, exist_ok=True)
    write_npz(bundle / layout.REFERENCE_INPUTS, {k: _storable(v) for k, v in inputs.items()})
    write_npz(bundle / layout.REFERENCE_OUTPUTS, {k: _storable(v) for k, v in outputs.items()})


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Like ``np.savez``, byte for byte the same on every build: fixed entry times, sorted order.

    (``np.savez`` stamps each member with the current time, so two builds would differ.)
    """
    import io
    import zipfile

    import numpy as np

    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        for name in sorted(arrays):
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.asanyarray(arrays[name]), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=ZIP_EPOCH)
            info.external_attr = 0o644 << 16
            archive.writestr(info, buffer.getvalue())


def _storable(value: np.ndarray) -> np.ndarray:
    # Object arrays would need pickle: sequences of maps become dense arrays and string
    # tensors fixed-width unicode.
    from gpuxc.bundle.compare import dense

    value = dense(value)
    return value.astype(str) if value.dtype == object else value
