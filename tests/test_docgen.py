"""docs/reference.md is generated from the schema and must match it."""

from __future__ import annotations

from pathlib import Path

from newt import docgen
from newt.config import iter_fields

ROOT = Path(__file__).resolve().parents[1]


def test_reference_is_up_to_date() -> None:
    current = (ROOT / "docs" / "reference.md").read_text(encoding="utf-8")
    assert current == docgen.render(), "docs/reference.md is out of date with newt/config.py: run `make docs`"


def test_reference_lists_every_field_with_type_default_and_stages() -> None:
    text = docgen.render()
    for path, info, _type, stages in iter_fields():
        [row] = [line for line in text.splitlines() if line.startswith(f"| `{path}` |")]
        cells = [c.strip() for c in row.split(" | ")]
        assert cells[3] == (", ".join(stages) or "—"), path
        assert info.description and info.description.split("`")[0][:20] in row, path
    lora_r = next(line for line in text.splitlines() if line.startswith("| `lora_r` |"))
    assert lora_r.startswith("| `lora_r` | `int` | 8 | trained | LoRA rank.")
    assert "| `schedule` | `str \\| null` | null | — |" in text


def test_check_mode_fails_on_a_stale_file(tmp_path: Path, capsys) -> None:
    out = tmp_path / "reference.md"
    out.write_text("stale\n")
    assert docgen.main(["--output", str(out), "--check"]) == 1
    assert "make docs" in capsys.readouterr().err
    assert docgen.main(["--output", str(out)]) == 0
    assert docgen.main(["--output", str(out), "--check"]) == 0
