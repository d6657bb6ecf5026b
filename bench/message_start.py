#!/usr/bin/env python3
"""The time from sending a streamed `/v1/messages` request to reading its `message_start` event,
through tierwise translated to chat against `tierwise-fake` (which answers at once), for a 1 KB
and a 1 MB prompt of prose: the median of RUNS after one to warm up, and the `input_tokens`
`message_start` says (docs/benchmarks.md, "Time to `message_start` for a long prompt").

usage: python3 bench/message_start.py [BIN_DIR (target/release)] [RUNS (9)]
after `cargo build --release --workspace`."""
import http.client
import json
import shutil
import subprocess
import sys
import tempfile
import time

bin_dir = sys.argv[1] if len(sys.argv) > 1 else "target/release"
runs = int(sys.argv[2]) if len(sys.argv) > 2 else 9

def start(args, env=None):
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    line = proc.stdout.readline()
    assert "http://" in line, line
    return proc, line.strip().split()[-1]

fake, fake_url = start([f"{bin_dir}/tierwise-fake", "--no-record"])
work = tempfile.mkdtemp()
config = f"""
[server]
listen = "127.0.0.1:0"
max_body_bytes = 8000000

[ledger]
url = "sqlite://{work}/ledger.db"

[providers.vllm]
base_url = "{fake_url}/v1"
timeout = {{ first_byte_ms = 30000, total_ms = 60000 }}
health = {{ enabled = false }}

[tiers]
local = {{ provider = "vllm", model = "mistral-7b" }}

[routes.summarize]
kind = "summarization"
tiers = ["local"]
"""
open(f"{work}/tierwise.toml", "w").write(config)
gw, gw_url = start([f"{bin_dir}/tierwise", "serve", "--config", f"{work}/tierwise.toml"])
host = gw_url.split("//")[1]

# Prose of many words, as a long document pasted into a prompt.
words = "The quarterly report shows revenue grew while costs in the northern region fell sharply; see table 4 for details. ".split()
def prompt(nbytes):
    out, i = [], 0
    size = 0
    while size < nbytes:
        w = words[i % len(words)] + (str(i % 97) if i % 13 == 0 else "")
        out.append(w); size += len(w) + 1; i += 1
    return " ".join(out)

def time_to_message_start(text):
    body = json.dumps({"model": "summarize", "max_tokens": 16, "stream": True,
                       "messages": [{"role": "user", "content": text}]})
    conn = http.client.HTTPConnection(host)
    started = time.perf_counter()
    conn.request("POST", "/v1/messages", body=body, headers={"content-type": "application/json", "anthropic-version": "2023-06-01"})
    response = conn.getresponse()
    assert response.status == 200, response.read()
    seen = b""
    while b"message_start" not in seen:
        seen += response.read1(65536)
    elapsed = time.perf_counter() - started
    rest = response.read()
    start_data = (seen + rest).split(b"event: message_start\ndata: ")[1].split(b"\n")[0]
    conn.close()
    return elapsed, json.loads(start_data)["message"]["usage"]["input_tokens"]

try:
    for label, n in [("1 KB", 1000), ("1 MB", 1_000_000)]:
        text = prompt(n)
        time_to_message_start(text)  # warm: the tokenizer's tables
        times, said = [], None
        for _ in range(runs):
            t, said = time_to_message_start(text)
            times.append(t)
        times.sort()
        print(f"{label}: median {times[len(times)//2]*1000:.1f} ms (min {times[0]*1000:.1f}, max {times[-1]*1000:.1f}); message_start input_tokens {said}")
finally:
    for proc in (gw, fake):
        proc.terminate()
        proc.wait()
    shutil.rmtree(work)
