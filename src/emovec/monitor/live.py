"""Live monitoring of generation: z-scores, alerts, actions, hidden-state flags and a trace.

:class:`LiveMonitor` holds the settings and runs generations. Inside one
:meth:`LiveMonitor.generate` call a :class:`Watcher` does the per-step work: a residual hook
scores each decode step's newest position on the device, and a stopping criterion reads the
scores back once per step, feeds each row's :class:`RowState` (rules, actions, events) and
ends rows that stopped. Generation itself goes through :func:`emovec.generation.generate_ids`.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import nullcontext, suppress
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from emovec import __version__
from emovec.generation import (
    cache_argument,
    cache_of,
    chat_prompt,
    generate_ids,
    left_padded,
    sampling_settings,
)
from emovec.hooks import StopForward, backbone, residual_hooks, stopping_after, without_offset
from emovec.models import LanguageModel
from emovec.monitor.baseline import Baseline, calibrate
from emovec.monitor.errors import MonitorError
from emovec.monitor.hidden import HiddenSpan, HiddenStateCheck, hidden_spans
from emovec.monitor.rules import Alert, AlertRule, RuleTracker
from emovec.monitor.trace import TokenEvent, TraceWriter
from emovec.scoring import CosineScorer
from emovec.vectors import EmotionVectors

#: The emotions front ends watch when the user names none (see :func:`default_watch`).
DEFAULT_WATCH = ("desperate", "afraid", "angry", "sad", "calm", "happy")


def default_watch(vectors: EmotionVectors) -> list[str]:
    """The :data:`DEFAULT_WATCH` emotions these vectors have, else their first six."""
    return [e for e in DEFAULT_WATCH if e in vectors.emotions] or list(vectors.emotions[:6])


@dataclass
class MonitoredReply:
    """A finished reply with every token's scores, alert firings and hidden-state spans."""

    row: int
    prompt: str
    text: str
    pieces: list[str]
    token_ids: list[int]
    emotions: list[str]
    raw: np.ndarray
    z: np.ndarray
    alerts: list[Alert]
    hidden: list[HiddenSpan]
    stopped_by: str
    steering: dict[str, float] = field(default_factory=dict)
    #: how tokens were picked ({"temperature": 0.0} is greedy), with the seed that replays it
    sampling: dict[str, Any] = field(default_factory=dict)
    #: wall time of the whole ``generate`` call, and the part of it that was monitoring work
    #: (scoring hooks, per-token work, the last token's pass, set-up and trace), timed in place
    seconds: float = 0.0
    monitor_seconds: float = 0.0

    def to_record(self) -> dict[str, Any]:
        return {
            "type": "reply",
            "row": self.row,
            "prompt": self.prompt,
            "text": self.text,
            "n_tokens": len(self.pieces),
            "stopped_by": self.stopped_by,
            "steering": self.steering,
            "sampling": self.sampling,
            "seconds": round(self.seconds, 4),
            "monitor_seconds": round(self.monitor_seconds, 4),
            "alerts": [a.to_dict() for a in self.alerts],
            "hidden": [h.to_dict() for h in self.hidden],
        }


class RowState:
    """Bookkeeping of one reply in a (possibly batched) generation, filled token by token.

    Made by :meth:`LiveMonitor.new_row` (one :class:`RuleTracker` per rule) and fed by
    :meth:`Watcher.accept`; ``done`` ends the row, ``stopped_by`` says why ("length", "eos",
    "alert", "cancel").
    """

    def __init__(self, row: int, prompt: str, trackers: Sequence[RuleTracker] = ()) -> None:
        self.row, self.prompt, self.trackers = row, prompt, list(trackers)
        self.ids: list[int] = []
        self.pieces: list[str] = []
        self.raw: list[np.ndarray] = []
        self.z: list[np.ndarray] = []
        self.alerts: list[Alert] = []
        self.text = ""
        self.done = False
        self.stopped_by = "length"
        self.prompt_tokens = 0


class Watcher:
    """The per-step work of one :meth:`LiveMonitor.generate` call: scoring hook and stop check.

    :meth:`score` runs inside each decode step at the monitored layer and scores the token fed
    into that step (the previous step's pick); the prompt's prefill is not scored. The
    stopping criterion (calling the watcher) runs after the step and hands that token with
    its scores to :meth:`accept`, so each reply token arrives one step after it is sampled;
    returning True for a row ends it (the stop action, or a cancel).

    What it uses of ``live`` is public: ``scorer.on_device`` to score, ``z`` to standardise,
    ``emotions``, ``lm.tokenizer`` to decode, ``eos_ids`` and ``vocab_size``. Its own methods
    are public so that benchmarks can time each piece alone.
    """

    def __init__(
        self,
        live: LiveMonitor,
        rows: list[RowState],
        prompt_width: int,
        on_token: Callable[[TokenEvent], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> None:
        self.rows, self.width = rows, prompt_width
        self.on_token, self.cancel = on_token, cancel
        self.emotions = live.emotions
        #: scores [batch, emotions], on the device, of the token fed into the newest step
        self.latest: torch.Tensor | None = None
        #: False until the first step ends (the stopping criterion runs after each): the
        #: pass before that is the prompt's prefill, which is not scored. A flag that flips
        #: once, not a step count, so compiled decoding is not specialised on each step.
        self.decoding = False
        #: 1.0 for rows whose counter-steer rule has fired (read by the steering hook)
        self.steer_active = torch.zeros(len(rows))
        self.eos = set(live.eos_ids)
        self.seconds = 0.0  # time spent here: scoring and per-token work of the monitor
        self._score_on_device = live.scorer.on_device
        self._z = live.z
        self._decode = live.lm.tokenizer.decode
        # float32 holds every token id below 2**24 exactly; float64 beyond
        self._id_dtype = torch.float32 if live.vocab_size < 2**24 else torch.float64
        self._stop: torch.Tensor | None = None  # the last answer, on the model's device
        self._stopped: list[bool] = []

    @without_offset
    def score(self, _layer: int, hidden: torch.Tensor, _offset: int) -> None:
        """Residual hook: scores [batch, emotions] of the newest position of a decode step,
        left on the device (read after the step, with the token ids, in one copy).

        It needs no position: the prefill is the pass before the first step ends, and the
        token a step was fed is the next-to-last id when the step ends. So the KV cache is
        never asked for its length (a host read that recompiles compiled decoding)."""
        if not self.decoding:
            return
        if torch.compiler.is_compiling():  # the clock would break the compiled graph
            self.latest = self._score_on_device(hidden[:, -1])
            return
        start = time.perf_counter()
        self.latest = self._score_on_device(hidden[:, -1])
        self.seconds += time.perf_counter() - start

    def to_host(self, chunk: torch.Tensor, ids: torch.Tensor) -> tuple[list[int], np.ndarray]:
        """Token ids [batch] and raw scores [batch, emotions] on the host, in one copy.

        On a GPU every read waits for the device, so the ids ride along as one more column
        of the scores.
        """
        dtype = self._id_dtype
        packed = torch.cat([chunk.to(dtype), ids.to(chunk.device, dtype).unsqueeze(1)], dim=1)
        host = packed.numpy() if packed.device.type == "cpu" else packed.cpu().numpy()
        return host[:, -1].astype(np.int64).tolist(), host[:, :-1].astype(np.float32)

    def accept(
        self, state: RowState, token_id: int, raw: np.ndarray, z: np.ndarray | None = None
    ) -> None:
        """Take one scored reply token of one row: decode, z-score (unless given: ``z``, the
        batch's, done at once), rules, actions, deliver to ``on_token``."""
        if token_id in self.eos:
            state.done, state.stopped_by = True, "eos"
            return
        state.ids.append(token_id)
        text = self._decode(state.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):  # a character split over tokens: wait for the rest
            piece = ""
        else:
            piece, state.text = text[len(state.text) :], text
        if z is None:
            z = self._z(raw)
        fired = []
        for tracker in state.trackers:
            alert = tracker.update(z[tracker.column])
            if alert is not None:
                fired.append(alert)
                state.alerts.append(alert)
        active = [t.rule.name for t in state.trackers if t.open is not None]
        event = TokenEvent(
            state.row,
            len(state.ids) - 1,
            state.prompt_tokens + len(state.ids) - 1,
            token_id,
            piece,
            raw,
            z,
            self.emotions,
            fired,
            active,
        )
        state.pieces.append(piece)
        state.raw.append(raw)
        state.z.append(z)
        for alert in fired:
            if alert.action == "stop":
                state.done, state.stopped_by = True, "alert"
            elif alert.action == "steer":
                self.steer_active[state.row] = 1.0
        if self.on_token is not None:
            self.on_token(event)

    def __call__(self, input_ids: torch.Tensor, scores: Any = None, **_: Any) -> torch.Tensor:
        """Stopping criterion: deliver the step's scored tokens, then say which rows are done."""
        start = time.perf_counter()
        self.decoding = True
        if self.latest is not None:  # the token fed into this step: the next-to-last id
            ids, raw = self.to_host(self.latest, input_ids[:, -2])
            z = self._z(raw)
            for row, state in enumerate(self.rows):
                if not state.done:
                    self.accept(state, ids[row], raw[row], z[row])
        self.latest = None
        if self.cancel is not None and self.cancel.is_set():
            for state in self.rows:
                if not state.done:
                    state.done, state.stopped_by = True, "cancel"
        stopped = [state.done for state in self.rows]
        if self._stop is None or stopped != self._stopped:  # a copy only when a row stops
            self._stop = torch.tensor(stopped, dtype=torch.bool, device=input_ids.device)
            self._stopped = stopped
        self.seconds += time.perf_counter() - start
        return self._stop


class LiveMonitor:
    """The full live monitor: z-scores, alert rules, actions, hidden-state flags, trace.

    Use it to watch replies as they are generated (a terminal view, a dashboard, a guard that
    stops or counter-steers a reply). One object holds the settings (emotions, layer,
    baseline, rules) and can run many generations; each :meth:`generate` scores every reply
    token at ``layer`` as it is produced and calls ``on_token`` with a :class:`TokenEvent`;
    :meth:`stream` yields the same events. For raw scores of your own forward passes, without
    baseline or rules, use :class:`~emovec.monitor.ScoreRecorder` instead.
    """

    def __init__(
        self,
        lm: LanguageModel,
        vectors: EmotionVectors,
        emotions: Sequence[str] | None = None,
        layer: int | None = None,
        baseline: Baseline | None = None,
        rules: Sequence[AlertRule] = (),
        hidden: HiddenStateCheck | None = HiddenStateCheck(),  # noqa: B008 - frozen
        center: bool = True,
    ) -> None:
        vectors.check_model(lm)
        self.lm, self.vectors, self.center = lm, vectors, center
        self.layer = vectors.default_layer if layer is None else layer
        vectors.layer_index(self.layer)
        names = vectors.emotions if emotions is None else emotions
        self.emotions = list(dict.fromkeys(vectors.resolve(e) for e in names))
        self.rules = [replace(r, emotion=vectors.resolve(r.emotion)) for r in rules]
        for rule in self.rules:
            for emotion, _ in rule.steer:
                vectors.resolve(emotion)
            if rule.emotion not in self.emotions:
                self.emotions.append(rule.emotion)
        if baseline is None:
            baseline = calibrate(lm, vectors, layer=self.layer, center=center)
        baseline.check(vectors, self.layer, center)
        self.baseline = baseline
        mean, std = baseline.select(self.emotions)
        self._mean, self._scale = mean.astype(np.float32), (1.0 / std).astype(np.float32)
        #: the shared scorer (:class:`emovec.scoring.CosineScorer`) of these emotions
        self.scorer = CosineScorer(vectors, self.emotions, self.layer, center, device=lm.device)
        self.hidden = hidden
        self.eos_ids = lm.eos_ids
        self.vocab_size = int(lm.model.get_input_embeddings().num_embeddings)
        self._columns = {e: i for i, e in enumerate(self.emotions)}
        self._body = backbone(lm.model)
        self._cache_arg = cache_argument(self._body)

    def z(self, raw: np.ndarray) -> np.ndarray:
        """z-scores of raw scores (last axis = this monitor's emotions)."""
        return (raw - self._mean) * self._scale

    def meta(self) -> dict[str, Any]:
        """The trace header: model, layer, emotions, the baseline's numbers, rules."""
        return {
            "emovec": __version__,
            "model": self.lm.name,
            "fingerprint": self.vectors.model.get("fingerprint"),
            "layer": self.layer,
            "emotions": self.emotions,
            "baseline": {
                "source": self.baseline.source,
                "n_tokens": self.baseline.n_tokens,
                "mean": {e: float(m) for e, m in zip(self.emotions, self._mean, strict=True)},
                "std": {e: float(1 / s) for e, s in zip(self.emotions, self._scale, strict=True)},
            },
            "rules": [r.to_dict() for r in self.rules],
            "hidden": asdict(self.hidden) if self.hidden else None,
        }

    def new_row(self, row: int, prompt: str) -> RowState:
        """Fresh bookkeeping for reply ``row`` of a generation, one tracker per rule."""
        trackers = [RuleTracker(r, self._columns[r.emotion], row) for r in self.rules]
        return RowState(row, prompt, trackers)

    # -- generation -----------------------------------------------------------------------

    def generate(
        self,
        prompts: str | Sequence[str],
        max_new_tokens: int = 40,
        chat: bool = True,
        temperature: float = 0.0,
        seed: int | None = None,
        steering: Mapping[str, float] | None = None,
        steer_positions: str = "all",
        steer_layers: Sequence[int] | None = None,
        on_token: Callable[[TokenEvent], None] | None = None,
        trace: str | Path | TraceWriter | None = None,
        cancel: threading.Event | None = None,
        **generate_kwargs: Any,
    ) -> MonitoredReply | list[MonitoredReply]:
        """Generate replies while monitoring; one prompt gives one reply, a list gives a list.

        ``steering`` (emotion -> strength) steers the whole generation as :func:`steer` does;
        alert rules with a ``steer`` action add their counter-steer to a row from the token
        after they fire. ``cancel`` (a threading.Event) ends generation at the next token.
        """
        from emovec.steering import steer as steering_ctx

        started = time.perf_counter()
        single = isinstance(prompts, str)
        batch = [prompts] if isinstance(prompts, str) else list(prompts)
        if not batch or any(not p or not p.strip() for p in batch):
            raise MonitorError("empty prompt: give some text to continue")
        if max_new_tokens < 1:
            raise MonitorError("max_new_tokens must be at least 1")
        sampling_settings(temperature)  # refuses a bad temperature before any work
        enc = left_padded(self.lm, [chat_prompt(self.lm, p, chat) for p in batch])
        setup_start = time.perf_counter()  # what came before, plain generation does too
        width = enc["input_ids"].shape[1]
        rows = [self.new_row(r, p) for r, p in enumerate(batch)]
        for state, length in zip(rows, enc["attention_mask"].sum(1).tolist(), strict=True):
            state.prompt_tokens = int(length)
        own_writer = trace is not None and not isinstance(trace, TraceWriter)
        if isinstance(trace, TraceWriter) or trace is None:
            writer = trace
        else:
            writer = TraceWriter(trace, self.meta())

        def deliver(event: TokenEvent) -> None:
            if writer is not None:
                writer.token(event)
            if on_token is not None:
                on_token(event)

        watch = Watcher(self, rows, width, deliver, cancel)
        edits = self._counter_steer_hooks(watch)
        user_steer = (
            steering_ctx(
                self.lm,
                self.vectors,
                steering,
                layers=steer_layers,
                positions=steer_positions,
                prompt_length=width,
            )
            if steering
            else nullcontext()
        )
        mask = enc["attention_mask"].to(self.lm.device)
        generate_kwargs = _room_for_last_token(self.lm, generate_kwargs, width + max_new_tokens)
        try:
            with (
                torch.no_grad(),
                user_steer,
                residual_hooks(self.lm.layers, edits, edits=True),
                residual_hooks(self.lm.layers, {self.layer: watch.score}),
            ):
                generation_start = time.perf_counter()
                out = generate_ids(
                    self.lm,
                    enc["input_ids"],
                    mask,
                    max_new_tokens=max_new_tokens,
                    temperature=temperature,
                    seed=seed,
                    stopping=[watch],
                    return_dict_in_generate=True,
                    **generate_kwargs,
                )
                generation_end = time.perf_counter()
                self._score_last(out, mask, rows, watch)
            replies = [self._finish(state, steering) for state in rows]
            ended = time.perf_counter()
            monitor_seconds = (
                (generation_start - setup_start) + watch.seconds + (ended - generation_end)
            )
            for reply in replies:
                reply.seconds, reply.monitor_seconds = ended - started, monitor_seconds
                reply.sampling = {"temperature": float(temperature), "seed": seed}
            if writer is not None:
                for reply in replies:
                    writer.write(reply.to_record())
        finally:
            if own_writer and writer is not None:
                writer.close()
        return replies[0] if single else replies

    def _counter_steer_hooks(self, watch: Watcher) -> dict[int, Any]:
        """An editing hook at the steering layer that adds each fired rule's counter-steer."""
        wanted = [r for r in self.rules if r.action == "steer"]
        if not wanted:
            return {}
        from emovec.steering import steering_direction

        layer = self.vectors.default_steer_layer
        strengths: dict[str, float] = {}
        for rule in wanted:
            for emotion, strength in rule.steer:
                name = self.vectors.resolve(emotion)
                strengths[name] = strengths.get(name, 0.0) + strength
        delta = steering_direction(self.vectors, strengths, layer).to(
            self.lm.device, self.lm.model.dtype
        )

        @without_offset
        def add(_layer: int, hidden: torch.Tensor, _offset: int) -> torch.Tensor | None:
            if not watch.decoding or not bool(watch.steer_active.any()):
                return None
            gate = watch.steer_active.to(hidden.device, hidden.dtype).view(-1, 1, 1)
            return hidden + gate * delta

        return {layer: add}

    def _score_last(
        self, out: Any, mask: torch.Tensor, rows: list[RowState], watch: Watcher
    ) -> None:
        """Score each row's final pick, which ``generate`` never fed back into the model."""
        sequences = out.sequences
        if sequences.shape[1] <= watch.width:
            return
        last_ids = sequences[:, -1].tolist()
        for state in rows:  # a final end-of-text pick needs no scores
            if not state.done and last_ids[state.row] in watch.eos:
                state.done, state.stopped_by = True, "eos"
        if all(state.done for state in rows):
            return
        last = sequences[:, -1:]
        mask = torch.cat([mask, torch.ones_like(sequences[:, watch.width :])], dim=1)
        positions = (mask.cumsum(-1) - 1).clamp_min(0)[:, -1:]
        watch.latest = None
        with stopping_after(self.lm.layers, self.layer), suppress(StopForward):
            self._body(
                input_ids=last,
                attention_mask=mask,
                position_ids=positions,
                use_cache=True,
                **{self._cache_arg: cache_of(out)},
            )
        if watch.latest is None:
            return
        ids, raw = watch.to_host(watch.latest, sequences[:, -1])
        for state in rows:
            if not state.done:
                watch.accept(state, ids[state.row], raw[state.row])

    def _finish(self, state: RowState, steering: Mapping[str, float] | None) -> MonitoredReply:
        n = len(self.emotions)
        raw = np.stack(state.raw) if state.raw else np.zeros((0, n), np.float32)
        z = np.stack(state.z) if state.z else np.zeros((0, n), np.float32)
        hidden = (
            hidden_spans(state.pieces, z, self.emotions, self.hidden, state.row)
            if self.hidden is not None
            else []
        )
        return MonitoredReply(
            row=state.row,
            prompt=state.prompt,
            text=self.lm.tokenizer.decode(state.ids, skip_special_tokens=True),
            pieces=state.pieces,
            token_ids=state.ids,
            emotions=self.emotions,
            raw=raw,
            z=z,
            alerts=state.alerts,
            hidden=hidden,
            stopped_by=state.stopped_by,
            steering=dict(steering or {}),
        )

    def stream(self, prompts: str | Sequence[str], **kwargs: Any) -> Iterator[Any]:
        """Yield each :class:`TokenEvent` as it is produced, then each :class:`MonitoredReply`.

        Generation runs in a worker thread; leaving the loop early cancels it.
        """
        events: queue.Queue = queue.Queue()
        cancel = kwargs.pop("cancel", None) or threading.Event()
        done = object()

        def work() -> None:
            try:
                result = self.generate(prompts, on_token=events.put, cancel=cancel, **kwargs)
                for reply in result if isinstance(result, list) else [result]:
                    events.put(reply)
            except BaseException as exc:  # handed to the consumer
                events.put(exc)
            finally:
                events.put(done)

        worker = threading.Thread(target=work, name="emovec-monitor", daemon=True)
        worker.start()
        try:
            while (item := events.get()) is not done:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            cancel.set()
            worker.join()


def _room_for_last_token(
    lm: LanguageModel, generate_kwargs: dict[str, Any], length: int
) -> dict[str, Any]:
    """``generate_kwargs`` with a static KV cache one position longer than generation needs.

    ``generate`` sizes a static cache for the tokens it feeds back, but the monitor runs one
    more pass, for the last pick (:meth:`LiveMonitor._score_last`), which would write past
    the end. Transformers versions without ``max_cache_len`` are left as they are.
    """
    try:
        from transformers import GenerationConfig
        from transformers.generation.configuration_utils import ALL_STATIC_CACHE_IMPLEMENTATIONS
    except ImportError:
        return generate_kwargs
    kind = generate_kwargs.get("cache_implementation")
    kind = kind or getattr(lm.model.generation_config, "cache_implementation", None)
    if kind not in ALL_STATIC_CACHE_IMPLEMENTATIONS or "max_cache_len" in generate_kwargs:
        return generate_kwargs
    if not hasattr(GenerationConfig(), "max_cache_len"):
        return generate_kwargs
    return {**generate_kwargs, "max_cache_len": length}
