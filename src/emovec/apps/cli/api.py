"""``emovec api``: the OpenAI-compatible endpoint that steers and scores each request."""

from __future__ import annotations

from typing import Annotated

import typer

from emovec.apps.cli.common import (
    ApiKeyOpt,
    DeviceMapOpt,
    DtypeOpt,
    HostOpt,
    ModelOpt,
    PortOpt,
    VectorsOpt,
    command,
    load_lm,
    warn_if_exposed,
)


@command
def api(
    vectors: VectorsOpt,
    model: ModelOpt = None,
    dtype: DtypeOpt = "float32",
    device_map: DeviceMapOpt = None,
    host: HostOpt = "127.0.0.1",
    port: PortOpt = 8000,
    api_key: ApiKeyOpt = None,
    max_batch: Annotated[
        int, typer.Option(min=1, max=64, help="Requests generated together (1: one at a time).")
    ] = 8,
    batch_window_ms: Annotated[
        float, typer.Option(min=0, max=1000, help="How long a request waits for neighbours.")
    ] = 15.0,
) -> None:
    """OpenAI-compatible chat endpoint with per-request steering and per-token scores."""
    from emovec.apps.api_server import ApiLimits
    from emovec.apps.api_server import serve as serve_api
    from emovec.vectors import EmotionVectors

    vecs = EmotionVectors.load(vectors)
    lm = load_lm(model, vecs, dtype, device_map)
    warn_if_exposed(host, api_key)
    limits = ApiLimits(max_batch=max_batch, batch_window_s=batch_window_ms / 1000)
    serve_api(lm, vecs, host=host, port=port, api_key=api_key, limits=limits)
