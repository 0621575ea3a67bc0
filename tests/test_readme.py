"""The README's examples run as printed against a zero-configuration server.

The server is ``kgents serve`` with nothing but a working directory: SQLite in ``./.kgents``, the
embedded nats-server, the demo LLM. Each shell block of the README after the install commands
runs in bash with ``set -e``; curl fails on any HTTP error except where the README says one is
expected (cancel with no turn running, 409) or a follow ends at its ``--max-time``.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from kgents import __version__
from tests.support.servers import free_port, wait_healthy

ROOT = Path(__file__).resolve().parents[1]

PRELUDE = """
set -euo pipefail
curl() {
  local rc=0
  command curl --fail-with-body --silent --show-error "$@" || rc=$?
  if [[ $rc == 0 || $rc == 28 ]]; then return 0; fi          # 28: --max-time ended a follow
  if [[ $rc == 22 && "$*" == */cancel* ]]; then return 0; fi  # 409: no turn was running
  return $rc
}
"""


def readme_blocks() -> list[str]:
    """The ``sh`` blocks from the Quickstart through the command line (its synopsis is a
    ``text`` block: it is not run)."""
    text = (ROOT / "README.md").read_text()
    usage = text[text.index("## Quickstart") : text.index("### More surfaces")]
    blocks = re.findall(r"```sh\n(.*?)```", usage, flags=re.DOTALL)
    assert "make run" in blocks[0] and "make test" in blocks[0]
    assert any("kgents tenant update" in block for block in blocks)
    return blocks[1:]


@pytest.mark.slow
def test_readme_examples_run_as_printed(tmp_path: Path) -> None:
    (tmp_path / ".venv").symlink_to(Path(sys.executable).parents[1])
    port = free_port()
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("KGENTS_", "OPENAI_", "ANTHROPIC_"))
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "kgents", "serve", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    try:
        wait_healthy(f"http://127.0.0.1:{port}")
        script = PRELUDE + "\n".join(readme_blocks()).replace("127.0.0.1:8000", f"127.0.0.1:{port}")
        result = subprocess.run(
            ["bash", "-c", script],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        assert "event: complete" in result.stdout
        assert '"role":"assistant"' in result.stdout
        assert not re.search(r"kg_live_[A-Za-z0-9]{32}", result.stdout)  # prefixes only
        assert f"kgents {__version__}" in result.stdout and "status:    suspended" in result.stdout
    finally:
        server.terminate()
        output, _ = server.communicate(timeout=30)
    # uvicorn re-raises the SIGTERM it handled, after a clean shutdown.
    assert server.returncode in (0, -15), output.decode()[-3000:]
    assert "Application shutdown complete." in output.decode()
    assert (tmp_path / ".kgents" / "jetstream").is_dir()
