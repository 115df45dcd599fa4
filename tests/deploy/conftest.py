"""Where tests/deploy finds kustomize and promtool: the tools directory
scripts/install-deps.sh installs them into, then PATH. In CI (CI=true)
a missing tool fails the test instead of skipping it."""
import os
import shutil
from pathlib import Path

import pytest

TOOLS_BIN = Path(os.environ.get("OBX_TOOLS_DIR", Path.home() / ".cache" / "outboxd" / "tools")) / "bin"


def find_tool(name):
    """The tool's path, or None. install-deps.sh's copy wins over PATH, so the
    pinned version is what CI and developers run."""
    local = TOOLS_BIN / name
    if os.access(local, os.X_OK):
        return str(local)
    return shutil.which(name)


def require_tool(name):
    path = find_tool(name)
    if path:
        return path
    msg = f"{name} not found on PATH or in {TOOLS_BIN}: run scripts/install-deps.sh"
    if os.environ.get("CI") == "true":
        pytest.fail(msg)
    pytest.skip(msg)


@pytest.fixture(scope="session")
def kustomize():
    return require_tool("kustomize")


@pytest.fixture(scope="session")
def promtool():
    return require_tool("promtool")
