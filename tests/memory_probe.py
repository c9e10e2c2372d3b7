"""How much a refusal costs in memory: run it in a fresh interpreter and read its peak resident size."""
from __future__ import annotations

import subprocess
import sys


def peak_growth_of_refusal(imports: str, call: str, error: str, path, timeout: float) -> tuple[str, float]:
    """Run ``call(path)`` after ``imports`` in a new process, printing ``refused: <message>`` when it raises
    ``error``; return what it printed and how many MB its peak memory grew during the call."""
    code = (f"import resource, sys\n{imports}\n"
            "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
            f"try:\n    {call}(sys.argv[1])\nexcept {error} as e:\n    print('refused:', e)\n"
            "print('grew_kb', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)\n")
    result = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=timeout)
    assert "grew_kb" in result.stdout, result.stdout + result.stderr
    return result.stdout, int(result.stdout.split("grew_kb")[1]) / 1024
