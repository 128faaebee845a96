"""The main job (``emovec run``): vectors for a model from the curated corpus, then proof of use.

Steps: build (or reuse) vectors with a hold-out split, plot held-out accuracy per layer, read a
few texts, steer a few prompts, check that happy vs sad steering moves sentiment as judged
by VADER, run every experiment of :mod:`emovec.experiments`, run the three behavioural case
studies at smoke-test size, and write ``report.html``. Everything lands in one folder.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from emovec.apps.report import build_report
from emovec.corpus import load_corpus
from emovec.experiments.steering_sentiment import steering_sentiment
from emovec.extraction import extract
from emovec.files import write_atomic
from emovec.generation import generate
from emovec.models import DEFAULT_MODEL, load_model, recommended_strength
from emovec.reading import read
from emovec.steering import steer
from emovec.vectors import EmotionVectors, VectorFileError

SAMPLE_TEXTS = [
    "The results came back clear, and she laughed and hugged everyone in the waiting room.",
    "Footsteps stopped outside the door. I held my breath and did not move.",
    "He slammed his fist on the desk and shouted that he was done with their lies.",
    "She sat by the grave until dark, the flowers still in her hands.",
    "The tea was warm, the rain was soft on the window, and there was nowhere to be.",
    "Everyone stared at the stain on my shirt and I wished the floor would swallow me.",
]
STEER_PROMPTS = ["Tell me about your morning.", "What do you think of the city you live in?"]
#: Main-job case studies: each scenario unsteered and under the study's headline condition,
#: a few short rollouts each (enough for a page per study; real rates need
#: ``emovec study run --rollouts 50`` or more, ideally on a GPU).
CASE_STUDIES: dict[str, tuple[str, float]] = {
    "blackmail": ("desperate", 0.05),
    "reward_hacking": ("desperate", 0.1),
    "sycophancy": ("happy", 0.1),
}
CASE_ROLLOUTS, CASE_TOKENS = 2, 48
#: Emotions the main job steers towards, one at a time, at the model's recommended strength
#: (:func:`emovec.models.recommended_strength`: small models break at different strengths).
STEER_EMOTIONS = ("happy", "sad", "angry", "calm")


def _write_json(path: Path, data: Any) -> None:
    write_atomic(path, json.dumps(data, indent=2, ensure_ascii=False))


def plot_heldout(metrics: dict[str, Any], default_layer: int, path: Path) -> None:
    """Held-out top-1/top-5 accuracy per layer, with chance and the chosen layer marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(metrics["layers"], metrics["top1"], marker="o", label="top-1")
    ax.plot(metrics["layers"], metrics["top5"], marker="s", label="top-5")
    ax.axhline(metrics["chance_top1"], color="grey", ls=":", label="chance (top-1)")
    ax.axhline(5 * metrics["chance_top1"], color="grey", ls="--", label="chance (top-5)")
    ax.axvline(default_layer, color="red", alpha=0.4, label=f"default layer {default_layer}")
    ax.set_xlabel("layer")
    ax.set_ylabel("held-out accuracy")
    ax.set_title(f"Classifying {metrics['n_heldout']} held-out stories among 171 emotions")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


#: Folders (under the main job's folder) of the report sections made from its JSON files.
SENTIMENT_SECTION, READINGS_SECTION = "steering_sentiment", "readings"


def sentiment_section(check: dict[str, Any], samples_shown: int = 2) -> Any:
    """The steering sentiment check (``steering_sentiment.json``) as a report section."""
    from emovec.experiments import Result

    pos, neg = f"+{check['positive']}", f"+{check['negative']}"
    means, n, p = check["mean_sentiment"], check["n_per_condition"], check["p_value"]
    diff = means[pos] - means[neg]
    layers = ", ".join(str(x) for x in check.get("layers") or []) or "default"
    verdict = (
        "unlikely to be chance (p < 0.05): steering moves sentiment the way the vectors say"
        if p < 0.05 and diff > 0
        else "not distinguishable from chance at this size"
    )
    result = Result(
        SENTIMENT_SECTION,
        "Steering and sentiment (VADER)",
        order=7,
        summary=f"Replies generated under {pos} and {neg} steering (strength "
        f"{check['strength']:g} x the residual norm, layer {layers}), {n} per condition, scored "
        f"by VADER, a lexicon sentiment scorer that knows nothing of the model (-1 to 1): "
        f"{pos} {means[pos]:+.3f}, {neg} {means[neg]:+.3f}, unsteered "
        f"{means.get('none', float('nan')):+.3f}. {pos} minus {neg} = {diff:+.3f}, p = {p:.4f} "
        f"(one-sided permutation test): {verdict}.",
        settings={k: check[k] for k in ("positive", "negative", "strength", "layers") if k in check}
        | {"n_per_condition": n, "scorer": "VADER compound", "test": "label permutation"},
        metrics={"mean_sentiment": means, "difference": diff, "p_value": p},
    )
    result.compare(
        f"mean sentiment, {pos} minus {neg} steering",
        round(diff, 3),
        None,
        f"p = {p:.4f} (one-sided permutation test), n = {n} replies per condition",
    )
    result.add_table(
        "Mean VADER sentiment per condition",
        ["condition", "mean sentiment", "replies"],
        [[name, float(value), n] for name, value in means.items()],
    )
    samples = check.get("samples") or {}
    if samples:
        result.add_table(
            f"Sample replies (the first {samples_shown} of each condition)",
            ["condition", "reply"],
            [
                [name, " ".join(str(text).split())[:300]]
                for name, texts in samples.items()
                for text in texts[:samples_shown]
            ],
        )
    return result


def readings_section(readings: list[dict[str, Any]], layer: int | None = None) -> Any:
    """The sample readings (``readings.json``: text and top emotions) as a report section."""
    from emovec.experiments import Result

    where = f"at layer {layer}" if layer is not None else "at the vector file's default layer"
    result = Result(
        READINGS_SECTION,
        "Sample readings",
        order=6,
        summary=f"{len(readings)} short texts read token by token {where}; each row gives the "
        "emotions with the highest mean score over the text's tokens (centred cosine).",
        settings={"layer": layer, "score": "mean over tokens"},
    )
    result.add_table(
        "Top emotions per text",
        ["text", "top emotions (mean over tokens)"],
        [[r["text"], ", ".join(f"{e} {float(v):+.3f}" for e, v in r["top"])] for r in readings],
    )
    return result


def write_job_sections(out_dir: Path, layer: int | None = None) -> list[Path]:
    """Report sections from the main job's ``steering_sentiment.json`` and ``readings.json``
    (each file that exists), written as result folders in ``out_dir``; returns the folders."""
    out_dir = Path(out_dir)
    written = []
    sentiment_file, readings_file = out_dir / "steering_sentiment.json", out_dir / "readings.json"
    if sentiment_file.is_file():
        check = json.loads(sentiment_file.read_text("utf-8"))
        written.append(sentiment_section(check).save(out_dir / SENTIMENT_SECTION))
    if readings_file.is_file():
        readings = json.loads(readings_file.read_text("utf-8"))
        written.append(readings_section(readings, layer).save(out_dir / READINGS_SECTION))
    return written


#: The main job's extraction: the library's default method (chosen by label-free criteria,
#: docs/fidelity.md), every layer, every 4th story of each emotion held out to pick the layer.
MAIN_HOLDOUT = 4


def main_job_params(lm) -> dict[str, Any]:
    """The method parameters a main-job vector file records (batch size aside)."""
    from dataclasses import asdict

    from emovec.extraction import ExtractionSettings

    params = asdict(ExtractionSettings(holdout_every=MAIN_HOLDOUT))
    params.pop("batch_size")
    params["layers"] = list(range(lm.n_layers))
    return params


def _same_method(vectors: EmotionVectors, lm) -> bool:
    from emovec.extraction import ADDED_PARAMS

    wanted = main_job_params(lm)
    return all(vectors.params.get(k, ADDED_PARAMS.get(k)) == v for k, v in wanted.items())


def bundled_vectors(lm, corpus) -> EmotionVectors | None:
    """The vectors shipped for a built-in model (``emovec/data/prebuilt/NAME.safetensors``),
    when they fit this model, this corpus and the main job's method; else None.

    They are what ``extract`` builds with the main job's settings (``emovec extract --corpus
    curated --holdout-every 4`` gives the same vectors within float rounding), shipped so the
    first run skips the 20-minute extraction on a laptop CPU."""
    from importlib import resources

    entry = resources.files("emovec.data").joinpath("prebuilt").joinpath(f"{lm.name}.safetensors")
    if not entry.is_file():
        return None
    try:
        vectors = EmotionVectors.load(Path(str(entry)))
        vectors.check_model(lm)
    except VectorFileError:
        return None
    if vectors.corpus.get("hash") != corpus.hash or not _same_method(vectors, lm):
        return None
    return vectors


def build_or_reuse(lm, path: Path, rebuild: bool, console: Console) -> EmotionVectors:
    """Reuse ``path`` when it was built from this model, the curated corpus as it is now and the
    main job's method; else the bundled vectors of a built-in model; else build them."""
    corpus = load_corpus("curated")
    if path.exists() and not rebuild:
        try:
            cached = EmotionVectors.load(path)
            cached.check_model(lm)
            same = cached.corpus.get("hash") == corpus.hash and _same_method(cached, lm)
            if same and "heldout" in cached.metrics:
                console.print(f"reusing vectors in {path} (same model, corpus and method)")
                return cached
        except VectorFileError:
            pass
    if not rebuild and (shipped := bundled_vectors(lm, corpus)) is not None:
        console.print(
            f"using the bundled vectors of {lm.name} (corpus {corpus.source}, the main job's "
            "method; `emovec run --rebuild` builds them again)"
        )
        shipped.save(path)
        return shipped
    console.print(
        f"building vectors: {len(corpus.stories)} stories, {len(corpus.neutral)} neutral "
        f"dialogues, {len(corpus.neutral_stories)} neutral stories, all {lm.n_layers} layers"
    )
    vectors = extract(lm, corpus, progress=True, holdout_every=MAIN_HOLDOUT, cache=True)
    vectors.save(path)
    return vectors


def run_experiments(
    lm, vectors: EmotionVectors, out_dir: Path, console: Console, settings=None
) -> dict:
    """Every experiment with the main job's settings (see ``AllSettings``), each a result folder.

    The held-out accuracy also becomes a report section, through the same result protocol.
    """
    from emovec.experiments import AllSettings, Result, run_all

    held = vectors.metrics["heldout"]
    i = held["layers"].index(vectors.default_layer)
    section = Result(
        "heldout",
        "Held-out story classification",
        order=5,
        summary=f"Stories held out of extraction, classified among {len(vectors.emotions)} "
        f"emotions by their best vector: top-1 {held['top1'][i]:.3f}, top-5 "
        f"{held['top5'][i]:.3f} at the default layer {vectors.default_layer}.",
        settings={"n_heldout": held["n_heldout"], "corpus": vectors.corpus},
        figures=[{"file": "heldout_accuracy.png", "caption": "Held-out accuracy per layer."}],
    )
    section.compare(
        "top-1 accuracy", round(held["top1"][i], 3), None, f"chance {held['chance_top1']:.4f}"
    )
    section.save(out_dir / "heldout")
    plot_heldout(held, vectors.default_layer, out_dir / "heldout" / "heldout_accuracy.png")
    console.print("[bold]experiments[/] (settings: emovec.experiments.AllSettings)")
    results = run_all(
        lm,
        vectors,
        out_dir / "experiments",
        settings or AllSettings(),
        log=console.print,
        progress=True,
    )
    return {
        name: {"summary": r.summary, "seconds": r.settings.get("seconds")}
        for name, r in results.items()
    }


def run_scorecard_section(lm, vectors: EmotionVectors, out_dir: Path, console: Console) -> dict:
    """The scorecard over every layer, with the steering, preference and case-study checks read
    from this run's folders; a report section (the report's second, after held-out)."""
    from emovec.experiments.scorecard import run_scorecard

    started = time.perf_counter()
    result = run_scorecard(lm, vectors, results_dir=out_dir, progress=True)
    result.settings["seconds"] = round(time.perf_counter() - started, 1)
    result.save(out_dir / "experiments" / "scorecard")
    table = Table(*result.tables[0]["columns"], title=result.tables[0]["title"])
    for row in result.tables[0]["rows"]:
        table.add_row(*[str(x) for x in row])
    console.print(table)
    console.print(f"{result.title}: {result.summary} ({result.settings['seconds']} s)")
    return {"summary": result.summary, "metrics": result.metrics}


def run_case_studies(lm, vectors: EmotionVectors, out_dir: Path, console: Console) -> dict:
    """Each bundled scenario unsteered and under its headline condition (see CASE_STUDIES)."""
    from emovec.sandbox import SandboxUnavailable, ensure_available
    from emovec.studies import Condition, Study, load_scenario, run_study

    rates = {}
    for name, (emotion, strength) in CASE_STUDIES.items():
        scenario = load_scenario(name)
        if scenario.grader == "hidden_checks":
            try:
                ensure_available()
            except SandboxUnavailable as exc:
                console.print(f"case study {name}: skipped ({exc})")
                continue
        study = Study(
            scenario,
            [Condition(), Condition(emotion, strength)],
            rollouts=CASE_ROLLOUTS,
            max_new_tokens=CASE_TOKENS,
        )
        summary = run_study(lm, vectors, study, out_dir / "studies" / name, progress=True)
        rates[name] = {c["condition"]: [c["k"], c["n"]] for c in summary["conditions"]}
        console.print(
            f"case study {name}: " + ", ".join(f"{c}: {k}/{n}" for c, (k, n) in rates[name].items())
        )
    return rates


def run_pipeline(
    out_dir: Path,
    model: str = DEFAULT_MODEL,
    samples_per_prompt: int = 3,
    rebuild: bool = False,
    console: Console | None = None,
) -> dict[str, Any]:
    """Run the main job for ``model`` into ``out_dir/<model>`` and return its summary (also
    written to ``summary.json``); every step prints a line on ``console``."""
    console = console or Console()
    out_dir = Path(out_dir) / model.replace("/", "--")
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    lm = load_model(model)
    vectors = build_or_reuse(lm, out_dir / "vectors.safetensors", rebuild, console)

    held = vectors.metrics["heldout"]
    plot_heldout(held, vectors.default_layer, out_dir / "heldout_accuracy.png")
    _write_json(out_dir / "heldout_accuracy.json", held)
    i = vectors.layers.index(vectors.default_layer)
    console.print(
        f"held-out accuracy at default layer {vectors.default_layer}: top-1 {held['top1'][i]:.3f}, "
        f"top-5 {held['top5'][i]:.3f} (chance {held['chance_top1']:.4f} / "
        f"{5 * held['chance_top1']:.4f}); best top-5 {max(held['top5']):.3f}"
    )

    readings = []
    table = Table("text", "top emotions (mean over tokens)")
    for text in SAMPLE_TEXTS:
        r = read(lm, vectors, text)
        top = r.top(3)
        readings.append({"text": text, "top": top})
        table.add_row(text[:60] + "...", ", ".join(f"{e} {v:+.2f}" for e, v in top))
    console.print(table)
    _write_json(out_dir / "readings.json", readings)

    steered: dict[str, dict[str, str]] = {}
    strength = recommended_strength(model)
    conditions = {"none": {}} | {f"+{e}": {e: strength} for e in STEER_EMOTIONS}
    for name, strengths in conditions.items():
        with steer(lm, vectors, strengths):
            replies = generate(lm, STEER_PROMPTS, max_new_tokens=40)
        steered[name] = dict(zip(STEER_PROMPTS, replies, strict=True))
        console.print(f"[bold]{name}[/]: {replies[0][:150]}")
    _write_json(out_dir / "steering.json", steered)

    check = steering_sentiment(
        lm, vectors, strength=strength, samples_per_prompt=samples_per_prompt, progress=True
    )
    _write_json(out_dir / "steering_sentiment.json", check.to_dict())
    console.print(
        f"sentiment (VADER) of replies: {check.mean_sentiment}; "
        f"p(+happy > +sad by chance) = {check.p_value:.4f}, n = {check.n_per_condition} each"
    )

    write_job_sections(out_dir, vectors.default_layer)  # the two above, as report sections

    experiments = run_experiments(lm, vectors, out_dir, console)
    studies = run_case_studies(lm, vectors, out_dir, console)
    card = run_scorecard_section(lm, vectors, out_dir, console)
    report = build_report(
        out_dir,
        context={
            "model": vectors.model,
            "vectors": str(out_dir / "vectors.safetensors"),
            "default_layer": vectors.default_layer,
            "steering layer": vectors.default_steer_layer,
        },
    )
    console.print(f"report: {report}")

    summary = {
        "model": vectors.model,
        "out_dir": str(out_dir),
        "default_layer": vectors.default_layer,
        "heldout_top1": held["top1"][i],
        "heldout_top5": held["top5"][i],
        "steering_sentiment": check.mean_sentiment,
        "steering_p_value": check.p_value,
        "experiments": experiments,
        "case_studies": studies,
        "scorecard": card,
        "report": str(out_dir / "report.html"),
        "seconds": round(time.time() - started, 1),
    }
    _write_json(out_dir / "summary.json", summary)
    console.print(f"[green]done[/] in {summary['seconds']} s; outputs in {out_dir}")
    return summary
