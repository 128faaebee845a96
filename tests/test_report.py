"""The report: the main job's sentiment check and readings as sections, the model as readable
rows, and `experiment all` on a vector file that lacks emotions some experiments need."""

import json

from emovec.apps.report import build_report, context_rows
from emovec.experiments import AllSettings, Result, load_result, run_all

MODEL = {
    "name": "smollm2-135m-instruct",
    "architecture": "LlamaForCausalLM",
    "model_type": "llama",
    "n_layers": 30,
    "d_model": 576,
    "fingerprint": "0123456789abcdef",
}


def _fake_main_job(folder):
    """What `emovec run` leaves in its folder, without running a model."""
    (folder / "steering_sentiment.json").write_text(
        json.dumps(
            {
                "positive": "happy",
                "negative": "sad",
                "strength": 0.5,
                "layers": [12],
                "mean_sentiment": {"none": 0.1234, "+happy": 0.4321, "+sad": -0.2468},
                "p_value": 0.0012,
                "n_per_condition": 24,
                "samples": {
                    "none": ["It was a day.", "Fine."],
                    "+happy": ["What a wonderful, sunny morning!"],
                    "+sad": ["Everything felt grey and empty."],
                },
            }
        )
    )
    (folder / "readings.json").write_text(
        json.dumps(
            [
                {"text": "Footsteps stopped outside the door.", "top": [["afraid", 0.1234]]},
                {
                    "text": "She laughed and hugged everyone.",
                    "top": [["happy", 0.2], ["proud", 0.1]],
                },
            ]
        )
    )
    Result("heldout", "Held-out story classification", order=5).save(folder / "heldout")


def test_main_job_report_has_sentiment_and_readings_sections(tmp_path):
    from emovec.apps.pipeline import write_job_sections

    _fake_main_job(tmp_path)
    written = write_job_sections(tmp_path, layer=20)
    assert [f.name for f in written] == ["steering_sentiment", "readings"]
    sentiment = load_result(tmp_path / "steering_sentiment")
    assert sentiment["metrics"]["p_value"] == 0.0012
    assert sentiment["metrics"]["difference"] == 0.6789
    page = build_report(tmp_path, context={"model": MODEL, "default_layer": 20}).read_text()
    held, readings, steer = (
        page.index("Held-out story classification"),
        page.index("Sample readings"),
        page.index("Steering and sentiment (VADER)"),
    )
    assert held < readings < steer
    assert "+0.432" in page and "-0.247" in page and "p = 0.0012" in page  # means and p-value
    assert "What a wonderful, sunny morning!" in page  # a sample reply
    assert "Footsteps stopped outside the door." in page and "afraid +0.123" in page
    assert "at layer 20" in page
    # The model is readable rows, not a JSON blob.
    assert "{&quot;" not in page and '{"name"' not in page
    for label, value in (
        ("model", "smollm2-135m-instruct"),
        ("architecture", "LlamaForCausalLM (llama)"),
        ("fingerprint", "0123456789abcdef"),
    ):
        assert f"<td>{label}</td><td>{value}</td>" in page
    assert '<td>layers</td><td class="num">30</td>' in page
    assert '<td>d_model</td><td class="num">576</td>' in page


def test_job_sections_need_the_files(tmp_path):
    from emovec.apps.pipeline import write_job_sections

    assert write_job_sections(tmp_path) == []


def test_context_rows_flatten_mappings():
    rows = context_rows(
        {"model": {**MODEL, "extra": [1]}, "vectors": "v.safetensors", "x": {"a": 1}}
    )
    assert rows[:5] == [
        ["model", "smollm2-135m-instruct"],
        ["architecture", "LlamaForCausalLM (llama)"],
        ["layers", 30],
        ["d_model", 576],
        ["fingerprint", "0123456789abcdef"],
    ]
    assert ["model extra", "[1]"] in rows and ["vectors", "v.safetensors"] in rows
    assert ["x a", 1] in rows
    assert context_rows({"model": "plain-name"}) == [["model", "plain-name"]]


def _subset(vectors, names):
    return vectors.subset(names)


def test_run_all_skips_what_a_subset_file_cannot_run(lm, vectors, tmp_path):
    # As built with `extract -e happy -e sad ...`: no afraid/calm for the sweeps, too few
    # emotions for the implicit scenarios and the layer sweep.
    few = _subset(vectors, ["happy", "sad", "proud", "lonely", "bored"])
    settings = AllSettings(skip=["preferences", "posttrain"])  # slow, and they can run
    out = tmp_path / "exp"
    done = run_all(lm, few, out, settings, log=lambda _s: None)
    assert set(done) == {"geometry", "logit_lens"}
    assert set(done.skipped) == {"sweeps", "implicit", "layer_sweep"}
    assert all("lacks" in reason for reason in done.skipped.values())
    assert "afraid" in done.skipped["sweeps"]
    section = load_result(out / "skipped")
    assert section["data"]["skipped"] == done.skipped
    page = build_report(out).read_text()
    assert "Experiments skipped" in page and "Geometry of the emotion vectors" in page
    assert "the implicit scenarios needs emotions the vector file lacks" in page

    # Once everything asked for runs, an earlier run's list of skipped experiments goes.
    only_geometry = [name for name in (*done, *done.skipped, *settings.skip) if name != "geometry"]
    run_all(lm, few, out, AllSettings(skip=only_geometry), log=lambda _s: None)
    assert not (out / "skipped" / "result.json").exists()
