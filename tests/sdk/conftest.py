"""Starts the real tierwise binary against two `tierwise-fake` upstreams (local and API) and hands
tests an official OpenAI SDK client pointed at the gateway. Binaries come from TIERWISE_BIN /
TIERWISE_FAKE_BIN, or from target/debug as `cargo build --workspace` leaves them."""

import json
import os
import subprocess
import urllib.request
from pathlib import Path

import openai
import pytest

ROOT = Path(__file__).resolve().parents[2]
CLIENT_KEY = "tw-sdk-client-key"
# A named key with 2 requests a minute, for the rate-limit test.
LIMITED_KEY = "tw-sdk-limited-key"
LOCAL_KEY = "sk-local-secret"


def _binary(env_name: str, name: str) -> str:
    path = os.environ.get(env_name) or str(ROOT / "target" / "debug" / name)
    if not Path(path).exists():
        pytest.exit(f"{path} is missing: run `cargo build --workspace` first", returncode=2)
    return path


def _start(args, env=None):
    """Starts a process that prints '... http://ADDR' as its first stdout line; returns (proc, url)."""
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    line = proc.stdout.readline()
    if "http://" not in line:
        proc.kill()
        raise RuntimeError(f"{args[0]} did not start: {line!r}")
    return proc, line.strip().split()[-1]


class Fake:
    def __init__(self):
        self.proc, self.url = _start([_binary("TIERWISE_FAKE_BIN", "tierwise-fake"), "--listen", "127.0.0.1:0"])

    @property
    def base_url(self):
        return self.url + "/v1"

    def behave(self, **behavior):
        request = urllib.request.Request(
            self.url + "/_fake/behavior",
            data=json.dumps(behavior).encode(),
            headers={"content-type": "application/json"},
            method="POST",
        )
        urllib.request.urlopen(request).close()

    def requests(self):
        with urllib.request.urlopen(self.url + "/_fake/requests") as response:
            return json.load(response)

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=10)


CONFIG = """
[server]
listen = "127.0.0.1:0"
api_keys = ["{client_key}"]
max_body_bytes = 100000

[ledger]
url = "sqlite://ledger.db"

# Responses kept for their next turn (previous_response_id), retrieve and delete.
[responses]
store = true

[keys.sdk_limited]
key = "{limited_key}"
rpm = 2

# No probes and a breaker that does not open: each test sets the faults it needs, and what one test
# did to a fake must not decide what the next one sees.
[providers.vllm]
base_url = "{local}"
api_key = "{local_key}"
timeout = {{ connect_ms = 500, first_byte_ms = 1000, total_ms = 3000 }}
health = {{ enabled = false }}
breaker = {{ failures = 1000000, min_requests = 1000000 }}

[providers.openai]
base_url = "{api}"
api_key = "sk-api-secret"
timeout = {{ first_byte_ms = 1000, total_ms = 3000 }}
health = {{ enabled = false }}
breaker = {{ failures = 1000000, min_requests = 1000000 }}

# The API fake serves OpenAI's Responses API too (POST /v1/responses): passed through to it.
[providers.openai_native]
base_url = "{api}"
api_key = "sk-api-secret"
responses = true
timeout = {{ first_byte_ms = 1000, total_ms = 3000 }}
health = {{ enabled = false }}
breaker = {{ failures = 1000000, min_requests = 1000000 }}

# The API fake speaks Anthropic's Messages API too (POST /v1/messages).
[providers.anthropic]
api = "anthropic"
base_url = "{api}"
api_key = "sk-ant-secret"
timeout = {{ first_byte_ms = 1000, total_ms = 3000 }}
health = {{ enabled = false }}
breaker = {{ failures = 1000000, min_requests = 1000000 }}

# ... and Azure OpenAI's deployments (the resource is the fake's root).
[providers.azure]
api = "azure"
base_url = "{api_root}"
api_key = "azure-secret"
timeout = {{ first_byte_ms = 1000, total_ms = 3000 }}
health = {{ enabled = false }}
breaker = {{ failures = 1000000, min_requests = 1000000 }}

[tiers]
claude      = {{ provider = "anthropic", model = "claude-sonnet-4-5" }}
azure       = {{ provider = "azure", model = "gpt-4o", deployment = "gpt4o-prod" }}
azure_embed = {{ provider = "azure", model = "corp-embedder", deployment = "embed-prod", base_model = "text-embedding-3-large" }}
local       = {{ provider = "vllm", model = "mistral-7b", max_tokens = 256 }}
api_fast    = {{ provider = "openai", model = "gpt-4o-mini" }}
api_native  = {{ provider = "openai_native", model = "gpt-4o-mini" }}
embed_local = {{ provider = "vllm", model = "nomic-embed-text" }}
# Its own tier for the rate-limit test: a 429 rests the tier that met it, and no other test's.
api_limited = {{ provider = "openai", model = "gpt-4o-mini" }}
api_cached  = {{ provider = "openai", model = "gpt-4o-mini" }}

[routes.classification]
kind = "classification"
tiers = ["local", "api_fast"]
output = {{ labels = ["billing", "technical", "general"] }}

[routes.embed]
kind = "embedding"
tiers = ["embed_local"]

[routes.native_first]
kind = "agentic"
tiers = ["api_native", "local"]

[routes.api_only]
kind = "agentic"
tiers = ["api_fast"]

[routes.azure_fallback]
kind = "agentic"
tiers = ["local", "azure"]

[routes.azure_vectors]
kind = "embedding"
tiers = ["embed_local", "azure_embed"]

[routes.claude_fallback]
kind = "agentic"
tiers = ["local", "claude"]

# Anthropic's Messages API in front, passed through to the Anthropic tier first.
[routes.claude_first]
kind = "agentic"
tiers = ["claude", "local"]

# Kept answers, for the cache test: its own tier, so no other test's requests fill it.
[routes.cached]
kind = "chat"
tiers = ["api_cached"]
cache = {{ ttl = "1h" }}

[routes.rate_limited]
kind = "agentic"
tiers = ["api_limited"]

# A budget already spent (of nothing) on a route with no local tier to serve instead.
[routes.budget_spent]
kind = "agentic"
tiers = ["api_fast"]
budget = {{ monthly_usd = 0, on_exhausted = "local_only" }}
"""


@pytest.fixture(scope="session")
def upstreams():
    local, api = Fake(), Fake()
    yield local, api
    local.stop()
    api.stop()


@pytest.fixture(scope="session")
def gateway_url(upstreams, tmp_path_factory):
    local, api = upstreams
    path = tmp_path_factory.mktemp("gateway") / "tierwise.toml"
    path.write_text(CONFIG.format(
            client_key=CLIENT_KEY, limited_key=LIMITED_KEY, local_key=LOCAL_KEY, local=local.base_url, api=api.base_url, api_root=api.url
        ))
    env = dict(os.environ, TIERWISE_LOG="warn")
    proc, url = _start([_binary("TIERWISE_BIN", "tierwise"), "serve", "--config", str(path)], env=env)
    yield url
    proc.terminate()
    assert proc.wait(timeout=15) == 0, "the gateway did not stop cleanly on SIGTERM"


@pytest.fixture
def fakes(upstreams):
    """The two fakes, reset to a healthy default before each test."""
    for fake in upstreams:
        fake.behave()
    return upstreams


@pytest.fixture
def client(gateway_url):
    return openai.OpenAI(base_url=gateway_url + "/v1", api_key=CLIENT_KEY, max_retries=0)
