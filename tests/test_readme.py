"""The README's quick start runs as written."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_quick_start_runs(capsys) -> None:
    quick_start = README.read_text().split("## Quick start", 1)[1]
    code = re.search(r"```python\n(.*?)```", quick_start, re.DOTALL).group(1)
    assert "import fastoptim as optim" in code
    exec(compile(code, "README quick start", "exec"), {})
    assert capsys.readouterr().out.count("learned A = ") == 10
