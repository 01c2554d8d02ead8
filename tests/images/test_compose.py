"""The compose demo, as the README tells it: `podman-compose -f
deploy/compose.yaml up`, then stop backend-a and watch zone A's traffic
move to zone B in Envoy, PowerDNS and Route53 (moto), then start it again
and watch the traffic come back.

Every image is built beforehand by scripts/test-images (Meridian's from
deploy/Dockerfile, the others from Debian packages or PyPI on a local
Debian), under the names compose.yaml gives, so `up` builds nothing. Every
service is on the host network, on 127.0.10.x, 127.0.11.10 and
127.0.12.10. The stack is taken down (volumes too) however the test ends.
"""

import json
import os
import re
import shutil
import subprocess
import time
from xml.etree import ElementTree
from pathlib import Path

import pytest
import yaml

from test_images import http, podman

ROOT = Path(__file__).resolve().parents[2]
PROJECT = "meridian-demo"
API = "http://127.0.10.11:8080"
API_2 = "http://127.0.10.12:8080"
ENVOY = "http://127.0.10.20:10000"
PDNS = "http://127.0.10.30:8081/api/v1/servers/localhost"
MOTO = "http://127.0.10.31:5000"
TOKEN = (ROOT / "deploy/demo/secrets/admin_token").read_text().strip()
PDNS_KEY = (ROOT / "deploy/demo/secrets/pdns_api_key").read_text().strip()
AWS = "AWS4-HMAC-SHA256 Credential=demo/20260101/us-east-1/route53/aws4_request, SignedHeaders=host, Signature=0"


def compose(*args, check=True, timeout=600):
    exe = str(ROOT / ".venv/bin/podman-compose")
    if not os.path.exists(exe):
        exe = shutil.which("podman-compose")
    r = subprocess.run([exe, "-f", str(ROOT / "deploy/compose.yaml"), *args],
                       capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    if check and r.returncode != 0:
        raise AssertionError(f"podman-compose {' '.join(args)} -> {r.returncode}\n{r.stdout}\n{r.stderr}")
    return r


def container(service):
    return f"{PROJECT}_{service}_1"


def eventually(what, probe, seconds=90, every=1.0):
    """Polls probe() until it returns something true; returns that."""
    deadline = time.monotonic() + seconds
    last = None
    while time.monotonic() < deadline:
        try:
            last = probe()
        except Exception as e:  # a peer restarting refuses a connection
            last = e
        else:
            if last:
                return last
        time.sleep(every)
    raise AssertionError(f"{what}: not after {seconds} s (last: {last!r})")


def until_equal(what, probe, want, seconds=90):
    """Polls probe() until it returns want; the failure shows the last value."""
    seen = []

    def check():
        seen.append(probe())
        return seen[-1] == want
    try:
        eventually(what, check, seconds=seconds)
    except AssertionError:
        raise AssertionError(f"{what}: wanted {want!r}, last {seen[-1] if seen else None!r}")


def depends_on(service):
    deps = service.get("depends_on", {})
    if isinstance(deps, list):
        return {d: "service_started" for d in deps}
    return {d: v.get("condition", "service_started") for d, v in deps.items()}


def wait_for(dep, condition):
    """What Compose does before starting a dependent service."""
    name = container(dep)
    if condition == "service_completed_successfully":
        code = podman("wait", name, timeout=300).stdout.strip()
        logs = podman("logs", name, check=False)
        assert code == "0", f"{dep} exited {code}: {logs.stdout}\n{logs.stderr}"
    elif condition == "service_healthy":
        # The service's own health check, run as a systemd timer would.
        eventually(f"{dep} healthy", lambda: podman(
            "healthcheck", "run", name, check=False).returncode == 0, seconds=180)


def up():
    """`podman-compose up -d`, one service at a time in dependency order,
    each after its depends_on conditions hold.

    podman-compose leaves health conditions to podman, which cannot wait
    for them before 4.6 (and without systemd never runs a health check by
    itself), and podman 4.3 fails to start a container whose dependency
    chain holds an exited one-shot service (`migrate`). So the test plays
    Compose's part: it checks each condition as the compose file states
    it, with the service's own health check, and starts each service with
    `--no-deps`."""
    spec = yaml.safe_load((ROOT / "deploy/compose.yaml").read_text())
    services = spec["services"]
    started, satisfied = [], set()
    while len(started) < len(services):
        ready = [n for n in services if n not in started
                 and all(d in started for d in depends_on(services[n]))]
        assert ready, f"a dependency cycle among {set(services) - set(started)}"
        for name in ready:
            for dep, condition in depends_on(services[name]).items():
                if (dep, condition) not in satisfied:
                    wait_for(dep, condition)
                    satisfied.add((dep, condition))
            compose("up", "-d", "--no-deps", name)
            started.append(name)
    return started


@pytest.fixture(scope="module")
def stack():
    compose("down", "-v", "-t", "2", check=False)  # a previous run's leftovers
    try:
        order = up()
        print(f"\nstarted in order: {' '.join(order)}")
        wait_for("init", "service_completed_successfully")
        yield
    finally:
        ps = podman("ps", "-a", "--filter", f"label=com.docker.compose.project={PROJECT}",
                    "--format", "{{.Names}} {{.Status}}", check=False).stdout
        print(f"\ncontainers at the end:\n{ps}")
        compose("down", "-v", "-t", "5", check=False)


def status():
    code, text = http("GET", f"{API}/api/v1/policies/shop/status", token=TOKEN)
    assert code == 200, text
    return {z["name"]: z for z in json.loads(text)["zones"]}


def weights():
    return {name: z["effectiveWeight"] for name, z in status().items()}


def through_envoy(n=20):
    """Which zones answered n requests for shop.example.com through Envoy."""
    seen = []
    for _ in range(n):
        req_code, text = http_host(f"{ENVOY}/", "shop.example.com")
        if req_code == 200:
            seen.append(text.strip())
    return seen


def http_host(url, host):
    import urllib.request
    req = urllib.request.Request(url, headers={"host": host})
    try:
        with urllib.request.urlopen(req, timeout=3) as r:
            return r.status, r.read().decode()
    except Exception as e:  # 503 while Envoy has no healthy host, resets
        return getattr(e, "code", None), str(e)


def pdns_targets():
    code, text = http_with_headers(f"{PDNS}/zones/example.com.", {"X-API-Key": PDNS_KEY})
    assert code == 200, text
    for rrset in json.loads(text)["rrsets"]:
        if rrset["name"] == "shop.example.com." and rrset["type"] == "A":
            return sorted(r["content"] for r in rrset["records"] if not r.get("disabled"))
    return []


def route53_weights():
    """{target: weight} of catalog.example.com's weighted records in moto."""
    code, text = http_with_headers(f"{MOTO}/2013-04-01/hostedzonesbyname?dnsname=example.com.",
                                   {"Authorization": AWS})
    zone_id = re.search(r"<Id>/hostedzone/([^<]+)</Id>", text).group(1)
    code, text = http_with_headers(f"{MOTO}/2013-04-01/hostedzone/{zone_id}/rrset",
                                   {"Authorization": AWS})
    assert code == 200, text
    out = {}
    local = lambda el: el.tag.rsplit("}", 1)[-1]  # noqa: E731 (namespaces vary)
    for rrset in ElementTree.fromstring(text).iter():
        if local(rrset) != "ResourceRecordSet":
            continue
        fields = {local(e): (e.text or "").strip() for e in rrset.iter()}
        if fields.get("Name") != "catalog.example.com.":
            continue
        weight = int(fields["Weight"]) if fields.get("Weight") else None
        for value in rrset.iter():
            if local(value) == "Value":
                out[value.text.strip()] = weight
    return out


def http_with_headers(url, headers):
    import urllib.error
    import urllib.request
    req = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_the_demo_fails_zone_a_over_to_zone_b_and_back(stack):
    started = time.monotonic()
    # Up: both zones healthy, 50/50, both answer through Envoy, both in DNS.
    eventually("both zones healthy at 50/50",
               lambda: weights() == {"zone-a": 50, "zone-b": 50}
               and all(z["health"] == "healthy" for z in status().values()))
    assert http("GET", f"{API_2}/readyz")[0] == 200, "the second replica"
    eventually("Envoy routes to both zones",
               lambda: {"hello from zone-a", "hello from zone-b"} <= set(through_envoy()))
    until_equal("PowerDNS has both zones", pdns_targets, ["192.0.2.10", "192.0.2.20"])
    until_equal("Route53 (moto) has both zones weighted 70/30", route53_weights,
                {"192.0.2.11": 70, "192.0.2.21": 30})
    print(f"\nup and serving both zones after {time.monotonic() - started:.0f} s")

    # Zone A's backend stops: its weight moves to zone B everywhere.
    compose("stop", "-t", "1", "backend-a")
    failed = time.monotonic()
    until_equal("zone-a failed over", weights, {"zone-a": 0, "zone-b": 100}, seconds=60)
    print(f"failover decided {time.monotonic() - failed:.1f} s after backend-a stopped")
    eventually("Envoy sends everything to zone B",
               lambda: set(through_envoy()) == {"hello from zone-b"}, seconds=30)
    until_equal("PowerDNS answers zone B only", pdns_targets, ["192.0.2.20"], seconds=30)
    eventually("Route53 (moto) weighs zone A 0",
               lambda: route53_weights().get("192.0.2.11") == 0
               and route53_weights().get("192.0.2.21", 0) > 0, seconds=30)

    # It comes back: after recoverySeconds, traffic returns to zone A.
    compose("start", "backend-a")
    back = time.monotonic()
    until_equal("zone-a back at 50", weights, {"zone-a": 50, "zone-b": 50}, seconds=120)
    print(f"failback complete {time.monotonic() - back:.1f} s after backend-a started")
    eventually("Envoy routes to zone A again",
               lambda: "hello from zone-a" in through_envoy(), seconds=30)
    until_equal("PowerDNS has both zones again", pdns_targets, ["192.0.2.10", "192.0.2.20"],
                seconds=30)
    until_equal("Route53 (moto) back to 70/30", route53_weights,
                {"192.0.2.11": 70, "192.0.2.21": 30}, seconds=30)
