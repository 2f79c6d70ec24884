"""Writing a measurement's JSON report and echoing its summary (the tabletop measurement CLIs)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_report(path: str | Path, report: dict[str, Any], leave_out_of_summary: str) -> None:
    """Write ``report`` as indented JSON to ``path`` (folders made) and print it without the bulky key."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    print(json.dumps({k: v for k, v in report.items() if k != leave_out_of_summary}, indent=1))
