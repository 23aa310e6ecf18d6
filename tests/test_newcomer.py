"""The README's two commands, as a newcomer types them: the first runs offline with a local checkpoint, exactly
as written after its install steps; the second is what CI runs."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from imagedb.pg.embedded import stop_embedded

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
INSTALL = ["python3 -m venv .venv", ". .venv/bin/activate", "pip install -e ."]


def _two_commands() -> list[str]:
    block = re.search(r"## Two commands.*?```sh\n(.*?)```", README, flags=re.S)
    assert block, "the README has no two-command block"
    commands = [line for line in block.group(1).splitlines() if line.strip() and not line.startswith("#")]
    assert len(commands) == 2, commands
    return commands


@pytest.mark.slow
def test_the_first_command_runs_offline_with_a_local_checkpoint(
    tmp_path: Path, photo_source: Path, tiny_model: str
) -> None:
    """Everything after the install steps runs verbatim in a shell: a fresh HOME with ~/Pictures, the default
    IMAGEDB_HOME under it, IMAGEDB_MODEL set as the block's comment says, and no network at all."""
    first = _two_commands()[0]
    steps = first.split(" && ")
    assert steps[: len(INSTALL)] == INSTALL, first
    job = " && ".join(steps[len(INSTALL) :])
    assert "export IMAGEDB_MODEL=" in README.split("```sh", 2)[1].split("```")[0]
    home = tmp_path / "home"
    shutil.copytree(photo_source, home / "Pictures")
    bin_dir = str(Path(sys.executable).parent)
    dead = "http://127.0.0.1:9"  # nothing listens there: any download attempt fails at once
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "HOME": str(home),
        "IMAGEDB_MODEL": tiny_model,
        "HTTP_PROXY": dead,
        "HTTPS_PROXY": dead,
        "HF_ENDPOINT": dead,
        "LANG": os.environ.get("LANG", "C.UTF-8"),
    }
    try:
        done = subprocess.run(["bash", "-c", job], env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        assert "default: added 12" in done.stdout
        rows = done.stdout.splitlines()
        header = next(i for i, line in enumerate(rows) if line.split()[:2] == ["rank", "score"])
        assert len(rows) - header - 1 == 10  # ten results
        assert "Traceback" not in done.stderr
    finally:
        data = home / ".local" / "share" / "imagedb"
        if (data / "pgdata").exists():
            stop_embedded(data)


def test_ci_runs_the_readme_test_command() -> None:
    second = _two_commands()[1]
    assert "pytest" in second
    assert second in (ROOT / ".ci" / "run").read_text()


CPU_INDEX = "https://download.pytorch.org/whl/cpu"
CPU_STEP = f"pip install torch torchvision --index-url {CPU_INDEX}"


def test_the_cpu_only_route_is_the_first_command_with_both_torch_packages_from_the_cpu_index() -> None:
    """Issue 23: the CPU-only advice named no index, and a CPU torch installed alone did not hold (pip then took a
    torchvision that brought the CUDA torch back). The README writes the route out: torch and torchvision together
    from PyTorch's CPU index (--index-url, so no other index offers a CUDA build), then the first command's steps."""
    section = README.split("**Install size, and the CPU-only route.**", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1, blocks
    (cpu,) = [line for line in blocks[0].splitlines() if line.strip()]
    steps = cpu.split(" && ")
    first = _two_commands()[0].split(" && ")
    assert steps == first[:2] + [CPU_STEP] + first[2:], cpu
    assert "--extra-index-url" not in cpu
    # docs/models.md sends the reader to this section rather than giving a second recipe.
    assert "README.md#two-commands" in (ROOT / "docs" / "models.md").read_text()
