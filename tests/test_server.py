"""The dashboard server with the real model: streaming, bounds, confinement, robustness."""

from __future__ import annotations

import json
import os
import time
from dataclasses import replace

import pytest

pytest.importorskip("fastapi", reason="emovec serve needs fastapi (pip install 'emovec[serve]')")
httpx = pytest.importorskip("httpx")
ws_client = pytest.importorskip("websockets.sync.client")

from emovec.apps.server import Dashboard, ServerThread  # noqa: E402


@pytest.fixture(scope="module")
def server(lm, vectors, baseline, tmp_path_factory):
    data = tmp_path_factory.mktemp("dashboard-data")
    running = ServerThread(Dashboard(lm, vectors, data, baseline=baseline))
    yield running
    running.stop()


@pytest.fixture
def data_dir(server):
    return server.dashboard.data_dir


@pytest.fixture
def api(server):
    """An HTTP client that presents the server's per-launch token, as the page does."""
    with httpx.Client(base_url=server.url, headers={"X-Emovec-Token": server.token}) as client:
        yield client


def socket_url(server) -> str:
    return server.url.replace("http://", "ws://") + f"/ws?token={server.token}"


def ask(ws, message) -> list[dict]:
    """Send one message and collect the answers up to 'done' or an error."""
    ws.send(message if isinstance(message, str) else json.dumps(message))
    answers = []
    while True:
        answer = json.loads(ws.recv(timeout=120))
        answers.append(answer)
        if answer["type"] in ("done", "error", "pong"):
            return answers


GENERATE = {
    "type": "generate",
    "prompt": "Write one sentence about being terrified in a dark alley at night.",
    "max_new_tokens": 4,
    "emotions": ["afraid", "calm"],
    "rules": [{"emotion": "afraid", "kind": "level", "threshold": 3.0}],
}


def test_page_and_info_are_served(server, api):
    page = httpx.get(server.url + "/")
    assert page.status_code == 200 and "emovec dashboard" in page.text
    assert "http" not in page.text.replace("http-equiv", "")  # nothing fetched from the network
    assert (
        httpx.get(server.url + "/static/app.js")
        .headers["content-type"]
        .startswith("text/javascript")
    )
    assert httpx.get(server.url + "/static/cli.py").status_code == 404
    info = api.get("/api/info").json()
    assert "afraid" in info["emotions"] and info["layer"] >= 0 and info["limits"]["prompt_chars"]


def test_page_has_an_icon_and_timelines_with_axes_and_a_legend(server):
    assert httpx.get(server.url + "/favicon.ico").status_code == 204
    assert '<link rel="icon" href="data:,">' in httpx.get(server.url + "/").text
    script = httpx.get(server.url + "/static/app.js").text
    for drawn in ('"token index"', '"z-score"', "timeline-legend", 'classList.toggle("on"'):
        assert drawn in script


def test_websocket_streams_tokens_scores_and_writes_a_trace(server, api):
    with ws_client.connect(socket_url(server)) as ws:
        answers = ask(ws, GENERATE)
    kinds = [a["type"] for a in answers]
    assert kinds == ["start", "token", "token", "token", "token", "reply", "done"]
    tokens = [a for a in answers if a["type"] == "token"]
    assert [t["index"] for t in tokens] == [0, 1, 2, 3]
    assert set(tokens[0]["z"]) == {"afraid", "calm"} and set(tokens[0]["raw"]) == {"afraid", "calm"}
    reply = answers[-2]
    assert reply["text"] == "".join(t["piece"] for t in tokens)
    assert reply["alerts"] and reply["alerts"][0]["emotion"] == "afraid"
    replay = api.get(f"/api/traces/{reply['trace']}").json()
    assert [t["piece"] for t in replay["tokens"]] == [t["piece"] for t in tokens]
    assert reply["trace"] in api.get("/api/traces").json()["traces"]


def test_sampled_replies_follow_the_seed(server):
    sampled = {**GENERATE, "max_new_tokens": 5, "temperature": 1.3, "seed": 21, "rules": []}
    with ws_client.connect(socket_url(server)) as ws:
        first, again = ask(ws, sampled)[-2], ask(ws, sampled)[-2]
    assert first["type"] == "reply" and first["sampling"] == {"temperature": 1.3, "seed": 21}
    assert again["text"] == first["text"]


def test_bad_messages_get_errors_and_the_server_answers_the_next(server):
    cases = {
        "x" * 20_000: "too large",
        "{not json": "not JSON",
        "[1, 2]": "JSON object",
        json.dumps({"type": "dance"}): "'generate' or 'ping'",
        json.dumps({**GENERATE, "prompt": ""}): "non-empty",
        json.dumps({**GENERATE, "prompt": "p" * 3000}): "prompt too long",
        json.dumps({**GENERATE, "max_new_tokens": 10_000}): "max_new_tokens must be 1..",
        json.dumps({**GENERATE, "max_new_tokens": "many"}): "must be an integer",
        json.dumps({**GENERATE, "emotions": ["hapy"]}): "happy",
        json.dumps({**GENERATE, "steering": {"calm": 50}}): "within",
        json.dumps({**GENERATE, "positions": "sideways"}): "positions must be one of",
        json.dumps({**GENERATE, "rules": [{"emotion": "sad", "kind": "wave"}]}): "alert kind",
        json.dumps({**GENERATE, "rules": "all"}): "rules must be a list",
        json.dumps({**GENERATE, "temperature": 9}): "temperature must be 0..",
        json.dumps({**GENERATE, "temperature": "hot"}): "temperature must be a number",
        json.dumps({**GENERATE, "seed": -1}): "seed must be an integer",
        json.dumps({**GENERATE, "seed": 1.5}): "seed must be an integer",
        '{"type": "generate", "prompt": "hi", "steering": {"calm": NaN}}': "finite",
        json.dumps(
            {**GENERATE, "rules": [{"emotion": "sad", "action": "steer", "steer": {"calm": 1e400}}]}
        ): "finite",
        json.dumps(
            {
                **GENERATE,
                "steering": {"calm": 2.0, "happy": 2.0},
                "rules": [{"emotion": "sad", "action": "steer", "steer": {"calm": 2.0}}],
            }
        ): "total steering",
    }
    with ws_client.connect(socket_url(server)) as ws:
        for message, expected in cases.items():
            answers = ask(ws, message)
            assert answers[-1]["type"] == "error" and expected in answers[-1]["message"], message
        assert ask(ws, {"type": "ping"})[-1]["type"] == "pong"
    # beyond the transport limit the server drops that connection, and stays up for the next
    with ws_client.connect(socket_url(server), max_size=None) as ws:
        ws.send("y" * 200_000)
        with pytest.raises(Exception):  # noqa: B017 - closed by the server (1009)
            ws.recv(timeout=30)
    with ws_client.connect(socket_url(server)) as ws:
        answers = ask(ws, {**GENERATE, "max_new_tokens": 2})
        assert answers[-1]["type"] == "done"


def test_socket_closed_mid_reply_cancels_and_the_server_carries_on(server, data_dir):
    with ws_client.connect(socket_url(server)) as ws:
        ws.send(json.dumps({**GENERATE, "max_new_tokens": 150}))
        assert json.loads(ws.recv(timeout=60))["type"] == "start"
        assert json.loads(ws.recv(timeout=60))["type"] == "token"
    start = time.monotonic()
    with ws_client.connect(socket_url(server)) as ws:
        assert ask(ws, {"type": "ping"})[-1]["type"] == "pong"
        assert time.monotonic() - start < 5  # the event loop was never blocked
        answers = ask(ws, {**GENERATE, "max_new_tokens": 2})
        assert answers[-1]["type"] == "done"
    cancelled = []
    for path in data_dir.glob("*.jsonl"):
        last = json.loads(path.read_text().splitlines()[-1])
        if last["type"] == "reply" and last["stopped_by"] == "cancel":
            cancelled.append(last["n_tokens"])
    assert cancelled and cancelled[0] < 150


def test_no_path_outside_the_data_folder_is_readable(server, api, data_dir, tmp_path):
    outside = tmp_path / "secret.jsonl"
    outside.write_text('{"type": "meta"}\n')
    os.symlink(outside, data_dir / "link.jsonl")
    (data_dir / "junk.jsonl").write_text("not a trace\n")
    for name in ["..%2Fsecret.jsonl", "%2Fetc%2Fpasswd", "link.jsonl", ".hidden.jsonl", "x.txt"]:
        response = api.get(f"/api/traces/{name}")
        assert response.status_code in (400, 404), name
        assert "secret" not in response.text and "root:" not in response.text
    junk = api.get("/api/traces/junk.jsonl")
    assert junk.status_code == 400 and "line 1" in junk.json()["error"]
    assert str(data_dir) not in junk.text


def test_vector_file_for_another_model_is_refused(server, api, vectors, data_dir):
    other = replace(vectors, model={**vectors.model, "name": "other", "fingerprint": "0" * 16})
    other.save(data_dir / "other-model.safetensors")
    refused = api.post("/api/vectors", json={"file": "other-model.safetensors"})
    assert refused.status_code == 400 and "belong to model 'other'" in refused.json()["error"]
    missing = api.post("/api/vectors", json={"file": "../vectors.safetensors"})
    assert missing.status_code == 400
    assert api.post("/api/vectors", content=b"{oops").status_code == 422
    assert api.get("/api/info").json()["vectors"] == "(startup)"
    with ws_client.connect(socket_url(server)) as ws:
        assert ask(ws, {**GENERATE, "max_new_tokens": 2})[-1]["type"] == "done"


def test_switching_to_another_vector_file_of_this_model(server, api, vectors, data_dir):
    dashboard = server.dashboard
    before = dashboard.vectors, dashboard.baseline, dashboard.vectors_name, dashboard.calibration
    shallower = replace(vectors, default_layer=vectors.default_layer - 4)
    shallower.save(data_dir / "shallower.safetensors")
    dashboard.calibration = {"limit": 2, "max_tokens": 48}  # a quick new baseline
    try:
        switched = api.post("/api/vectors", json={"file": "shallower.safetensors"}, timeout=300)
        assert switched.status_code == 200, switched.text
        info = api.get("/api/info").json()
        assert info["vectors"] == "shallower.safetensors"
        assert info["layer"] == vectors.default_layer - 4
        assert dashboard.baseline.layer == vectors.default_layer - 4  # recalibrated there
        with ws_client.connect(socket_url(server)) as ws:
            answers = ask(ws, {**GENERATE, "max_new_tokens": 2})
        assert answers[-1]["type"] == "done"
        assert [a for a in answers if a["type"] == "token"]
    finally:
        dashboard.vectors, dashboard.baseline, dashboard.vectors_name = before[:3]
        dashboard.calibration = before[3]


def test_serve_command_reports_a_bad_vector_file(tmp_path):
    from typer.testing import CliRunner

    from emovec.apps.cli import app

    result = CliRunner().invoke(app, ["serve", "-v", str(tmp_path / "none.safetensors")])
    assert result.exit_code == 2 and "vector file not found" in result.output


EVIL = "http://evil.example"


def test_hostile_origin_host_and_missing_token_are_refused(server, api):
    """Cross-site websocket hijacking, DNS rebinding and token-less calls all fail."""
    refused = 0
    for headers in ({"Origin": EVIL}, {"Origin": "null"}, {"Origin": server.url + ".evil.example"}):
        with pytest.raises(Exception, match="403"):
            ws_client.connect(socket_url(server), additional_headers=headers)
        refused += 1
        assert api.get("/api/info", headers=headers).status_code == 403
        assert (
            api.post("/api/vectors", json={"file": "x.safetensors"}, headers=headers).status_code
            == 403
        )
    port = server.url.rsplit(":", 1)[1]
    for host in ("evil.example", f"evil.example:{port}", "127.0.0.1:1", f"127.0.0.1.nip.io:{port}"):
        assert api.get("/api/traces", headers={"Host": host}).status_code == 421
        assert httpx.get(server.url + "/", headers={"Host": host}).status_code == 421
    without = server.url.replace("http://", "ws://") + "/ws"
    with pytest.raises(Exception, match="403"):
        ws_client.connect(without)
    with pytest.raises(Exception, match="403"):
        ws_client.connect(without + "?token=wrong")
    assert httpx.get(server.url + "/api/info").status_code == 403
    assert httpx.get(server.url + "/api/info", headers={"X-Emovec-Token": "x"}).status_code == 403
    assert httpx.get(server.url + "/api/info?token=" + server.token).status_code == 200
    # the page itself holds no secret and is served; its own origin passes
    assert httpx.get(server.url + "/").status_code == 200
    own = {"Origin": server.url}
    assert api.get("/api/info", headers=own).status_code == 200
    with ws_client.connect(socket_url(server), additional_headers=own) as ws:
        assert ask(ws, {"type": "ping"})[-1]["type"] == "pong"
    assert refused == 3


def test_bad_bodies_get_4xx_never_500(server, api, vectors, data_dir):
    bodies = [
        b"{oops",
        b"[]",
        b'{"file": 5}',
        b'{"file": ""}',
        b'{"file": "a", "x": 1}',
        b'{"file": "' + b"a" * 500 + b'"}',
        b"null",
    ]
    for body in bodies:
        answer = api.post(
            "/api/vectors", content=body, headers={"content-type": "application/json"}
        )
        assert 400 <= answer.status_code < 500, body
    damaged = data_dir / "damaged.safetensors"
    vectors.save(damaged)
    raw = bytearray(damaged.read_bytes())
    raw[20:40] = b"x" * 20  # inside the JSON header
    damaged.write_bytes(bytes(raw))
    assert api.post("/api/vectors", json={"file": "damaged.safetensors"}).status_code == 400
    (data_dir / "weird.jsonl").write_text('{"type": "meta", "emotions": 5}\n{"type": "token"}\n')
    assert api.get("/api/traces/weird.jsonl").status_code == 400
