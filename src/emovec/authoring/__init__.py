"""Writing a corpus with a model as author: the study's design, resumable, filtered, seeded.

The study had the studied model write its own stories (emotions x topics x stories per topic)
and its own neutral dialogues. Here any author can write them: the studied model, another
local model, or an OpenAI-compatible chat endpoint.

A run is a fixed, ordered list of requests (one prompt each, asking for one or more stories).
Its output folder holds (see docs/corpus.md):

- ``<kind>.replies.jsonl``: the raw reply of every finished request, appended and fsynced as
  requests finish. It is the only state of a run: a killed run restarts from it, dropping a
  half-written last line.
- ``<kind>.jsonl`` (``stories.jsonl`` / ``neutral.jsonl``) and ``<kind>.rejects.jsonl``: the
  accepted items and the rejected ones with their reason, derived from the replies in request
  order when the run finishes, so they do not depend on the order requests finished in.
- ``manifest.json``: author, prompts (version and text), parameters, counts, content hash.

Where each part lives:

- :mod:`~emovec.authoring.design`: prompts, topics, :class:`StoryDesign` /
  :class:`NeutralDesign` and their ordered :class:`Request` list, seeds, :class:`AuthoringError`.
- :mod:`~emovec.authoring.filters`: splitting and cleaning replies, the quality filters,
  near-duplicates, :func:`select`.
- :mod:`~emovec.authoring.authors`: :class:`LocalAuthor` (through :mod:`emovec.generation`) and
  :class:`EndpointAuthor` (through :class:`emovec.openai_compat.ChatEndpoint`).
- :mod:`~emovec.authoring.store`: the folder's files: :class:`ReplyLog`, atomic writes,
  manifest.
- :mod:`~emovec.authoring.run`: :func:`write_corpus` and :func:`finish`.
"""

from emovec.authoring.authors import RESUME_ADVICE, EndpointAuthor, LocalAuthor, Sampling
from emovec.authoring.design import (
    KINDS,
    NEUTRAL,
    PROMPTS_VERSION,
    STORIES,
    TEMPLATE_PREFIX,
    AuthoringError,
    NeutralDesign,
    Request,
    StoryDesign,
    derive_seed,
    load_topics,
    prompts,
    templates_of,
)
from emovec.authoring.filters import (
    EVERYDAY_SENSES,
    Filters,
    NearDuplicates,
    any_emotion_word,
    check_dialogue,
    check_story,
    clean_story,
    emotion_word_pattern,
    items_of,
    junk_reason,
    parse_dialogue,
    select,
    split_stories,
    trim_unfinished,
)
from emovec.authoring.run import RunResult, finish, write_corpus
from emovec.authoring.store import (
    DISK_FULL,
    FORMAT,
    MANIFEST,
    ReplyLog,
    read_manifest,
    records_hash,
    write_json_atomic,
    write_jsonl_atomic,
)

# Shared endpoint helpers, re-exported for callers that still import them from here.
from emovec.openai_compat import need_extra as need_endpoint_extra
from emovec.openai_compat import public_url

__all__ = [
    "DISK_FULL",
    "EVERYDAY_SENSES",
    "FORMAT",
    "KINDS",
    "MANIFEST",
    "NEUTRAL",
    "PROMPTS_VERSION",
    "RESUME_ADVICE",
    "STORIES",
    "TEMPLATE_PREFIX",
    "AuthoringError",
    "EndpointAuthor",
    "Filters",
    "LocalAuthor",
    "NearDuplicates",
    "NeutralDesign",
    "ReplyLog",
    "Request",
    "RunResult",
    "Sampling",
    "StoryDesign",
    "any_emotion_word",
    "check_dialogue",
    "check_story",
    "clean_story",
    "derive_seed",
    "emotion_word_pattern",
    "finish",
    "items_of",
    "junk_reason",
    "load_topics",
    "need_endpoint_extra",
    "parse_dialogue",
    "prompts",
    "public_url",
    "read_manifest",
    "records_hash",
    "select",
    "split_stories",
    "templates_of",
    "trim_unfinished",
    "write_corpus",
    "write_json_atomic",
    "write_jsonl_atomic",
]
