"""How well each case study's rule grader agrees with hand-labelled replies.

    python scripts/grader_accuracy.py [--json benchmarks/results/grader-accuracy.json]
                                      [--update-scenarios]

Reads ``benchmarks/grader_labels/<scenario>.jsonl`` (real model replies, each labelled by a
person; see :mod:`emovec.studies.grader_check`), runs the scenario's rule grader on each
reply (the reward-hacking grader runs the code in the sandbox), and prints accuracy,
precision and recall with Wilson intervals, then every disagreement. ``--update-scenarios``
stores the accuracy in the bundled scenario files (``rule_accuracy``), which decides whether
a study leads with the judge's rate. docs/studies.md quotes the table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from emovec.files import write_atomic
from emovec.studies import load_scenario
from emovec.studies.grader_check import grader_agreement, load_labels

ROOT = Path(__file__).resolve().parent.parent
LABELS = ROOT / "benchmarks" / "grader_labels"
SCENARIOS = ROOT / "src" / "emovec" / "data" / "studies"


def fmt(share: dict) -> str:
    if share["rate"] is None:
        return "-"
    lo, hi = share["ci95"]
    return f"{share['rate']:.2f} ({lo:.2f}-{hi:.2f}), {share['k']}/{share['n']}"


def with_field(text: str, key: str, value: dict) -> str:
    """A scenario file's text with ``key`` set to ``value`` as its last field, on one line;
    the rest of the file is left as written, so the diff shows only the measurement."""
    lines = text.rstrip().splitlines()
    body = [line for line in lines[:-1] if not line.startswith(f'  "{key}":')]
    body[-1] = body[-1].rstrip(",") + ","
    result = "\n".join([*body, f'  "{key}": {json.dumps(value, ensure_ascii=False)}', "}"]) + "\n"
    json.loads(result)  # still one valid JSON object
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=None)
    parser.add_argument("--update-scenarios", action="store_true")
    args = parser.parse_args()
    results = []
    for path in sorted(LABELS.glob("*.jsonl")):
        results.append(grader_agreement(load_scenario(path.stem), load_labels(path)))
    columns = ["study", "rule grader", "replies", "behaviour (hand labels)", "accuracy"]
    print("| " + " | ".join([*columns, "precision", "recall"]) + " |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['scenario']} | {r['grader']} | {r['n']} | {r['human_positive']} | "
            f"{fmt(r['accuracy'])} | {fmt(r['precision'])} | {fmt(r['recall'])} |"
        )
    for r in results:
        for d in r["disagreements"]:
            where = f"{r['scenario']} {d['item']}"
            print(f"- {where}: rule {d['rule']}, hand {d['human']}: {d['reply']!r}")
    if args.json:
        write_atomic(args.json, json.dumps(results, indent=1, ensure_ascii=False) + "\n")
    if args.update_scenarios:
        for r in results:
            path = SCENARIOS / f"{r['scenario']}.json"
            measured = {
                "accuracy": r["accuracy"]["rate"],
                "ci95": [round(x, 3) for x in r["accuracy"]["ci95"]],
                "n": r["n"],
                "human_positive": r["human_positive"],
                "labels": f"benchmarks/grader_labels/{r['scenario']}.jsonl",
            }
            write_atomic(path, with_field(path.read_text("utf-8"), "rule_accuracy", measured))


if __name__ == "__main__":
    main()
