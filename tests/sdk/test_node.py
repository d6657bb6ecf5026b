"""The official OpenAI Node SDK (tests/node, its version pinned in package-lock.json) against the
same gateway and fakes as the Python tests: `node --test` runs tests/node/sdk.mjs with their
addresses in its environment. `npm ci` installs the locked SDK on first use (scripts/test runs it
too)."""

import os
import shutil
import subprocess

import pytest

from conftest import CLIENT_KEY, ROOT

NODE_DIR = ROOT / "tests" / "node"


def test_openai_node_sdk_against_the_gateway(gateway_url, fakes):
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.fail("the Node SDK tests need node (20 or later) and npm on PATH")
    if not (NODE_DIR / "node_modules" / "openai").is_dir():
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR, check=True)
    local, api = fakes
    # The gateway's config (conftest.CONFIG) keeps responses (`[responses] store = true`) and has
    # the route `native_first`: OpenAI's Responses API passed through, then the local tier.
    env = dict(
        os.environ, TIERWISE_URL=gateway_url, TIERWISE_KEY=CLIENT_KEY, FAKE_LOCAL_URL=local.url,
        FAKE_API_URL=api.url,
    )
    run = subprocess.run(
        [node, "--test", "--test-concurrency=1", "sdk.mjs"],
        cwd=NODE_DIR, env=env, capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
