"""Printing a benchmark's results, shared by the benchmarks."""

from __future__ import annotations

import json
from typing import Any, Dict


def print_results(results: Dict[str, Any], json_path: str = "") -> Dict[str, Any]:
    """One aligned ``name  value`` line per result (floats to 4 significant
    digits; the ``config`` entry is left out), and the whole dict as JSON in
    ``json_path`` when given."""
    width = max(map(len, results))
    for key, value in results.items():
        if key != "config":
            print(f"{key:<{width}}  {value:.4g}" if isinstance(value, float) else f"{key:<{width}}  {value}")
    if json_path:
        with open(json_path, "w") as f:
            json.dump(results, f, indent=2)
    return results
