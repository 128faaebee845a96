"""emovec: functional emotion vectors for language models.

Find the residual-stream directions that stand for 171 emotion concepts, read them token by
token, and steer generation with them. The import is light; heavy modules load on first use::

    import emovec
    lm = emovec.load_model()                       # the bundled SmolLM2-135M-Instruct
    vecs = emovec.extract(lm)                      # curated corpus -> EmotionVectors
    emovec.read(lm, vecs, "My hands would not stop shaking.").top()
    with emovec.steer(lm, vecs, {"happy": 0.5}):
        print(emovec.generate(lm, "Tell me about your day."))
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "load_model": "emovec.models",
    "LanguageModel": "emovec.models",
    "load_corpus": "emovec.corpus",
    "Corpus": "emovec.corpus",
    "extract": "emovec.extraction",
    "EmotionVectors": "emovec.vectors",
    "read": "emovec.reading",
    "Reading": "emovec.reading",
    "steer": "emovec.steering",
    "generate": "emovec.generation",
    "emotions": "emovec.catalog",
    "families": "emovec.catalog",
    "write_corpus": "emovec.authoring",
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'emovec' has no attribute {name!r}")
