"""Print one example request for the image classifier as JSON (a smooth gradient image)."""

import json

import numpy as np

if __name__ == "__main__":
    ramp = np.linspace(0.0, 1.0, 64, dtype=np.float32)
    image = np.stack([np.outer(ramp, ramp), np.outer(ramp[::-1], ramp), np.outer(ramp, ramp[::-1])])[None]
    print(json.dumps({"image": np.round(image, 4).tolist()}))
