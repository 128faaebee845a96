"""Check corpus v2 files against the design's gates while writing them.

    python scripts/check_corpus_v2.py stories FILE.jsonl [...]   # emotion stories
    python scripts/check_corpus_v2.py neutral FILE.jsonl          # neutral stories
    python scripts/check_corpus_v2.py messages FILE.jsonl         # other-style held-out texts
    python scripts/check_corpus_v2.py dialogues FILE.jsonl [...]  # neutral dialogues
    python scripts/check_corpus_v2.py plan EMOTION [...]          # the cells to write

Prints every problem (and missing cells for the emotions present); exit status 1 if any.
"""

from __future__ import annotations

import sys
from pathlib import Path

from emovec import catalog
from emovec.corpus import read_jsonl
from emovec.corpus_checks import (
    design_v2,
    dialogue_problems,
    expected_narration,
    message_problems,
    missing_cells,
    near_duplicate_pairs,
    neutral_story_problems,
    story_problems,
)


def main(kind: str, paths: list[str]) -> int:
    design = design_v2()
    if kind == "plan":
        for emotion in paths:
            for topic in design["topics"]:
                print(f"{emotion}\t{expected_narration(emotion, topic, design['topics'])}\t{topic}")
        return 0
    records = [r for p in paths for r in read_jsonl(Path(p))]
    if kind == "stories":
        problems = story_problems(records, design)
        present = [e for e in catalog.emotions() if any(r.get("emotion") == e for r in records)]
        problems += missing_cells(records, present, design["topics"])
    elif kind == "neutral":
        problems = neutral_story_problems(records, design)
    elif kind == "dialogues":
        problems = dialogue_problems(records)
    elif kind == "messages":
        present = {r.get("emotion") for r in records}
        problems = [
            p
            for p in message_problems(records)
            if p.split(":")[0].strip("'") in present or not p.startswith("'")
        ]
    else:
        print(f"unknown kind {kind!r}: choose stories, neutral or messages")
        return 2
    texts = [
        str(r.get("text") or " ".join(str(t.get("content", "")) for t in r.get("turns") or []))
        for r in records
    ]
    problems += [
        f"near-duplicate of an earlier text: record {i}" for i in near_duplicate_pairs(texts)
    ]
    for p in problems:
        print(p)
    print(f"{len(records)} records, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    if len(sys.argv) < 3:
        print(__doc__)
        sys.exit(2)
    sys.exit(main(sys.argv[1], sys.argv[2:]))
