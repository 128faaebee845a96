"""``emovec serve``: a local web dashboard over :class:`emovec.monitor.LiveMonitor`.

One page (plain HTML/JS/CSS shipped in ``emovec/apps/web``, no build step, nothing fetched from the
network) talks to a websocket that streams each reply token with its scores as the model
produces it. The server is a thin shell: it validates and bounds every input, runs one
generation at a time in a worker thread (so the event loop keeps answering), writes each reply
as a trace into its data folder, and reads traces and vector files only from that folder.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import threading
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from emovec.apps.web_guard import Guard, allowed_hosts, new_token
from emovec.errors import EmovecError, InputError
from emovec.models import LanguageModel
from emovec.monitor import (
    RULE_KINDS,
    AlertRule,
    Baseline,
    LiveMonitor,
    MonitorError,
    calibrate,
    default_watch,
    read_trace,
)
from emovec.steering import POSITIONS
from emovec.vectors import EmotionVectors, VectorFileError

#: The files of the page; nothing else is served from the package.
WEB_FILES = {"index.html": "text/html", "app.js": "text/javascript", "style.css": "text/css"}
#: Flags for driving the dashboard in headless Chromium (browser tests, docs screenshots):
#: no sandbox (containers lack the namespaces it needs), no GPU, no background traffic.
HEADLESS_CHROMIUM_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)
#: Names a client may ask for in the data folder: no separators, no leading dot.
SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,120}$")


@dataclass(frozen=True)
class Limits:
    """Bounds on what one client may ask for."""

    message_bytes: int = 16_384
    prompt_chars: int = 2_000
    max_new_tokens: int = 200
    emotions: int = 12
    rules: int = 12
    steering: int = 8
    strength: float = 2.0
    total_strength: float = 4.0  # sum of |s| over steering and every rule's counter-steer
    temperature: float = 2.0
    trace_bytes: int = 8_000_000


class VectorsBody(BaseModel):
    """``POST /api/vectors``: switch to a vector file of the data folder."""

    model_config = ConfigDict(extra="forbid", strict=True)
    file: str = Field(min_length=1, max_length=128)


class RequestError(InputError):
    """A client request that is malformed or out of bounds; the message says which."""


class Dashboard:
    """What the server holds: the model, the vectors and baseline in use, the data folder."""

    def __init__(
        self,
        lm: LanguageModel,
        vectors: EmotionVectors,
        data_dir: str | Path,
        baseline: Baseline | None = None,
        limits: Limits = Limits(),  # noqa: B008 - frozen
        calibration_limit: int = 64,
        calibration_tokens: int = 256,
    ) -> None:
        self.lm, self.limits = lm, limits
        self.data_dir = Path(data_dir).resolve()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.calibration = {"limit": calibration_limit, "max_tokens": calibration_tokens}
        self.vectors, self.baseline = vectors, baseline or self._calibrate(vectors)
        self.vectors_name = "(startup)"
        self.lock = asyncio.Lock()
        self.served = 0

    def _calibrate(self, vectors: EmotionVectors) -> Baseline:
        """The baseline for ``vectors``, from the one baseline cache (``calibrate``'s, keyed
        by vectors, layer, centring and texts) or measured once."""
        return calibrate(self.lm, vectors, **self.calibration)

    # -- files in the data folder -----------------------------------------------------------

    def data_file(self, name: str, suffix: str) -> Path:
        """A file directly inside the data folder, by plain name; anything else is refused."""
        if not isinstance(name, str) or not SAFE_NAME.match(name) or not name.endswith(suffix):
            raise RequestError(f"give a plain {suffix} file name from the data folder")
        path = (self.data_dir / name).resolve()
        if path.parent != self.data_dir or not path.is_file():
            raise RequestError(f"no {suffix} file named {name!r} in the data folder")
        return path

    def traces(self) -> list[str]:
        return sorted(p.name for p in self.data_dir.glob("*.jsonl") if p.is_file())

    def trace(self, name: str) -> dict[str, Any]:
        path = self.data_file(name, ".jsonl")
        if path.stat().st_size > self.limits.trace_bytes:
            raise RequestError(f"trace {name!r} is larger than {self.limits.trace_bytes} bytes")
        try:
            loaded = read_trace(path)
        except MonitorError as exc:
            raise RequestError(str(exc).replace(str(self.data_dir) + "/", "")) from None
        return {"meta": loaded.meta, "tokens": loaded.tokens, "replies": loaded.replies}

    def use_vectors(self, name: str) -> dict[str, Any]:
        """Switch to another vector file from the data folder (it must fit the loaded model)."""
        path = self.data_file(name, ".safetensors")
        try:
            vectors = EmotionVectors.load(path)
            vectors.check_model(self.lm)
        except VectorFileError as exc:
            raise RequestError(str(exc).replace(str(self.data_dir) + "/", "")) from None
        self.baseline = self._calibrate(vectors)
        self.vectors, self.vectors_name = vectors, name
        return self.info()

    def info(self) -> dict[str, Any]:
        return {
            "model": self.lm.name,
            "vectors": self.vectors_name,
            "layer": self.vectors.default_layer,
            "steer_layer": self.vectors.default_steer_layer,
            "emotions": self.vectors.emotions,
            "watch": default_watch(self.vectors),
            "positions": list(POSITIONS),
            "rule_kinds": list(RULE_KINDS),
            "baseline": {"source": self.baseline.source, "n_tokens": self.baseline.n_tokens},
            "limits": self.limits.__dict__,
            "traces": self.traces(),
        }

    # -- generation requests ---------------------------------------------------------------

    def parse_request(self, text: str) -> dict[str, Any]:
        """Validate one websocket message; every problem is a RequestError naming the field."""
        lim = self.limits
        if len(text.encode("utf-8", "replace")) > lim.message_bytes:
            raise RequestError(f"message too large: at most {lim.message_bytes} bytes")
        try:
            message = json.loads(text)
        except ValueError:
            raise RequestError("message is not JSON") from None
        if not isinstance(message, dict):
            raise RequestError("message must be a JSON object")
        kind = message.get("type")
        if kind == "ping":
            return {"type": "ping"}
        if kind != "generate":
            raise RequestError("message type must be 'generate' or 'ping'")
        prompt = message.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise RequestError("prompt must be a non-empty string")
        if len(prompt) > lim.prompt_chars:
            raise RequestError(f"prompt too long: at most {lim.prompt_chars} characters")
        tokens = message.get("max_new_tokens", 40)
        if not isinstance(tokens, int) or isinstance(tokens, bool):
            raise RequestError("max_new_tokens must be an integer")
        if not 1 <= tokens <= lim.max_new_tokens:
            raise RequestError(f"max_new_tokens must be 1..{lim.max_new_tokens}")
        emotions = message.get("emotions") or default_watch(self.vectors)
        if not isinstance(emotions, list) or not all(isinstance(e, str) for e in emotions):
            raise RequestError("emotions must be a list of names")
        if len(emotions) > lim.emotions:
            raise RequestError(f"at most {lim.emotions} emotions")
        emotions = [self.vectors.resolve(e) for e in emotions]
        steering = message.get("steering") or {}
        if not isinstance(steering, dict) or len(steering) > lim.steering:
            raise RequestError(f"steering must map at most {lim.steering} emotions to strengths")
        clean_steering: dict[str, float] = {}
        for emotion, strength in steering.items():
            if not isinstance(strength, int | float) or isinstance(strength, bool):
                raise RequestError(f"steering strength of {emotion!r} must be a number")
            if not math.isfinite(strength) or not abs(strength) <= lim.strength:
                raise RequestError(f"steering strengths must be finite, within +-{lim.strength}")
            if strength:
                clean_steering[self.vectors.resolve(emotion)] = float(strength)
        positions = message.get("positions", "all")
        if positions not in POSITIONS:
            raise RequestError(f"positions must be one of {', '.join(POSITIONS)}")
        temperature = message.get("temperature", 0.0)
        if not isinstance(temperature, int | float) or isinstance(temperature, bool):
            raise RequestError("temperature must be a number (0 is greedy)")
        if not 0 <= temperature <= lim.temperature:
            raise RequestError(f"temperature must be 0..{lim.temperature} (0 is greedy)")
        seed = message.get("seed", 0)
        if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**32:
            raise RequestError("seed must be an integer 0..4294967295")
        rules = message.get("rules") or []
        if not isinstance(rules, list) or len(rules) > lim.rules:
            raise RequestError(f"rules must be a list of at most {lim.rules}")
        parsed_rules = []
        for rule in rules:
            if not isinstance(rule, dict):
                raise RequestError("each rule must be an object")
            parsed = AlertRule.from_dict(rule)
            counter = [s for _, s in parsed.steer] if parsed.action == "steer" else []
            if not all(math.isfinite(s) and abs(s) <= lim.strength for s in counter):
                raise RequestError(
                    f"counter-steer strengths must be finite, within +-{lim.strength}"
                )
            parsed_rules.append(parsed)
        total = sum(map(abs, clean_steering.values())) + sum(
            abs(s) for r in parsed_rules if r.action == "steer" for _, s in r.steer
        )
        if total > lim.total_strength:
            raise RequestError(
                f"total steering (sum of |strength| over steering and counter-steers) is "
                f"{total:g}; at most {lim.total_strength:g}"
            )
        return {
            "type": "generate",
            "prompt": prompt,
            "max_new_tokens": tokens,
            "emotions": emotions,
            "steering": clean_steering,
            "positions": positions,
            "rules": parsed_rules,
            "chat": bool(message.get("chat", True)),
            "temperature": float(temperature),
            "seed": seed,
            "compare": bool(message.get("compare", False)),
        }

    def runs(self, request: dict[str, Any]) -> list[tuple[str, dict[str, float]]]:
        """The replies one request asks for: steered, and the unsteered one to compare."""
        steering = request["steering"]
        if request["compare"] and steering:
            return [("unsteered", {}), ("steered", steering)]
        return [("steered" if steering else "reply", steering)]

    def generate(self, request, steering, label, emit, cancel: threading.Event) -> None:
        """Run one reply in the calling (worker) thread, emitting JSON-able messages."""
        live = LiveMonitor(
            self.lm,
            self.vectors,
            emotions=request["emotions"],
            baseline=self.baseline,
            rules=request["rules"],
        )
        self.served += 1
        name = f"reply-{time.strftime('%Y%m%d-%H%M%S')}-{self.served:04d}-{label}.jsonl"
        emit({"type": "start", "label": label, "emotions": live.emotions, "steering": steering})

        def on_token(event) -> None:
            record = event.to_record()
            record["label"] = label
            record["fired"] = [a.to_dict() for a in event.fired]
            emit(record)

        reply = live.generate(
            request["prompt"],
            max_new_tokens=request["max_new_tokens"],
            chat=request["chat"],
            temperature=request["temperature"],
            seed=request["seed"],  # the same for both sides of a comparison
            steering=steering or None,
            steer_positions=request["positions"],
            on_token=on_token,
            trace=self.data_dir / name,
            cancel=cancel,
        )
        emit({**reply.to_record(), "label": label, "trace": name})


def create_app(
    dashboard: Dashboard, host: str = "127.0.0.1", port: int = 8765, token: str | None = None
) -> Guard:
    """The application of one dashboard served at ``host:port``, behind the cross-site guard.

    ``token`` is the per-launch secret that API and websocket calls must present (``None``
    turns that check off: tests only); Host and Origin are always checked.
    """
    app = FastAPI(title="emovec dashboard", docs_url=None, redoc_url=None, openapi_url=None)
    web = resources.files("emovec.apps") / "web"

    def page_file(name: str) -> Response:
        return Response((web / name).read_bytes(), media_type=WEB_FILES[name])

    def failure(exc: Exception) -> JSONResponse:
        return JSONResponse({"error": str(exc).splitlines()[0]}, status_code=400)

    @app.get("/")
    def index() -> Response:
        return page_file("index.html")

    @app.get("/favicon.ico")
    def favicon() -> Response:
        # The page names an inline icon; a browser that asks anyway gets "no content", not 404.
        return Response(status_code=204)

    @app.get("/static/{name}")
    def static(name: str) -> Response:
        if name not in WEB_FILES:
            return JSONResponse({"error": "not found"}, status_code=404)
        return page_file(name)

    @app.get("/api/info")
    def info() -> dict[str, Any]:
        return dashboard.info()

    @app.get("/api/traces")
    def traces() -> dict[str, Any]:
        return {"traces": dashboard.traces()}

    @app.get("/api/traces/{name}")
    def trace(name: str):
        try:
            return dashboard.trace(name)
        except RequestError as exc:
            return failure(exc)
        except Exception as exc:  # a trace is untrusted input: never a 500
            return failure(RequestError(f"trace {name!r} cannot be read ({type(exc).__name__})"))

    @app.post("/api/vectors")
    async def vectors(body: VectorsBody):
        async with dashboard.lock:  # never swap vectors under a running generation
            try:
                return await asyncio.to_thread(dashboard.use_vectors, body.file)
            except (RequestError, MonitorError) as exc:
                return failure(exc)
            except Exception as exc:  # a vector file is untrusted input: never a 500
                return failure(RequestError(f"vector file {body.file!r} is not usable: {exc}"))

    @app.websocket("/ws")
    async def socket(ws: WebSocket) -> None:
        await ws.accept()
        try:
            while True:
                text = await ws.receive_text()
                try:
                    request = dashboard.parse_request(text)
                except EmovecError as exc:  # RequestError, unknown emotion, bad rule
                    await ws.send_json({"type": "error", "message": str(exc).splitlines()[0]})
                    continue
                if request["type"] == "ping":
                    await ws.send_json({"type": "pong"})
                    continue
                if not await _stream(dashboard, request, ws):
                    return
        except WebSocketDisconnect:
            return

    return _guarded(app, host, port, token)


async def _stream(dashboard: Dashboard, request: dict[str, Any], ws) -> bool:
    """Stream every reply of one request; False when the client went away (generation cancelled)."""
    loop = asyncio.get_running_loop()
    async with dashboard.lock:
        for label, steering in dashboard.runs(request):
            outbox: asyncio.Queue = asyncio.Queue()
            cancel = threading.Event()

            def emit(message: dict[str, Any], box: asyncio.Queue = outbox) -> None:
                loop.call_soon_threadsafe(box.put_nowait, message)

            def work(label=label, steering=steering, box=outbox, cancel=cancel) -> None:
                try:
                    dashboard.generate(request, steering, label, emit, cancel)
                except Exception as exc:  # reported to the client; the server carries on
                    emit({"type": "error", "message": str(exc).splitlines()[0] or repr(exc)})
                finally:
                    loop.call_soon_threadsafe(box.put_nowait, None)

            worker = asyncio.ensure_future(asyncio.to_thread(work))
            connected = True
            while (message := await outbox.get()) is not None:
                if not connected:
                    continue
                try:
                    await ws.send_json(message)
                except Exception:  # the socket closed mid-reply: stop generating
                    connected = False
                    cancel.set()
            await worker
            if not connected:
                return False
        await ws.send_json({"type": "done"})
    return True


def _guarded(app: FastAPI, host: str, port: int, token: str | None) -> Guard:
    return Guard(app, allowed_hosts(host, port), token)


def serve(
    lm: LanguageModel,
    vectors: EmotionVectors,
    data_dir: str | Path = "emovec-data",
    host: str = "127.0.0.1",
    port: int = 8765,
    baseline: Baseline | None = None,
    calibration_limit: int = 64,
    token: str | None = None,
) -> None:
    """Run the dashboard until interrupted (``token``: see :func:`create_app`)."""
    import uvicorn

    dashboard = Dashboard(
        lm, vectors, data_dir, baseline=baseline, calibration_limit=calibration_limit
    )
    limits = dashboard.limits
    uvicorn.run(
        create_app(dashboard, host, port, token),
        host=host,
        port=port,
        log_level="warning",
        ws_max_size=limits.message_bytes * 4,
    )


class ServerThread:
    """A dashboard served from a background thread (for notebooks and tests); ``stop()`` ends it."""

    def __init__(
        self,
        dashboard: Dashboard,
        host: str = "127.0.0.1",
        port: int = 0,
        token: str | None = "new",
    ) -> None:
        """``token="new"`` makes a fresh secret (kept as ``.token``); ``None`` turns it off."""
        import socket

        import uvicorn

        if port == 0:
            with socket.socket() as probe:
                probe.bind((host, 0))
                port = probe.getsockname()[1]
        self.token = new_token() if token == "new" else token
        config = uvicorn.Config(
            create_app(dashboard, host, port, self.token),
            host=host,
            port=port,
            log_level="warning",
            ws_max_size=dashboard.limits.message_bytes * 4,
        )
        self.dashboard = dashboard
        self.server = uvicorn.Server(config)
        self.url = f"http://{host}:{port}"
        #: What a person opens: the page with the token that its API calls present.
        self.page_url = self.url + (f"/?token={self.token}" if self.token else "/")
        self.thread = threading.Thread(target=self.server.run, name="emovec-serve", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the dashboard did not start on {self.url}")
            time.sleep(0.05)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
