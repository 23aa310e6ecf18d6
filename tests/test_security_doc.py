"""docs/security.md backs each line of the threat model with a test name: every name it cites must exist."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_test_the_threat_model_cites_exists() -> None:
    text = (ROOT / "docs" / "security.md").read_text()
    cited = set(re.findall(r"`(test_\w+\.py)::(test_\w+)`", text))
    assert len(cited) >= 30
    missing = [
        f"{file}::{name}"
        for file, name in sorted(cited)
        if not re.search(rf"^def {name}\(", (ROOT / "tests" / file).read_text(), flags=re.M)
    ]
    assert missing == []
