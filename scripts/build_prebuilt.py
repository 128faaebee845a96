"""Build (or check) the bundled vectors of a built-in model with the main job's settings.

    python scripts/build_prebuilt.py [MODEL] [--check]

The file lands in src/emovec/data/prebuilt/MODEL.safetensors. ``--check`` rebuilds and
compares with the bundled file (tensors exactly equal, same metadata but timings).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from emovec.apps.pipeline import MAIN_HOLDOUT
from emovec.extraction import extract
from emovec.models import DEFAULT_MODEL, load_model
from emovec.vectors import EmotionVectors

args = [a for a in sys.argv[1:] if not a.startswith("--")]
model = args[0] if args else DEFAULT_MODEL
lm = load_model(model)
target = Path(__file__).resolve().parents[1] / "src/emovec/data/prebuilt" / f"{lm.name}.safetensors"
built = extract(lm, "curated", holdout_every=MAIN_HOLDOUT, cache=True, progress=True)
if "--check" in sys.argv:
    shipped = EmotionVectors.load(target)
    same = all(
        torch.equal(getattr(built, k), getattr(shipped, k))
        for k in ("vectors", "readers", "mean_activation", "residual_norm")
    )
    keys = ("emotions", "layers", "default_layer", "params", "corpus")
    same = same and all(getattr(built, k) == getattr(shipped, k) for k in keys)
    print("identical" if same else "DIFFERENT")
    sys.exit(0 if same else 1)
built.metrics.pop("cached_texts", None)  # depends on the machine's cache, not the method
built.save(target)
print(f"wrote {target} ({target.stat().st_size / 1e6:.1f} MB), default layer {built.default_layer}")
