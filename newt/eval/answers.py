"""How one generated answer compares with its reference: the SFT generation metrics of text and multimodal
evaluation alike (newt.evaluate, newt.vision_eval)."""

from __future__ import annotations

import re


def answer_scores(output: str, reference: str, answer_regex: str | None = None) -> dict[str, bool]:
    """How one generated answer compares with the reference (both stripped of surrounding whitespace)."""
    output, reference = output.strip(), reference.strip()
    scores = {"exact_match": output == reference, "contains": reference in output}
    if answer_regex is not None:
        found = re.search(answer_regex, output)
        extracted = (found.group(1) if found.re.groups else found.group(0)) if found else None
        scores["regex_match"] = extracted is not None and extracted.strip() == reference
    return scores
