#!/usr/bin/env python3
"""tierwise's load benchmark. Every scenario is measured DIRECT (wrk -> fake upstream) and THROUGH
tierwise (wrk -> tierwise -> the same fake), and where it applies through nginx (the floor for any
HTTP hop) and LiteLLM's proxy, in one run, alternating targets round by round; medians of the rounds
are reported. The load generator is wrk; the upstream is tests/support's fake (`--no-record`).

Run it with bench/run, which installs wrk, nginx and LiteLLM and builds the release binaries first.
"""

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RELEASE = ROOT / "target" / "release"
KEY = "bench-key"
# A named key with rate limits, for the limits scenario.
LIMITED_KEY = "bench-limited-key"
TICK = os.sysconf("SC_CLK_TCK")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, popen=None, log=None, deadline=120.0):
    until = time.time() + deadline
    while time.time() < until:
        if popen is not None and popen.poll() is not None:
            text = Path(log).read_text() if log else ""
            raise RuntimeError(f"{popen.args[0]} exited with {popen.returncode} before listening:\n{text}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port} after {deadline}s")


class Proc:
    """A server process: started, waited for, measured through /proc, stopped."""

    def __init__(self, name, args, port, env=None, log=None):
        self.name = name
        self.port = port
        out = open(log, "w") if log else subprocess.DEVNULL
        self.popen = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env)
        wait_port(port, self.popen, log)

    def cpu_seconds(self):
        """utime + stime of the process and its children threads (and its worker processes)."""
        total = 0.0
        for pid in [self.popen.pid] + self.children():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / TICK
            except (FileNotFoundError, IndexError, ValueError):
                pass
        return total

    def children(self):
        try:
            out = subprocess.run(["pgrep", "-P", str(self.popen.pid)], capture_output=True, text=True).stdout
            return [int(p) for p in out.split()]
        except OSError:
            return []

    def status_mb(self, field):
        """A /proc status figure (VmRSS, VmHWM) summed over the process and its worker processes."""
        total = 0
        for pid in [self.popen.pid] + self.children():
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith(field + ":"):
                        total += int(line.split()[1])
            except FileNotFoundError:
                pass
        return total / 1024

    def peak_rss_mb(self):
        return self.status_mb("VmHWM")

    def rss_mb(self):
        return self.status_mb("VmRSS")

    def stop(self):
        self.popen.terminate()
        try:
            self.popen.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.popen.kill()


def wrk(port, path, body_file, connections, seconds, key=KEY, unique=False):
    """One wrk run; `unique` sends every request with the body's "@N@" replaced by a number no
    other request carries, in this run or another (bench/post-unique.lua)."""
    threads = 1 if connections < 64 else 2
    script = "post-unique.lua" if unique else "post.lua"
    cmd = [
        "wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s",
        "-s", str(ROOT / "bench" / script), f"http://127.0.0.1:{port}{path}",
    ]
    env = dict(os.environ, BODY_FILE=str(body_file), BENCH_KEY=key, BENCH_NONCE=str(time.time_ns()))
    out = subprocess.run(cmd, capture_output=True, text=True, env=env).stdout
    line = [l for l in out.splitlines() if l.startswith("{")]
    if not line:
        raise RuntimeError(f"wrk printed no summary:\n{out}")
    result = json.loads(line[-1])
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    return result


def stream_ttfc(port, path, body, count):
    """Times to first chunk and to last over a keep-alive connection, sequentially, in microseconds."""
    request = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {KEY}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    firsts, lasts = [], []
    for _ in range(count):
        start = time.perf_counter()
        sock.sendall(request)
        buffer, first = b"", None
        while b"data: [DONE]" not in buffer:
            chunk = sock.recv(65536)
            if not chunk:
                raise RuntimeError("connection closed mid-stream")
            buffer += chunk
            if first is None and b"data: {" in buffer:
                first = time.perf_counter()
        # Chunked transfer ends with a zero-length chunk after [DONE].
        while not buffer.endswith(b"0\r\n\r\n"):
            buffer += sock.recv(65536)
        end = time.perf_counter()
        firsts.append((first - start) * 1e6)
        lasts.append((end - start) * 1e6)
    sock.close()
    return statistics.median(firsts), statistics.median(lasts)


def chat_body(stream=False, model="direct", words=600):
    # ~800 tokens: a realistic classification/extraction prompt.
    text = " ".join(["The customer writes that the invoice total does not match the order."] * (words // 12))
    body = {
        "model": model,
        "messages": [
            {"role": "system", "content": "Classify the text into exactly one of: billing, technical, general."},
            {"role": "user", "content": text},
        ],
        "temperature": 0.1,
    }
    if stream:
        body["stream"] = True
    return json.dumps(body).encode()


def tierwise_config(directory, fake_port, dead_port, ledger, spaced_port=None, limits_store=None, otlp=None):
    spaced = "" if spaced_port is None else f"""
[providers.spaced]
base_url = "http://127.0.0.1:{spaced_port}/v1"
api_key = "sk-bench"

[tiers.spaced_api]
provider = "spaced"
model = "gpt-4o-mini"

[routes.spaced]
kind = "chat"
tiers = ["spaced_api"]
"""
    store = "" if limits_store is None else f"""
[limits]
store = "{limits_store}"
"""
    telemetry = "" if otlp is None else f"""
[telemetry]
otlp_endpoint = "{otlp}"
"""
    return spaced + store + telemetry + f"""
[server]
listen = "127.0.0.1:{{port}}"
api_keys = ["{KEY}"]

[ledger]
url = "{ledger}"

[providers.fake]
base_url = "http://127.0.0.1:{fake_port}/v1"
api_key = "sk-bench"

[providers.dead_local]
base_url = "http://127.0.0.1:{dead_port}/v1"
fixed_monthly_usd = 85.0
health = {{ interval_ms = 200 }}
breaker = {{ cooldown_ms = 600000, max_cooldown_ms = 600000 }}

[tiers]
api   = {{ provider = "fake", model = "gpt-4o-mini" }}
api_ref = {{ provider = "fake", model = "gpt-4o" }}
embed_api = {{ provider = "fake", model = "text-embedding-3-small" }}
local = {{ provider = "dead_local", model = "mistral-7b" }}

[routes.direct]
kind = "classification"
tiers = ["api"]

# The direct route with rate limits and budgets no benchmark reaches, called with a key that has
# its own: every request is judged by four limits (key and route, requests and tokens) and two
# budgets (the route's, the key's), and settles four reservations.
[routes.limited]
kind = "classification"
tiers = ["api"]
rpm = 1000000000
tpm = 1000000000000
budget = {{ monthly_usd = 9000000 }}

[keys.bench_limited]
key = "{LIMITED_KEY}"
rpm = 1000000000
tpm = 1000000000000
budget = {{ monthly_usd = 9000000 }}

# The direct route with a budget alone, called with the plain key: one budget judged and settled
# (in Redis, where the gateway has a limits store).
[routes.budgeted]
kind = "classification"
tiers = ["api"]
budget = {{ monthly_usd = 9000000 }}

[routes.fallback]
kind = "classification"
tiers = ["local", "api"]

[routes.embed]
kind = "embedding"
tiers = ["embed_api"]

# The direct route again, every answer shadowed against api_ref (the same fake, another model),
# with the default cap of 4 checks in flight.
[routes.shadowed]
kind = "classification"
tiers = ["api"]
shadow = {{ reference = "api_ref", sample_rate = 1.0, daily_budget_usd = 1000000.0 }}
"""


def start_tierwise(name, tmp, fake_port, dead_port, ledger, binary=None, spaced_port=None, limits_store=None, otlp=None):
    port = free_port()
    path = tmp / f"{name}.toml"
    path.write_text(tierwise_config(tmp, fake_port, dead_port, ledger, spaced_port, limits_store, otlp).replace("{port}", str(port)))
    env = dict(os.environ, TIERWISE_LOG="warn")
    binary = binary or str(RELEASE / "tierwise")
    proc = Proc(name, [binary, "serve", "--config", str(path)], port, env=env, log=tmp / f"{name}.log")
    return proc


def formats_config(fake_port, ledger, translated):
    """A gateway with one route per wire format, every provider on the same fake: `direct` on an
    OpenAI-compatible provider (passed through), and where `translated`, `azure` on an Azure
    deployment and `anthropic` on Anthropic's Messages API. An older build that knows no `api`
    key gets only the first."""
    formats = "" if not translated else f"""
[providers.azure_fake]
api = "azure"
base_url = "http://127.0.0.1:{fake_port}"
api_key = "sk-bench"

[providers.anthropic_fake]
api = "anthropic"
base_url = "http://127.0.0.1:{fake_port}/v1"
api_key = "sk-bench"

[tiers.azure_api]
provider = "azure_fake"
model = "gpt-4o-mini"
deployment = "bench-mini"

[tiers.claude]
provider = "anthropic_fake"
model = "claude-haiku-4-5"

[routes.azure]
kind = "classification"
tiers = ["azure_api"]

[routes.anthropic]
kind = "classification"
tiers = ["claude"]
"""
    return formats + f"""
[server]
listen = "127.0.0.1:{{port}}"
api_keys = ["{KEY}"]

[ledger]
url = "{ledger}"

[providers.fake]
base_url = "http://127.0.0.1:{fake_port}/v1"
api_key = "sk-bench"

[tiers.api]
provider = "fake"
model = "gpt-4o-mini"

[routes.direct]
kind = "classification"
tiers = ["api"]
"""


def start_nginx(tmp, fake_port, name="nginx"):
    port = free_port()
    conf = (ROOT / "bench" / "nginx.conf.in").read_text()
    work = tmp / name
    work.mkdir(exist_ok=True)
    conf = conf.replace("@DIR@", str(work)).replace("@UPSTREAM_PORT@", str(fake_port)).replace("@PORT@", str(port))
    path = work / "nginx.conf"
    path.write_text(conf)
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    return Proc(name, [nginx, "-c", str(path), "-e", str(work / "error.log")], port)


def start_litellm(tmp, fake_port, venv):
    port = free_port()
    config = tmp / "litellm.yaml"
    config.write_text(f"""
model_list:
  - model_name: direct
    litellm_params:
      model: openai/gpt-4o-mini
      api_base: http://127.0.0.1:{fake_port}/v1
      api_key: sk-bench
litellm_settings:
  telemetry: false
  turn_off_message_logging: true
  json_logs: false
general_settings:
  master_key: {KEY}
  disable_spend_logs: true
  disable_error_logs: true
""")
    env = dict(os.environ, LITELLM_LOG="ERROR", LITELLM_TELEMETRY="False", DISABLE_ADMIN_UI="True")
    exe = Path(venv) / "bin" / "litellm"
    return Proc("litellm", [str(exe), "--config", str(config), "--port", str(port), "--num_workers", "1"], port, env=env, log=tmp / "litellm.log")


def median_of(runs, key):
    return statistics.median(r[key] for r in runs)


def measure(targets, path, body_file, connections, seconds, rounds, cpu_of=()):
    """Runs wrk against every target, alternating, `rounds` times; medians per target."""
    results = {name: [] for name, _ in targets}
    for _ in range(rounds):
        for name, target in targets:
            before = target.cpu_seconds() if isinstance(target, Proc) else 0.0
            port = target.port if isinstance(target, Proc) else target
            run = wrk(port, path, body_file, connections, seconds)
            if isinstance(target, Proc) and name in cpu_of:
                run["cpu_us_per_req"] = (target.cpu_seconds() - before) * 1e6 / max(run["requests"], 1)
                run["rss_mb"] = target.rss_mb()
            results[name].append(run)
    summary = {}
    for name, runs in results.items():
        summary[name] = {
            "rps": median_of(runs, "rps"),
            "p50_us": median_of(runs, "p50_us"),
            "p99_us": median_of(runs, "p99_us"),
            "errors": sum(r["socket_errors"] + r["non2xx"] for r in runs),
        }
        if "cpu_us_per_req" in runs[0]:
            summary[name]["cpu_us_per_req"] = median_of(runs, "cpu_us_per_req")
            summary[name]["rss_mb"] = max(r["rss_mb"] for r in runs)
    return summary


def row(scenario, target, m, direct=None):
    added50 = m["p50_us"] - direct["p50_us"] if direct else None
    added99 = m["p99_us"] - direct["p99_us"] if direct else None
    return {
        "scenario": scenario, "target": target, "rps": m["rps"], "p50_us": m["p50_us"], "p99_us": m["p99_us"],
        "added_p50_us": added50, "added_p99_us": added99, "cpu_us_per_req": m.get("cpu_us_per_req"),
        "rss_mb": m.get("rss_mb"), "errors": m["errors"],
    }


def print_table(rows, extra):
    print()
    print(f"{'scenario':<34} {'target':<14} {'req/s':>9} {'p50 us':>9} {'p99 us':>9} {'+p50 us':>9} {'+p99 us':>9} {'cpu us/req':>11} {'rss MB':>7} {'errors':>7}")
    for r in rows:
        fmt = lambda v, f="{:.0f}": "-" if v is None else f.format(v)
        print(
            f"{r['scenario']:<34} {r['target']:<14} {fmt(r['rps']):>9} {fmt(r['p50_us']):>9} {fmt(r['p99_us']):>9} "
            f"{fmt(r['added_p50_us']):>9} {fmt(r['added_p99_us']):>9} {fmt(r['cpu_us_per_req'], '{:.1f}'):>11} "
            f"{fmt(r.get('rss_mb'), '{:.1f}'):>7} {r['errors']:>7}"
        )
    for line in extra:
        print(line)


def spaced_streams(tw, spaced, tmp, args, rows, extra, procs, base=None):
    """Streams of 20 content chunks ~3 ms apart at high concurrency: DIRECT, THROUGH tierwise and
    through nginx to the same fake, alternating; CPU per stream of each proxy, req/s, p50/p99, RSS;
    time to first chunk one stream at a time over keep-alive."""
    nginx = start_nginx(tmp, spaced.port, name="nginx-spaced")
    procs.append(nginx)
    body = tmp / "spaced.json"
    stream_body = chat_body(stream=True, model="spaced")
    body.write_bytes(stream_body)
    targets = [("direct", spaced), ("tierwise", tw)] + ([("baseline", base)] if base else []) + [("nginx", nginx)]
    for c in (int(n) for n in args.stream_concurrency.split(",")):
        m = measure(targets, "/v1/chat/completions", body, c, args.seconds, args.rounds, cpu_of=("tierwise", "baseline", "nginx"))
        for name in m:
            rows.append(row(f"streams 20x3ms, c={c}", name, m[name], None if name == "direct" else m["direct"]))
        held = ", ".join(
            f"{name} {upstream_connections(target, spaced.port, body, c)}" for name, target in targets if name != "direct"
        )
        extra.append(f"streams 20x3ms, c={c}: upstream connections held under load: {held}")
        if "cpu_us_per_req" in m["tierwise"] and m["nginx"].get("cpu_us_per_req"):
            extra.append(
                f"streams 20x3ms, c={c}: tierwise/nginx CPU per stream {m['tierwise']['cpu_us_per_req'] / m['nginx']['cpu_us_per_req']:.2f}x, "
                f"req/s {m['tierwise']['rps'] / m['nginx']['rps'] * 100:.0f}% of nginx's, p50 {m['tierwise']['p50_us'] / m['nginx']['p50_us']:.2f}x"
            )
    ttfc = {name: [] for name, _ in targets}
    for _ in range(args.rounds):
        for name, target in targets:
            ttfc[name].append(stream_ttfc(target.port, "/v1/chat/completions", stream_body, 50))
    for name in ttfc:
        first = statistics.median(x[0] for x in ttfc[name])
        last = statistics.median(x[1] for x in ttfc[name])
        extra.append(f"streams 20x3ms, c=1, {name:<8} first chunk p50 {first:7.0f} us, last chunk p50 {last:7.0f} us")
    extra.append(f"tierwise RSS {tw.rss_mb():.1f} MB now, peak {tw.peak_rss_mb():.1f} MB (VmHWM); nginx {nginx.peak_rss_mb():.1f} MB")
    if args.soak_seconds and args.streams_only:
        extra.append(soak(tw, body, 256, args.soak_seconds, "streams 20x3ms soak c=256"))


def upstream_connections(proxy, upstream_port, body, connections):
    """How many connections `proxy` holds to the upstream two seconds into a 3 s run at this
    concurrency: one per stream in flight is the floor, the rest are spares its pool opened."""
    cmd = [
        "wrk", f"-t{1 if connections < 64 else 2}", f"-c{connections}", "-d3s", "--timeout", "10s",
        "-s", str(ROOT / "bench" / "post.lua"), f"http://127.0.0.1:{proxy.port}/v1/chat/completions",
    ]
    load = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, env=dict(os.environ, BODY_FILE=str(body), BENCH_KEY=KEY))
    time.sleep(2)
    pids = {f"pid={pid}," for pid in [proxy.popen.pid] + proxy.children()}
    sockets = subprocess.run(["ss", "-tnpH", "state", "established"], capture_output=True, text=True).stdout
    held = sum(
        1 for line in sockets.splitlines()
        if line.split()[3].endswith(f":{upstream_port}") and any(pid in line for pid in pids)
    )
    load.wait()
    return held


def soak(tw, body, connections, seconds, label):
    """One long wrk run against tierwise, its RSS sampled every 10 s."""
    samples = []
    proc = subprocess.Popen(
        ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s", "-s", str(ROOT / "bench" / "post.lua"), f"http://127.0.0.1:{tw.port}/v1/chat/completions"],
        stdout=subprocess.PIPE, text=True, env=dict(os.environ, BODY_FILE=str(body), BENCH_KEY=KEY),
    )
    while proc.poll() is None:
        samples.append(tw.rss_mb())
        time.sleep(10)
    out = proc.stdout.read()
    summary = json.loads([l for l in out.splitlines() if l.startswith("{")][-1])
    return (
        f"{label} for {seconds}s: {summary['requests']} requests, {summary['non2xx'] + summary['socket_errors']} errors, "
        f"tierwise RSS every 10s (MB): {' '.join(f'{s:.1f}' for s in samples)}; peak {tw.peak_rss_mb():.1f} MB (VmHWM)"
    )


def shadow_counts(proc):
    """Shadow checks done and skipped so far, from tierwise's /metrics."""
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{proc.port}/metrics").read().decode()
    counts = {"checked": 0, "skipped": 0}
    for line in text.splitlines():
        if line.startswith("tierwise_shadow_checks_total"):
            counts["checked"] += int(float(line.rsplit(" ", 1)[1]))
        elif line.startswith("tierwise_shadow_skipped_total"):
            counts["skipped"] += int(float(line.rsplit(" ", 1)[1]))
    return counts


def shadow_scenario(tw, tmp, body, args, rows, extra):
    """The same request on the same gateway, unshadowed and with every answer shadowed, alternating
    round by round: what a client sees of shadow sampling at 100%. The reference is the same fake
    upstream, so shadow calls also add to the upstream's load on this machine."""
    shadowed = tmp / "shadowed.json"
    shadowed.write_bytes(chat_body(model="shadowed"))
    for c in (1, 16):
        plain, sampled = [], []
        before = shadow_counts(tw)
        for _ in range(args.rounds):
            for runs, request in ((plain, body), (sampled, shadowed)):
                cpu = tw.cpu_seconds()
                run = wrk(tw.port, "/v1/chat/completions", request, c, args.seconds)
                time.sleep(0.5)  # the checks of the last requests, counted with their run
                run["cpu_us_per_req"] = (tw.cpu_seconds() - cpu) * 1e6 / max(run["requests"], 1)
                runs.append(run)
        after = shadow_counts(tw)
        keys = ("rps", "p50_us", "p99_us", "cpu_us_per_req")
        a = {k: median_of(plain, k) for k in keys}
        s = {k: median_of(sampled, k) for k in keys}
        a["errors"] = sum(r["socket_errors"] + r["non2xx"] for r in plain)
        s["errors"] = sum(r["socket_errors"] + r["non2xx"] for r in sampled)
        rows.append(row(f"no shadow, c={c}", "tierwise", a))
        rows.append(row(f"shadow at 100%, c={c}", "tierwise", s, a))
        requests = sum(r["requests"] for r in sampled)
        extra.append(
            f"shadow at 100%, c={c}: {requests} requests, {after['checked'] - before['checked']} checks done, "
            f"{after['skipped'] - before['skipped']} skipped (all of the route's checks busy)"
        )


def limits_scenario(tw, tmp, fake_port, dead_port, args, rows, extra, procs):
    """What admission costs a request: the same gateway's direct route without limits, its
    limited route with a limited key (four rate limits and two budgets judged, four reservations
    settled) and its budgeted route (one budget), alternating round by round; with the counters in
    memory, then in a Redis of the scenario's own on this machine."""
    limited = tmp / "limited.json"
    limited.write_bytes(chat_body(model="limited"))
    budgeted = tmp / "budgeted.json"
    budgeted.write_bytes(chat_body(model="budgeted"))
    plain = tmp / "plain.json"
    plain.write_bytes(chat_body())
    redis_port = free_port()
    redis = Proc("redis", ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], redis_port)
    procs.append(redis)
    tw_redis = start_tierwise("tierwise-redis", tmp, fake_port, dead_port, f"sqlite://{tmp}/redis-ledger.db", limits_store=f"redis://127.0.0.1:{redis_port}")
    procs.append(tw_redis)
    time.sleep(1.0)  # the store's first probe
    for store, gw in (("memory", tw), ("redis", tw_redis)):
        for c in (int(n) for n in args.limits_concurrency.split(",")):
            off, on, budget_only = [], [], []
            for _ in range(args.rounds):
                for runs, request, key in ((off, plain, KEY), (on, limited, LIMITED_KEY), (budget_only, budgeted, KEY)):
                    cpu = gw.cpu_seconds()
                    redis_cpu = redis.cpu_seconds()
                    run = wrk(gw.port, "/v1/chat/completions", request, c, args.seconds, key)
                    run["cpu_us_per_req"] = (gw.cpu_seconds() - cpu) * 1e6 / max(run["requests"], 1)
                    run["redis_us_per_req"] = (redis.cpu_seconds() - redis_cpu) * 1e6 / max(run["requests"], 1)
                    runs.append(run)
            keys = ("rps", "p50_us", "p99_us", "cpu_us_per_req", "redis_us_per_req")
            a = {k: median_of(off, k) for k in keys}
            b = {k: median_of(on, k) for k in keys}
            d = {k: median_of(budget_only, k) for k in keys}
            a["errors"] = sum(r["socket_errors"] + r["non2xx"] for r in off)
            b["errors"] = sum(r["socket_errors"] + r["non2xx"] for r in on)
            d["errors"] = sum(r["socket_errors"] + r["non2xx"] for r in budget_only)
            rows.append(row(f"limits off ({store} gw), c={c}", "tierwise", a))
            rows.append(row(f"limits on, {store}, c={c}", "tierwise", b, a))
            rows.append(row(f"one budget alone, {store}, c={c}", "tierwise", d, a))
            extra.append(
                f"one budget alone, {store}, c={c}: {d['cpu_us_per_req']:.1f} vs {a['cpu_us_per_req']:.1f} us CPU/req "
                f"(x{d['cpu_us_per_req'] / a['cpu_us_per_req']:.3f}), p50 {d['p50_us']:.0f} vs {a['p50_us']:.0f} us, "
                f"rps {d['rps']:.0f} vs {a['rps']:.0f}"
                + (f", redis-server {d['redis_us_per_req']:.1f} us CPU/req" if store == "redis" else "")
            )
            extra.append(
                f"limits on, {store}, c={c}: {b['cpu_us_per_req']:.1f} vs {a['cpu_us_per_req']:.1f} us CPU/req "
                f"(x{b['cpu_us_per_req'] / a['cpu_us_per_req']:.3f}), p50 {b['p50_us']:.0f} vs {a['p50_us']:.0f} us, "
                f"rps {b['rps']:.0f} vs {a['rps']:.0f}"
                + (f", redis-server {b['redis_us_per_req']:.1f} us CPU/req" if store == "redis" else "")
            )
    tw_redis.stop()
    procs.remove(tw_redis)


def reload_scenario(tw, tmp, args, rows, extra):
    """Reloads under load: wrk at c=64 on the direct route (then streams on the spaced route, if
    the gateway has one) while the config file is rewritten and the gateway sent SIGHUP every
    --reload-every-ms; each rewrite adds or drops a route, so each reload that reads a whole file
    swaps a new snapshot in. The file is written in place, not renamed: a signal may catch it half
    written, and that reload is refused while the old config serves. Counted: requests, failed
    requests (socket errors and non-2xx), reloads that took (the version /admin/api/config ends
    on) and reloads refused (the log's lines)."""
    import threading
    import urllib.request

    path = tmp / "tierwise.toml"
    base = path.read_text()
    extra_route = '\n[routes.reloaded]\nkind = "chat"\ntiers = ["api"]\n'
    stop = threading.Event()
    sent = [0]

    def hup():
        flip = False
        while not stop.wait(args.reload_every_ms / 1000):
            flip = not flip
            path.write_text(base + (extra_route if flip else "") + f"\n# rewrite {sent[0]}\n")
            tw.popen.send_signal(signal.SIGHUP)
            sent[0] += 1

    def version():
        request = urllib.request.Request(f"http://127.0.0.1:{tw.port}/admin/api/config", headers={"authorization": f"Bearer {KEY}"})
        with urllib.request.urlopen(request) as answer:
            return json.loads(answer.read())["version"]

    def refused():
        return (tmp / "tierwise.log").read_text().count("reload refused")

    loads = [("chat, ~800 tokens", tmp / "chat.json")]
    if (tmp / "spaced.json").exists():
        loads.append(("streams, 20 chunks", tmp / "spaced.json"))
    for label, body in loads:
        before, refused_before = version(), refused()
        sent[0] = 0
        stop.clear()
        thread = threading.Thread(target=hup)
        thread.start()
        run = wrk(tw.port, "/v1/chat/completions", body, 64, args.seconds)
        stop.set()
        thread.join()
        failed = run["socket_errors"] + run["non2xx"]
        taken, not_taken = version() - before, refused() - refused_before
        run["errors"] = failed
        rows.append(row(f"{label}, c=64, SIGHUP every {args.reload_every_ms} ms", "tierwise", run))
        extra.append(
            f"reload under load, {label}, c=64: {run['requests']} requests, {failed} failed; "
            f"{sent[0]} SIGHUPs, {taken} reloads took, {not_taken} refused (file caught half written)"
        )
    path.write_text(base)

# A local OTLP/HTTP sink: takes every export and answers 200 with an empty
# ExportTraceServiceResponse (zero bytes), counting the bytes it was sent.
OTLP_SINK = """
import http.server, sys
class Sink(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get('content-length', 0)))
        self.send_response(200)
        self.send_header('content-type', 'application/x-protobuf')
        self.send_header('content-length', '0')
        self.end_headers()
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(('127.0.0.1', int(sys.argv[1])), Sink).serve_forever()
"""


def tracing_scenario(tw, tmp, fake_port, dead_port, args, rows, extra, procs):
    """What traces cost: the gateway's CPU per request with traces exported to a local OTLP sink
    (every request sampled, a span per request and per call) against the same gateway without
    `[telemetry]`, alternating round by round. The CPU is the gateway process's own (utime +
    stime from /proc), so other work on a shared machine does not count in it."""
    sink_port = free_port()
    sink = Proc("otlp-sink", [sys.executable, "-c", OTLP_SINK, str(sink_port)], sink_port)
    procs.append(sink)
    traced = start_tierwise("tierwise-traced", tmp, fake_port, dead_port, f"sqlite://{tmp}/traced-ledger.db", otlp=f"http://127.0.0.1:{sink_port}")
    procs.append(traced)
    time.sleep(1.0)  # the dead local tier's breaker opens on its first probe
    for kind, stream in (("chat", False), ("stream", True)):
        request = tmp / f"tracing-{kind}.json"
        request.write_bytes(chat_body(stream=stream))
        for c in (int(n) for n in args.tracing_concurrency.split(",")):
            m = measure([("off", tw), ("traced", traced)], "/v1/chat/completions", request, c, args.seconds, args.rounds, cpu_of=("off", "traced"))
            off, on = m["off"], m["traced"]
            rows.append(row(f"{kind}, traces off, c={c}", "tierwise", off))
            rows.append(row(f"{kind}, traces on, c={c}", "tierwise", on, off))
            extra.append(
                f"{kind}, traces on, c={c}: {on['cpu_us_per_req']:.1f} vs {off['cpu_us_per_req']:.1f} us CPU/req "
                f"(x{on['cpu_us_per_req'] / off['cpu_us_per_req']:.3f}), p50 {on['p50_us']:.0f} vs {off['p50_us']:.0f} us, "
                f"rps {on['rps']:.0f} vs {off['rps']:.0f}"
            )
    traced.stop()
    procs.remove(traced)


def formats_scenario(fake, tmp, args, rows, extra, procs):
    """What translation costs: one gateway's CPU per request for the same chat request to the same
    fake upstream, which answers each wire format, through its OpenAI-compatible provider (passed
    through byte for byte), its Azure provider (passed through, its URL and key header its own) and
    its Anthropic provider (the request written as a Messages request, the answer or each stream
    event read back and written as OpenAI's), plain and streamed, alternating round by round; with
    `--compare-bin`, the same pass-through request on that older build too, alternating with them."""
    port = free_port()
    config = tmp / "formats.toml"
    config.write_text(formats_config(fake.port, f"sqlite://{tmp}/formats.db", True).replace("{port}", str(port)))
    env = dict(os.environ, TIERWISE_LOG="warn")
    tw = Proc("tierwise", [str(RELEASE / "tierwise"), "serve", "--config", str(config)], port, env=env, log=tmp / "formats.log")
    procs.append(tw)
    gateways = [("tierwise", tw)]
    if args.compare_bin:
        base_port = free_port()
        base_config = tmp / "formats-base.toml"
        base_config.write_text(formats_config(fake.port, f"sqlite://{tmp}/formats-base.db", False).replace("{port}", str(base_port)))
        base = Proc("baseline", [args.compare_bin, "serve", "--config", str(base_config)], base_port, env=env, log=tmp / "formats-base.log")
        procs.append(base)
        gateways.append(("baseline", base))
    time.sleep(1.0)  # the providers' first probes
    formats = [("openai", "tierwise", "direct"), ("azure", "tierwise", "azure"), ("anthropic", "tierwise", "anthropic")]
    if args.compare_bin:
        formats.append(("openai (old)", "baseline", "direct"))
    procs_by_name = dict(gateways)
    for stream in (False, True):
        kind = "stream (42 chunks)" if stream else "chat, ~800 tokens"
        bodies = {}
        for name, _, route in formats:
            path = tmp / f"formats-{route}-{'stream' if stream else 'plain'}.json"
            path.write_bytes(chat_body(stream=stream, model=route))
            bodies[name] = path
        for c in (int(n) for n in args.formats_concurrency.split(",")):
            runs = {name: [] for name, _, _ in formats}
            for _ in range(args.rounds):
                for name, gateway, _ in formats:
                    proc = procs_by_name[gateway]
                    cpu = proc.cpu_seconds()
                    run = wrk(proc.port, "/v1/chat/completions", bodies[name], c, args.seconds)
                    run["cpu_us_per_req"] = (proc.cpu_seconds() - cpu) * 1e6 / max(run["requests"], 1)
                    runs[name].append(run)
            summary = {}
            for name, _, _ in formats:
                m = {k: median_of(runs[name], k) for k in ("rps", "p50_us", "p99_us", "cpu_us_per_req")}
                m["errors"] = sum(r["socket_errors"] + r["non2xx"] for r in runs[name])
                summary[name] = m
                rows.append(row(f"{kind} by format, c={c}", name, m, None if name == "openai" else summary["openai"]))
            passthrough = summary["openai"]["cpu_us_per_req"]
            ratios = ", ".join(
                f"{name} {summary[name]['cpu_us_per_req']:.1f} us ({summary[name]['cpu_us_per_req'] / passthrough:.2f}x)"
                for name, _, _ in formats if name != "openai"
            )
            extra.append(f"{kind} by format, c={c}: CPU per request, openai pass-through {passthrough:.1f} us; {ratios}")


def responses_body(stream=False, model="direct", words=600):
    """The chat body's request in the Responses API's words: the system message as
    `instructions`, the user's text as `input`."""
    chat = json.loads(chat_body(stream=stream, model=model, words=words))
    body = {
        "model": model,
        "instructions": chat["messages"][0]["content"],
        "input": chat["messages"][1]["content"],
        "temperature": 0.1,
    }
    if stream:
        body["stream"] = True
    return json.dumps(body).encode()


def responses_scenario(fake, tmp, args, rows, extra, procs):
    """What the Responses API costs the gateway: one gateway's CPU per request, read from /proc of
    its process (not latency, which a shared machine skews), for the same request to the same fake
    upstream as a chat completion passed through byte for byte, as a Responses request translated
    to chat and back (the path every chat-only tier takes), and as a Responses request passed
    through to a server that serves Responses; plain and streamed, alternating round by round."""
    port = free_port()
    config = tmp / "responses.toml"
    native = f"""
[providers.native]
base_url = "http://127.0.0.1:{fake.port}/v1"
api_key = "sk-bench"
responses = true

[tiers.api_native]
provider = "native"
model = "gpt-4o-mini"

[routes.native]
kind = "classification"
tiers = ["api_native"]
"""
    config.write_text(native + formats_config(fake.port, f"sqlite://{tmp}/responses.db", False).replace("{port}", str(port)))
    env = dict(os.environ, TIERWISE_LOG="warn")
    tw = Proc("tierwise", [str(RELEASE / "tierwise"), "serve", "--config", str(config)], port, env=env, log=tmp / "responses.log")
    procs.append(tw)
    time.sleep(1.0)  # the providers' first probes
    paths = [
        ("chat pass-through", "/v1/chat/completions", chat_body, "direct"),
        ("responses translated", "/v1/responses", responses_body, "direct"),
        ("responses pass-through", "/v1/responses", responses_body, "native"),
    ]
    for stream in (False, True):
        kind = "stream" if stream else "plain, ~800 tokens"
        bodies = {}
        for name, _, make, route in paths:
            path = tmp / f"responses-{name.replace(' ', '-')}-{'stream' if stream else 'plain'}.json"
            path.write_bytes(make(stream=stream, model=route))
            bodies[name] = path
        for c in (int(n) for n in args.formats_concurrency.split(",")):
            runs = {name: [] for name, _, _, _ in paths}
            for _ in range(args.rounds):
                for name, url, _, _ in paths:
                    cpu = tw.cpu_seconds()
                    run = wrk(tw.port, url, bodies[name], c, args.seconds)
                    run["cpu_us_per_req"] = (tw.cpu_seconds() - cpu) * 1e6 / max(run["requests"], 1)
                    runs[name].append(run)
            summary = {}
            for name, _, _, _ in paths:
                m = {k: median_of(runs[name], k) for k in ("rps", "p50_us", "p99_us", "cpu_us_per_req")}
                m["errors"] = sum(r["socket_errors"] + r["non2xx"] for r in runs[name])
                summary[name] = m
                base = None if name == "chat pass-through" else summary["chat pass-through"]
                rows.append(row(f"{kind} by endpoint, c={c}", name, m, base))
            chat = summary["chat pass-through"]["cpu_us_per_req"]
            ratios = ", ".join(
                f"{name} {summary[name]['cpu_us_per_req']:.1f} us ({summary[name]['cpu_us_per_req'] / chat:.2f}x)"
                for name, _, _, _ in paths if name != "chat pass-through"
            )
            extra.append(f"{kind} by endpoint, c={c}: CPU per request, chat pass-through {chat:.1f} us; {ratios}")


def cache_lookups(proc):
    """tierwise_cache_lookups_total by result, from the gateway's /metrics."""
    with socket.create_connection(("127.0.0.1", proc.port)) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        text = b""
        while chunk := sock.recv(65536):
            text += chunk
    counts = {}
    for line in text.decode(errors="replace").splitlines():
        if line.startswith("tierwise_cache_lookups_total{"):
            result = line.split('result="', 1)[1].split('"', 1)[0]
            counts[result] = counts.get(result, 0) + int(float(line.rsplit(" ", 1)[1]))
    return counts


def cache_scenario(fake, tmp, args, rows, extra, procs):
    """What the response cache costs when it cannot help: one gateway's CPU per request, read from
    /proc of its process, for requests that are all different (a number unique to each in the
    prompt, bench/post-unique.lua) to the same fake upstream on a route with `cache = { ttl = "1h",
    scope = "key" }` (each a lookup that misses, then a fill) and on the same route without it;
    beside them, the cached route's hit (one request repeated). Plain and streamed, alternating
    round by round. The body asks for temperature 0: a sampling request is never cached."""
    port = free_port()
    config = tmp / "cache.toml"
    cached = """
[routes.cached]
kind = "classification"
tiers = ["api"]
cache = { ttl = "1h", scope = "key" }
"""
    config.write_text(cached + formats_config(fake.port, f"sqlite://{tmp}/cache.db", False).replace("{port}", str(port)))
    env = dict(os.environ, TIERWISE_LOG="warn")
    tw = Proc("tierwise", [str(RELEASE / "tierwise"), "serve", "--config", str(config)], port, env=env, log=tmp / "cache.log")
    procs.append(tw)
    time.sleep(1.0)  # the provider's first probe
    # (name, route, every request unique)
    targets = [("cache off", "direct", True), ("cache on, miss", "cached", True), ("cache on, hit", "cached", False)]
    for stream in (False, True):
        kind = "stream" if stream else "plain, ~800 tokens"
        bodies = {}
        for name, route, unique in targets:
            body = json.loads(chat_body(stream=stream, model=route))
            body["temperature"] = 0
            if unique:
                body["messages"][1]["content"] = "Ticket @N@. " + body["messages"][1]["content"]
            path = tmp / f"cache-{route}-{'unique' if unique else 'same'}-{'stream' if stream else 'plain'}.json"
            path.write_bytes(json.dumps(body).encode())
            bodies[name] = path
        for c in (int(n) for n in args.formats_concurrency.split(",")):
            runs = {name: [] for name, _, _ in targets}
            lookups_before = cache_lookups(tw)
            for _ in range(args.rounds):
                for name, _, unique in targets:
                    cpu = tw.cpu_seconds()
                    run = wrk(tw.port, "/v1/chat/completions", bodies[name], c, args.seconds, unique=unique)
                    run["cpu_us_per_req"] = (tw.cpu_seconds() - cpu) * 1e6 / max(run["requests"], 1)
                    runs[name].append(run)
            lookups = {k: v - lookups_before.get(k, 0) for k, v in cache_lookups(tw).items()}
            summary = {}
            for name, _, _ in targets:
                m = {k: median_of(runs[name], k) for k in ("rps", "p50_us", "p99_us", "cpu_us_per_req")}
                m["errors"] = sum(r["socket_errors"] + r["non2xx"] for r in runs[name])
                m["requests"] = sum(r["requests"] for r in runs[name])
                summary[name] = m
                base = None if name == "cache off" else summary["cache off"]
                rows.append(row(f"{kind} cache, c={c}", name, m, base))
            off = summary["cache off"]["cpu_us_per_req"]
            ratios = ", ".join(
                f"{name} {summary[name]['cpu_us_per_req']:.1f} us ({summary[name]['cpu_us_per_req'] / off:.2f}x)"
                for name, _, _ in targets if name != "cache off"
            )
            extra.append(f"{kind} cache, c={c}: CPU per request, cache off {off:.1f} us; {ratios}")
            extra.append(
                f"{kind} cache, c={c}: requests sent: miss runs {summary['cache on, miss']['requests']}, "
                f"hit runs {summary['cache on, hit']['requests']}; lookups counted by /metrics: {lookups}"
            )


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=5, help="length of one wrk run")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per scenario (medians are quoted)")
    parser.add_argument("--litellm-venv", default=None, help="a venv with litellm[proxy]; omitted = no LiteLLM column")
    parser.add_argument("--postgres", default="postgres://postgres@127.0.0.1:5432/test", help="'' to skip the PostgreSQL scenario")
    parser.add_argument("--soak-seconds", type=int, default=0, help="also run c=64 (c=256 streams with --streams-only) this long and sample tierwise's RSS")
    parser.add_argument("--json", default=None, help="write all figures to this file")
    parser.add_argument("--compare-bin", default=None, help="another tierwise binary (say, an older commit's) measured as 'baseline' beside 'tierwise' in the chat scenarios")
    parser.add_argument("--chat-only", action="store_true", help="only the non-streaming chat scenarios")
    parser.add_argument("--shadow-only", action="store_true", help="only the shadow-sampling scenario")
    parser.add_argument("--streams-only", action="store_true", help="only the spaced-chunk streams scenario")
    parser.add_argument("--limits-only", action="store_true", help="only the rate-limits scenario (memory and Redis)")
    parser.add_argument("--reload-only", action="store_true", help="only the reload scenario: SIGHUP every --reload-every-ms under load at c=64")
    parser.add_argument("--reload-every-ms", type=int, default=50, help="how often the reload scenario rewrites the config and sends SIGHUP")
    parser.add_argument("--tracing-only", action="store_true", help="only the tracing scenario: traces exported to a local OTLP sink against none")
    parser.add_argument("--tracing-concurrency", default="1,16", help="connection counts of the tracing scenario")
    parser.add_argument("--formats-only", action="store_true", help="only the wire-format scenario: pass-through against Azure and Anthropic translation")
    parser.add_argument("--responses-only", action="store_true", help="only the Responses scenario: chat pass-through against Responses translated and passed through")
    parser.add_argument("--cache-only", action="store_true", help="only the response cache scenario: every request a miss against the same route without a cache, and the hit")
    parser.add_argument("--formats-concurrency", default="1,16", help="connection counts of the wire-format, Responses and cache scenarios")
    parser.add_argument("--limits-concurrency", default="1,64", help="connection counts of the rate-limits scenario")
    parser.add_argument("--stream-concurrency", default="64,256,1024", help="connection counts of the spaced-chunk streams")
    parser.add_argument("--concurrency", default="1,16,64,256", help="connection counts of the chat scenarios, comma-separated")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="tierwise-bench-"))
    procs = []
    rows, extra = [], []
    try:
        fake_port = free_port()
        fake = Proc("fake", [str(RELEASE / "tierwise-fake"), "--listen", f"127.0.0.1:{fake_port}", "--no-record", "--reply-words", "40"], fake_port)
        procs.append(fake)
        if args.responses_only:
            responses_scenario(fake, tmp, args, rows, extra, procs)
            print_table(rows, extra)
            print(f"\ncommand: {' '.join([sys.argv[0]] + sys.argv[1:])}")
            if args.json:
                Path(args.json).write_text(json.dumps({"rows": rows, "notes": extra}, indent=2))
            return
        if args.cache_only:
            cache_scenario(fake, tmp, args, rows, extra, procs)
            print_table(rows, extra)
            print(f"\ncommand: {' '.join([sys.argv[0]] + sys.argv[1:])}")
            if args.json:
                Path(args.json).write_text(json.dumps({"rows": rows, "notes": extra}, indent=2))
            return
        if args.formats_only:
            formats_scenario(fake, tmp, args, rows, extra, procs)
            print_table(rows, extra)
            print(f"\ncommand: {' '.join([sys.argv[0]] + sys.argv[1:])}")
            if args.json:
                Path(args.json).write_text(json.dumps({"rows": rows, "notes": extra}, indent=2))
            return
        dead_port = free_port()  # nothing listens: the local tier's breaker opens on its first probe
        # Streams as chat products see them: 20 content chunks about 3 ms apart, from a fake of their own.
        spaced_port = free_port()
        spaced = Proc("spaced", [str(RELEASE / "tierwise-fake"), "--listen", f"127.0.0.1:{spaced_port}", "--no-record", "--reply-words", "20", "--chunk-delay-ms", "3"], spaced_port)
        procs.append(spaced)
        tw = start_tierwise("tierwise", tmp, fake_port, dead_port, f"sqlite://{tmp}/ledger.db", spaced_port=spaced_port)
        procs.append(tw)
        base = None
        if args.compare_bin:
            base = start_tierwise("baseline", tmp, fake_port, dead_port, f"sqlite://{tmp}/baseline.db", args.compare_bin, spaced_port=spaced_port)
            procs.append(base)
        # The limits, reload and tracing scenarios measure tierwise against itself: no nginx needed.
        if not (args.limits_only or args.reload_only or args.tracing_only):
            nginx = start_nginx(tmp, fake_port)
            procs.append(nginx)
        litellm = start_litellm(tmp, fake_port, args.litellm_venv) if args.litellm_venv else None
        if litellm:
            procs.append(litellm)
        time.sleep(1.0)  # let the probe open the dead local tier's breaker

        body = tmp / "chat.json"
        body.write_bytes(chat_body())
        if args.streams_only:
            spaced_streams(tw, spaced, tmp, args, rows, extra, procs, base)
            print_table(rows, extra)
            print(f"\ncommand: {' '.join([sys.argv[0]] + sys.argv[1:])}")
            return
        if args.tracing_only:
            tracing_scenario(tw, tmp, fake_port, dead_port, args, rows, extra, procs)
            print_table(rows, extra)
            print(f"\ncommand: {' '.join([sys.argv[0]] + sys.argv[1:])}")
            return
        if args.limits_only:
            limits_scenario(tw, tmp, fake_port, dead_port, args, rows, extra, procs)
            print_table(rows, extra)
            print(f"\ncommand: {' '.join([sys.argv[0]] + sys.argv[1:])}")
            return
        if args.reload_only:
            (tmp / "spaced.json").write_bytes(chat_body(stream=True, model="spaced"))
            reload_scenario(tw, tmp, args, rows, extra)
            print_table(rows, extra)
            print(f"\ncommand: {' '.join([sys.argv[0]] + sys.argv[1:])}")
            return
        if args.shadow_only:
            shadow_scenario(tw, tmp, body, args, rows, extra)
            print_table(rows, extra)
            print(f"\ncommand: {' '.join([sys.argv[0]] + sys.argv[1:])}")
            return
        targets = [("direct", fake), ("tierwise", tw)] + ([("baseline", base)] if base else []) + [("nginx", nginx)] + ([("litellm", litellm)] if litellm else [])
        for c in (int(n) for n in args.concurrency.split(",")):
            lite = [t for t in targets if t[0] != "litellm" or c <= 64]
            m = measure(lite, "/v1/chat/completions", body, c, args.seconds, args.rounds, cpu_of=("tierwise", "baseline", "nginx", "litellm"))
            for name in m:
                rows.append(row(f"chat, ~800 tokens, c={c}", name, m[name], None if name == "direct" else m["direct"]))
        if args.chat_only:
            print_table(rows, extra)
            print(f"\ncommand: {' '.join([sys.argv[0]] + sys.argv[1:])}")
            return

        embed = tmp / "embed.json"
        embed.write_text(json.dumps({"model": "embed", "input": ["a short document to embed"] * 8}))
        m = measure([("direct", fake), ("tierwise", tw)], "/v1/embeddings", embed, 16, args.seconds, args.rounds, cpu_of=("tierwise",))
        for name in m:
            rows.append(row("embeddings x8, c=16", name, m[name], None if name == "direct" else m["direct"]))

        fallback = tmp / "fallback.json"
        fallback.write_bytes(chat_body(model="fallback"))
        for c in (1, 64):
            # Same process, two routes: the bodies alternate round by round.
            alone, opened = [], []
            for _ in range(args.rounds):
                alone.append(wrk(tw.port, "/v1/chat/completions", body, c, args.seconds))
                opened.append(wrk(tw.port, "/v1/chat/completions", fallback, c, args.seconds))
            a = {k: median_of(alone, k) for k in ("rps", "p50_us", "p99_us")}
            o = {k: median_of(opened, k) for k in ("rps", "p50_us", "p99_us")}
            a["errors"] = sum(r["socket_errors"] + r["non2xx"] for r in alone)
            o["errors"] = sum(r["socket_errors"] + r["non2xx"] for r in opened)
            rows.append(row(f"fallback tier alone, c={c}", "tierwise", a))
            rows.append(row(f"local breaker open -> fallback, c={c}", "tierwise", o, a))

        stream = tmp / "stream.json"
        stream_body = chat_body(stream=True)
        stream.write_bytes(stream_body)
        ttfc = {"direct": [], "tierwise": [], "nginx": []}
        for _ in range(args.rounds):
            for name, target in [("direct", fake), ("tierwise", tw), ("nginx", nginx)]:
                ttfc[name].append(stream_ttfc(target.port, "/v1/chat/completions", stream_body, 200))
        d_first = statistics.median(x[0] for x in ttfc["direct"])
        d_last = statistics.median(x[1] for x in ttfc["direct"])
        for name in ttfc:
            first = statistics.median(x[0] for x in ttfc[name])
            last = statistics.median(x[1] for x in ttfc[name])
            extra.append(
                f"stream (42 chunks), c=1, {name:<9} first chunk p50 {first:7.0f} us (+{first - d_first:5.0f}), "
                f"last chunk p50 {last:7.0f} us (+{last - d_last:5.0f})"
            )
        m = measure([("direct", fake), ("tierwise", tw)], "/v1/chat/completions", stream, 16, args.seconds, args.rounds, cpu_of=("tierwise",))
        for name in m:
            rows.append(row("stream (42 chunks), c=16", name, m[name], None if name == "direct" else m["direct"]))

        if args.postgres:
            import uuid

            schema = "bench_" + uuid.uuid4().hex[:12]
            subprocess.run(["psql", args.postgres, "-qc", f"CREATE SCHEMA {schema}"], check=True)
            pg_url = f"{args.postgres}?options=-c%20search_path%3D{schema}"
            tw_pg = start_tierwise("tierwise-pg", tmp, fake_port, dead_port, pg_url)
            procs.append(tw_pg)
            m = measure([("direct", fake), ("tierwise", tw), ("tierwise-pg", tw_pg)], "/v1/chat/completions", body, 64, args.seconds, args.rounds, cpu_of=("tierwise", "tierwise-pg"))
            for name in m:
                rows.append(row("chat c=64, ledger SQLite vs PG", name, m[name], None if name == "direct" else m["direct"]))
            tw_pg.stop()
            procs.remove(tw_pg)
            subprocess.run(["psql", args.postgres, "-qc", f"DROP SCHEMA {schema} CASCADE"], check=False)

        if args.soak_seconds:
            extra.append(soak(tw, body, 64, args.soak_seconds, "soak c=64"))

        extra.append(f"tierwise peak RSS: {tw.peak_rss_mb():.1f} MB (VmHWM); nginx {nginx.peak_rss_mb():.1f} MB" + (f"; litellm {litellm.peak_rss_mb():.1f} MB" if litellm else ""))
        shadow_scenario(tw, tmp, body, args, rows, extra)
        limits_scenario(tw, tmp, fake_port, dead_port, args, rows, extra, procs)
        spaced_streams(tw, spaced, tmp, args, rows, extra, procs, base)
        (tmp / "spaced.json").write_bytes(chat_body(stream=True, model="spaced"))
        reload_scenario(tw, tmp, args, rows, extra)
        formats_scenario(fake, tmp, args, rows, extra, procs)
        responses_scenario(fake, tmp, args, rows, extra, procs)
        cache_scenario(fake, tmp, args, rows, extra, procs)
        print_table(rows, extra)
        print(f"\ncommand: {' '.join([sys.argv[0]] + sys.argv[1:])}")
        if args.json:
            Path(args.json).write_text(json.dumps({"rows": rows, "notes": extra}, indent=2))
    finally:
        for proc in reversed(procs):
            proc.stop()


if __name__ == "__main__":
    main()
