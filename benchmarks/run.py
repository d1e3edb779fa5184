"""calicolab benchmarks: ``python benchmarks/run.py``. Prints figures; asserts nothing.

* model: loading and validating the settings (done once per host per run);
* render: rendering every file of the lab;
* render-cli: the ``python -m calicolab render`` command end to end (interpreter start included).
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from calicolab.model import load_defaults, load_lab  # noqa: E402
from calicolab.render import render_all  # noqa: E402


def measure(label: str, function, repeat: int) -> None:
    function()  # warm-up (template compilation, imports)
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        samples.append(time.perf_counter() - start)
    samples.sort()
    print(f"{label:<12} n={repeat:<4} median {statistics.median(samples) * 1000:8.2f} ms"
          f"   p90 {samples[int(len(samples) * 0.9) - 1] * 1000:8.2f} ms   min {samples[0] * 1000:8.2f} ms")


def main() -> None:
    defaults = load_defaults()
    lab = load_lab(defaults)
    measure("model", lambda: load_lab(defaults), 200)
    measure("render", lambda: render_all(lab), 200)
    with tempfile.TemporaryDirectory() as out:
        measure("render-cli", lambda: subprocess.run([sys.executable, "-m", "calicolab", "render", out],
                                                     check=True, capture_output=True), 10)


if __name__ == "__main__":
    main()
