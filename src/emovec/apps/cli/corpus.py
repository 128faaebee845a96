"""``emovec corpus stories|neutral|serve``: have a model (local or behind a chat endpoint)
write a corpus with the study's design, or serve a local model as a chat endpoint."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated

import typer

from emovec import catalog
from emovec.apps.cli.common import (
    ApiKeyOpt,
    HostOpt,
    ModelOpt,
    PortOpt,
    command_group,
    group_command,
    load_lm,
    out,
    warn_if_exposed,
)

corpus_app = command_group(
    "corpus",
    "Have a model write a corpus (the study's design), or serve a model as a chat endpoint.",
)


CorpusOut = Annotated[Path, typer.Option("--out", "-o", help="Corpus folder (created; resumed).")]

AuthorOpt = Annotated[
    str | None,
    typer.Option(help="Another local model to write (HF id, folder, .gguf); default: --model."),
]

EndpointOpt = Annotated[
    str | None,
    typer.Option(help="OpenAI-compatible endpoint URL as author, e.g. http://host:8000/v1."),
]

EndpointModelOpt = Annotated[
    str | None, typer.Option(help="Model name to ask the endpoint for (default: its first).")
]

ApiKeyEnvOpt = Annotated[
    str, typer.Option(help="Environment variable holding the endpoint's API key, if any.")
]

TopicsOpt = Annotated[
    Path | None, typer.Option(help="Topic file, one a line (default: the study's 100).")
]

NTopicsOpt = Annotated[int | None, typer.Option(help="Use only the first N topics.")]

SeedOpt = Annotated[int, typer.Option(help="Run seed; each request's seed derives from it.")]

BatchOpt = Annotated[int, typer.Option(help="Local author's batch size (part of the design).")]

ConcurrencyOpt = Annotated[int, typer.Option(help="Endpoint requests in flight at once.")]

MaxTokensOpt = Annotated[int, typer.Option(help="Longest reply, in tokens.")]

TemperatureOpt = Annotated[float, typer.Option(help="Sampling temperature (0 = greedy).")]

FinishOpt = Annotated[
    bool, typer.Option(help="Only rewrite the corpus files from the replies written so far.")
]

corpus_command = functools.partial(group_command, corpus_app)


def _author(
    model: str | None,
    author: str | None,
    endpoint: str | None,
    endpoint_model: str | None,
    api_key_env: str,
    batch_size: int,
    concurrency: int,
):
    import os

    from emovec.authoring import AuthoringError, EndpointAuthor, LocalAuthor

    if endpoint:
        if author:
            raise AuthoringError("give either --author or --endpoint, not both")
        api_key = os.environ.get(api_key_env)
        name = endpoint_model or _first_model(endpoint, api_key)
        return EndpointAuthor(endpoint, name, api_key, concurrency)
    return LocalAuthor(load_lm(author or model), batch_size)


def _first_model(url: str, api_key: str | None) -> str:
    """The first model an endpoint lists (for endpoints that serve one model)."""
    from emovec.authoring import AuthoringError
    from emovec.openai_compat import list_models, public_url

    models = list_models(url, api_key)
    if not models:
        raise AuthoringError(f"{public_url(url)} lists no models; name one with --endpoint-model")
    return models[0]


def _report(result) -> None:
    counts = result.counts
    state = "complete" if result.complete else "unfinished (rerun the same command to continue)"
    out.print(
        f"{result.kind}: {counts['accepted']} accepted of {counts['items_seen']} "
        f"({counts['acceptance']:.0%}); rejected {counts['rejected'] or 'none'}; "
        f"{counts['requests_done']}/{result.requests} requests, {state}; in {result.folder}"
    )


@corpus_command("stories")
def corpus_stories(
    out_dir: CorpusOut,
    model: ModelOpt = None,
    author: AuthorOpt = None,
    endpoint: EndpointOpt = None,
    endpoint_model: EndpointModelOpt = None,
    api_key_env: ApiKeyEnvOpt = "OPENAI_API_KEY",
    emotion: Annotated[
        list[str] | None, typer.Option("--emotion", "-e", help="Repeatable; default all 171.")
    ] = None,
    topics: TopicsOpt = None,
    n_topics: NTopicsOpt = None,
    stories_per_topic: Annotated[int, typer.Option(help="Stories per emotion and topic.")] = 12,
    stories_per_request: Annotated[int, typer.Option(help="Stories asked for at once.")] = 1,
    min_words: Annotated[int, typer.Option(help="Shorter stories are rejected.")] = 60,
    max_words: Annotated[int, typer.Option(help="Longer stories are rejected.")] = 180,
    max_new_tokens: MaxTokensOpt = 260,
    temperature: TemperatureOpt = 0.8,
    seed: SeedOpt = 0,
    batch_size: BatchOpt = 8,
    concurrency: ConcurrencyOpt = 4,
    finish: FinishOpt = False,
) -> None:
    """Write emotion stories: emotions x topics x stories per topic, resumable."""
    from emovec import authoring

    if finish:
        _report_finish(out_dir, authoring.STORIES)
        return
    chosen = [catalog.resolve(e) for e in (emotion or [])] or catalog.emotions()
    design = authoring.StoryDesign(
        chosen,
        authoring.load_topics(topics, n_topics),
        stories_per_topic,
        stories_per_request,
        min_words,
        max_words,
    )
    writer = _author(model, author, endpoint, endpoint_model, api_key_env, batch_size, concurrency)
    sampling = authoring.Sampling(max_new_tokens=max_new_tokens, temperature=temperature)
    _report(authoring.write_corpus(out_dir, design, writer, sampling, seed, progress=True))


@corpus_command("neutral")
def corpus_neutral(
    out_dir: CorpusOut,
    model: ModelOpt = None,
    author: AuthorOpt = None,
    endpoint: EndpointOpt = None,
    endpoint_model: EndpointModelOpt = None,
    api_key_env: ApiKeyEnvOpt = "OPENAI_API_KEY",
    topics: TopicsOpt = None,
    n_topics: NTopicsOpt = None,
    dialogues_per_topic: Annotated[int, typer.Option(help="Dialogues per topic.")] = 2,
    min_words: Annotated[int, typer.Option(help="Shorter dialogues are rejected.")] = 30,
    max_words: Annotated[int, typer.Option(help="Longer dialogues are rejected.")] = 300,
    max_new_tokens: MaxTokensOpt = 300,
    temperature: TemperatureOpt = 0.8,
    seed: SeedOpt = 0,
    batch_size: BatchOpt = 8,
    concurrency: ConcurrencyOpt = 4,
    finish: FinishOpt = False,
) -> None:
    """Write emotionally neutral Human/Assistant dialogues (for denoising), resumable."""
    from emovec import authoring

    if finish:
        _report_finish(out_dir, authoring.NEUTRAL)
        return
    design = authoring.NeutralDesign(
        authoring.load_topics(topics, n_topics), dialogues_per_topic, min_words, max_words
    )
    writer = _author(model, author, endpoint, endpoint_model, api_key_env, batch_size, concurrency)
    sampling = authoring.Sampling(max_new_tokens=max_new_tokens, temperature=temperature)
    _report(authoring.write_corpus(out_dir, design, writer, sampling, seed, progress=True))


def _report_finish(folder: Path, kind: str) -> None:
    from emovec import authoring

    counts = authoring.finish(folder, kind)
    out.print(
        f"{kind}: {counts['accepted']} accepted of {counts['items_seen']}; "
        f"{counts['requests_done']} requests written so far; files in {folder}"
    )


@corpus_command("serve")
def corpus_serve(
    model: ModelOpt = None,
    host: HostOpt = "127.0.0.1",
    port: PortOpt = 8000,
    api_key: ApiKeyOpt = None,
) -> None:
    """Serve a model as an OpenAI-compatible chat endpoint (/v1/chat/completions)."""
    from emovec.apps.chat_server import serve

    warn_if_exposed(host, api_key)
    serve(load_lm(model), host=host, port=port, api_key=api_key)
