"""The curated corpus follows the study's rules wherever a program can check them."""

import json
import re
from collections import Counter

import pytest

from emovec import catalog
from emovec.corpus import CorpusError, load_corpus


def own_word_pattern(emotion: str) -> re.Pattern:
    """The emotion word and its simple inflections (happy, happily, happiness, ...)."""
    forms = [re.escape(emotion)] + (
        [re.escape(emotion[:-1] + "i")] if emotion.endswith("y") else []
    )
    suffix = r"(?:s|ly|ness|ed|d|er|est|ful|ty|ily|ment)?"
    return re.compile(r"\b(?:" + "|".join(forms) + r")" + suffix + r"\b")


def test_every_emotion_has_at_least_four_stories(corpus):
    counts = Counter(s["emotion"] for s in corpus.stories)
    assert set(counts) == set(catalog.emotions())
    assert min(counts.values()) >= 4


def test_stories_never_name_their_own_emotion(corpus):
    offenders = []
    for s in corpus.stories:
        text = s["text"].lower()
        if " " in s["emotion"]:
            text = text.replace("-", " ")
        if own_word_pattern(s["emotion"]).search(text):
            offenders.append((s["emotion"], s["text"][:60]))
    assert offenders == []


def test_pattern_catches_inflections():
    assert own_word_pattern("happy").search("pure happiness")
    assert own_word_pattern("calm").search("she calmly said")
    assert not own_word_pattern("mad").search("he made tea")


def test_stories_are_single_paragraphs_of_story_length_on_study_topics(corpus):
    topics = set(catalog.topics())
    for s in corpus.stories:
        words = len(s["text"].split())
        assert 80 <= words <= 180, (s["emotion"], words)
        assert "\n" not in s["text"]
        assert s["topic"] in topics
        assert s["narration"] in {"first", "third"}
    narration = Counter(s["narration"] for s in corpus.stories)
    assert min(narration.values()) > 0.3 * len(corpus.stories)  # both voices, mixed


def test_no_duplicate_texts(corpus):
    texts = [s["text"].strip().lower() for s in corpus.stories]
    assert len(texts) == len(set(texts))
    dialogues = [json.dumps(d["turns"]).lower() for d in corpus.neutral]
    assert len(dialogues) == len(set(dialogues))


def test_neutral_dialogues_are_many_on_topic_and_free_of_emotion_words(corpus):
    assert len(corpus.neutral) >= 150
    topics = set(catalog.topics())
    words = [re.compile(r"\b" + re.escape(e) + r"\b") for e in catalog.emotions()]
    for d in corpus.neutral:
        assert d["topic"] in topics
        assert [t["role"] for t in d["turns"]][:2] == ["user", "assistant"]
        text = " ".join(t["content"] for t in d["turns"]).lower()
        assert not [w.pattern for w in words if w.search(text)]
    rendered = corpus.neutral_texts()[0]
    assert rendered.startswith("Human: ") and "\n\nAssistant: " in rendered


def test_corpus_hash_is_stable_and_content_sensitive(corpus):
    again = load_corpus("curated-v1")
    assert again.hash == corpus.hash
    assert corpus.subset(["happy"]).hash != corpus.hash


def test_corpus_folder_and_file_load(tmp_path):
    (tmp_path / "stories.jsonl").write_text(
        json.dumps({"emotion": "Happy", "text": "She grinned."}) + "\n"
    )
    (tmp_path / "neutral.jsonl").write_text(json.dumps({"text": "Human: hi\n\nAssistant: hello"}))
    c = load_corpus(tmp_path)
    assert c.emotions == ["happy"] and len(c.neutral) == 1
    assert load_corpus(tmp_path / "stories.jsonl").neutral == []


def test_bad_corpus_records_name_file_and_line(tmp_path):
    bad = tmp_path / "s.jsonl"
    bad.write_text('{"emotion": "happy", "text": "ok"}\n{not json}\n')
    with pytest.raises(CorpusError, match=r"s.jsonl:2"):
        load_corpus(bad)
    bad.write_text('{"emotion": "hapy", "text": "ok"}\n')
    with pytest.raises(CorpusError, match="happy"):
        load_corpus(bad)
    with pytest.raises(CorpusError, match="not found"):
        load_corpus(tmp_path / "missing")
