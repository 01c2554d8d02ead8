"""Meridian's images and deployment files, built and run with podman.

Run by scripts/test-images (part of scripts/test), which builds the images
first and passes their names in the environment. Everything listens on
loopback addresses of 127.0.19.0/24 (MERIDIAN_IMAGES_NET), on the host
network; every container, pod and secret a test starts is removed when it
ends, passed or failed.

  - the production image as built: user 65532, no shell, the health check
    is `meridian ready`, JSON logs, the same binary as the dev image and as
    the release binary the suite tested, under 40 MB; the binary static
    (a static-pie: no program interpreter, no shared library) on a base
    with no C library;
  - the image runs read-only as 65532 against PostgreSQL (a container made
    from Debian's package), reached by a host name the image's own static
    resolver looks up (DNS, through its nsswitch.conf), as the health
    check reaches the API (/etc/hosts): /readyz, a policy created with a token
    imported from a mounted file, SIGTERM drains and exits 0 in time;
  - `podman kube play` runs the migrate Job's pod and the Deployment from
    deploy/kubernetes with their Secrets and ConfigMap; the imported token
    logs in and the replicas are ready, one of them leading.
"""

import base64
import contextlib
import copy
import hashlib
import io
import json
import os
import secrets
import socket
import struct
import subprocess
import tarfile
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
IMAGE = os.environ.get("MERIDIAN_IMAGE", "localhost/meridian:test")
IMAGE_DEV = os.environ.get("MERIDIAN_IMAGE_DEV", "localhost/meridian:test-dev")
POSTGRES_IMAGE = os.environ.get("MERIDIAN_POSTGRES_IMAGE", "localhost/meridian-demo/postgres:15")
RELEASE_BIN = os.environ.get("MERIDIAN_RELEASE_BIN")
RECORDS = os.environ.get("MERIDIAN_IMAGE_RECORDS")
NET = os.environ.get("MERIDIAN_IMAGES_NET", "127.0.19")
# Unique per run, so names never collide with another run's leftovers and
# cleanup removes only what this run made.
RUN = f"mit{os.getpid()}"
# Issue 19: under 40 MB (docs/operations.md records the figure). A debug
# binary, a dynamic one on a glibc base, or a size-blind profile change
# fails here.
MAX_IMAGE_MB = 40


def podman(*args, check=True, timeout=300, **kw):
    r = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout, **kw)
    if check and r.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} -> {r.returncode}\n{r.stdout}\n{r.stderr}")
    return r


def http(method, url, token=None, body=None, content_type="application/json", timeout=5):
    """(status, body text) of one request; never raises on an HTTP status."""
    req = urllib.request.Request(url, method=method, data=body.encode() if body else None)
    if token:
        req.add_header("authorization", f"Bearer {token}")
    if body:
        req.add_header("content-type", content_type)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
        return None, str(e)


def wait_ready(base, seconds=90, what="replica"):
    deadline = time.monotonic() + seconds
    last = None
    while time.monotonic() < deadline:
        last = http("GET", f"{base}/readyz")
        if last[0] == 200:
            return
        time.sleep(0.5)
    raise AssertionError(f"{what} at {base} not ready after {seconds} s: {last}")


def policy(name, host, addr):
    """A policy whose only endpoints are loopback addresses nobody serves:
    probes fail on loopback and go nowhere else."""
    return json.dumps({
        "apiVersion": "meridian/v1",
        "kind": "GlobalTrafficPolicy",
        "metadata": {"name": name},
        "spec": {
            "host": host,
            "port": 10000,
            "protocol": "http",
            "zones": [
                {"name": "zone-a", "region": "a", "weight": 50,
                 "endpoints": [{"address": f"{addr}", "port": 1}]},
                {"name": "zone-b", "region": "b", "weight": 50,
                 "endpoints": [{"address": f"{addr}", "port": 2}]},
            ],
        },
    })


def image_files(image):
    """Every path in the image's filesystem, with its tar member."""
    ctr = podman("create", image, "serve").stdout.strip()
    try:
        with tempfile.TemporaryFile() as f:
            subprocess.run(["podman", "export", ctr], stdout=f, check=True, timeout=300)
            f.seek(0)
            with tarfile.open(fileobj=f) as tar:
                return {m.name.lstrip("./"): m for m in tar.getmembers()}
    finally:
        podman("rm", "-f", ctr, check=False)


def image_binary(image):
    """The bytes of the image's /usr/local/bin/meridian."""
    ctr = podman("create", image, "serve").stdout.strip()
    try:
        out = subprocess.run(["podman", "cp", f"{ctr}:/usr/local/bin/meridian", "-"],
                             capture_output=True, check=True, timeout=300).stdout
        with tarfile.open(fileobj=io.BytesIO(out)) as tar:
            member = tar.getmembers()[0]
            return tar.extractfile(member).read()
    finally:
        podman("rm", "-f", ctr, check=False)


def binary_sha256(image):
    return hashlib.sha256(image_binary(image)).hexdigest()


PT_DYNAMIC, PT_INTERP, DT_NEEDED, ET_DYN = 2, 3, 1, 3


def elf_linking(data):
    """(ELF type, program interpreter or None, number of DT_NEEDED shared
    libraries) of a little-endian ELF64 file: what `file` reads to say
    "static-pie linked" (ET_DYN, no interpreter, no needed library)."""
    assert data[:4] == b"\x7fELF" and data[4] == 2 and data[5] == 1, "not a little-endian ELF64 file"
    e_type = struct.unpack_from("<H", data, 16)[0]
    e_phoff = struct.unpack_from("<Q", data, 32)[0]
    e_phentsize, e_phnum = struct.unpack_from("<HH", data, 54)
    interp, needed = None, 0
    for i in range(e_phnum):
        p_type, _flags, p_offset, _vaddr, _paddr, p_filesz = struct.unpack_from(
            "<IIQQQQ", data, e_phoff + i * e_phentsize)
        if p_type == PT_INTERP:
            interp = data[p_offset:p_offset + p_filesz].rstrip(b"\0").decode()
        elif p_type == PT_DYNAMIC:
            for off in range(p_offset, p_offset + p_filesz, 16):
                tag = struct.unpack_from("<q", data, off)[0]
                if tag == 0:  # DT_NULL ends the table
                    break
                needed += tag == DT_NEEDED
    return e_type, interp, needed


def file_sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def dns_answer(query, names):
    """(name asked, reply) for one DNS query (RFC 1035 wire format): the A
    record of a name in `names` (name -> IPv4 address), no record
    (NOERROR) for its other types (getaddrinfo also asks for AAAA),
    NXDOMAIN for any other name; (None, None) for what is not a
    one-question query."""
    if len(query) < 12:
        return None, None
    qid, flags, qdcount = struct.unpack_from(">HHH", query, 0)
    if flags & 0x8000 or qdcount != 1:
        return None, None
    labels, i = [], 12
    while i < len(query) and query[i]:
        labels.append(query[i + 1:i + 1 + query[i]].decode("ascii", "replace").lower())
        i += 1 + query[i]
    if i + 5 > len(query):
        return None, None
    question = query[12:i + 5]
    qtype = struct.unpack_from(">H", query, i + 1)[0]
    name = ".".join(labels)
    address = names.get(name)
    rcode = 0 if address else 3
    answers = b""
    if address and qtype == 1:  # A
        # A pointer to the question's name, A, IN, TTL 5 s, 4 bytes.
        answers = struct.pack(">HHHIH", 0xC00C, 1, 1, 5, 4) + socket.inet_aton(address)
    header = struct.pack(">HHHHHH", qid, 0x8400 | (flags & 0x0100) | rcode, 1,
                         1 if answers else 0, 0, 0)
    return name, header + question + answers


@contextlib.contextmanager
def dns_server(addr, names):
    """A DNS server on addr:53 (UDP) answering from `names`; yields a
    resolv.conf naming only it, to mount as a container's
    /etc/resolv.conf, and the list of the names it was asked."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind((addr, 53))
    except PermissionError as e:
        raise AssertionError(f"a DNS server on {addr}:53 needs root (CAP_NET_BIND_SERVICE): {e}")
    sock.settimeout(0.2)
    stop = threading.Event()
    asked = []

    def serve():
        while not stop.is_set():
            try:
                query, peer = sock.recvfrom(512)
            except (socket.timeout, OSError):
                continue
            name, reply = dns_answer(query, names)
            if reply:
                asked.append(name)
                sock.sendto(reply, peer)
    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    d = Path(tempfile.mkdtemp(prefix="meridian-images-dns-"))
    os.chmod(d, 0o755)
    conf = d / "resolv.conf"
    conf.write_text(f"nameserver {addr}\noptions timeout:2 attempts:2\n")
    os.chmod(conf, 0o644)
    try:
        yield conf, asked
    finally:
        stop.set()
        thread.join(timeout=5)
        sock.close()
        subprocess.run(["rm", "-rf", str(d)])


def test_dns_answer():
    # A query for "db.test" of type t, id 0x1234, recursion desired.
    def query(t, name=b"\x02db\x04test\x00"):
        return struct.pack(">HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0) + name + struct.pack(">HH", t, 1)
    names = {"db.test": "127.0.19.1"}
    name, a = dns_answer(query(1), names)
    assert name == "db.test"
    assert struct.unpack_from(">HHHH", a, 0) == (0x1234, 0x8500, 1, 1)
    assert a.endswith(socket.inet_aton("127.0.19.1"))
    _, aaaa = dns_answer(query(28), names)
    assert struct.unpack_from(">HHHH", aaaa, 0) == (0x1234, 0x8500, 1, 0)
    name, other = dns_answer(query(1, b"\x05other\x04test\x00"), names)
    assert name == "other.test"
    assert struct.unpack_from(">HHHH", other, 0) == (0x1234, 0x8503, 1, 0)
    assert dns_answer(b"\x00" * 5, names) == (None, None)
    assert dns_answer(a, names) == (None, None)  # a reply, not a query


# ---------------------------------------------------------------- fixtures

@pytest.fixture(scope="session")
def postgres():
    """PostgreSQL 15 in a container (Debian's package), on NET.1:5432 of
    the host network, password from a mounted file. Yields a function
    that creates a fresh database and returns its URL."""
    tmp = Path(tempfile.mkdtemp(prefix="meridian-images-pg-"))
    password = secrets.token_hex(16)
    (tmp / "password").write_text(password)
    os.chmod(tmp / "password", 0o644)
    name = f"{RUN}-postgres"
    addr, port = f"{NET}.1", 5432
    podman("run", "-d", "--name", name, "--network", "host",
           "-e", "POSTGRES_USER=meridian", "-e", "POSTGRES_DB=meridian",
           "-e", "POSTGRES_PASSWORD_FILE=/run/secrets/postgres_password",
           "-e", f"POSTGRES_LISTEN={addr}", "-e", f"POSTGRES_PORT={port}",
           "-v", f"{tmp / 'password'}:/run/secrets/postgres_password:ro",
           "--tmpfs", "/var/lib/postgresql/data:rw,size=256m,mode=0700",
           POSTGRES_IMAGE)
    try:
        deadline = time.monotonic() + 120
        while podman("exec", name, "pg_isready", "-q", "-h", addr, "-p", str(port),
                     check=False).returncode != 0:
            assert time.monotonic() < deadline, podman("logs", name, check=False).stderr
            time.sleep(0.5)

        def create(db):
            # Through the socket, where the image trusts local users.
            podman("exec", name, "createdb", "-h", "/var/run/postgresql", "-p", str(port),
                   "-U", "meridian", db)
            return f"postgres://meridian:{password}@{addr}:{port}/{db}"
        yield create
    finally:
        podman("rm", "-f", "-v", "-t", "2", name, check=False)
        subprocess.run(["rm", "-rf", str(tmp)])


@pytest.fixture
def secrets_dir():
    """A directory mounted read-only as /run/secrets; world-readable files,
    as a mounted secret is readable by the container's user."""
    d = Path(tempfile.mkdtemp(prefix="meridian-images-secrets-"))
    os.chmod(d, 0o755)

    def put(name, value):
        (d / name).write_text(value)
        os.chmod(d / name, 0o644)
    yield d, put
    subprocess.run(["rm", "-rf", str(d)])


@contextlib.contextmanager
def containers():
    """Names of containers to remove, whatever happens."""
    names = []
    try:
        yield names
    finally:
        for n in names:
            podman("rm", "-f", "-v", "-t", "0", n, check=False)


# ------------------------------------------------------ 1. the built image

def test_the_production_image_keeps_the_dockerfiles_promises():
    info = json.loads(podman("image", "inspect", IMAGE).stdout)[0]
    config = info["Config"]
    size_mb = info["Size"] / 1e6
    print(f"\nproduction image {IMAGE}: {size_mb:.1f} MB ({info['Size']} bytes), id {info['Id'][:19]};"
          f" must be under {MAX_IMAGE_MB} MB")
    assert config.get("User") == "65532:65532", config.get("User")
    assert "MERIDIAN_LOG_FORMAT=json" in config.get("Env", [])
    assert config.get("Entrypoint") == ["/usr/local/bin/meridian"]
    assert config.get("Cmd") == ["serve"]
    # podman shows the health check beside Config, docker inside it.
    health = info.get("Healthcheck") or config.get("Healthcheck") or {}
    assert health.get("Test") == ["CMD", "/usr/local/bin/meridian", "ready"], health

    files = image_files(IMAGE)
    shells = {"sh", "bash", "dash", "ash", "zsh", "busybox", "toybox", "ksh"}
    found = [p for p in files if Path(p).name in shells]
    assert not found, f"a shell in the image: {found}"
    assert "usr/local/bin/meridian" in files
    # Nothing but the binary runs: no other executable regular file.
    executables = sorted(p for p, m in files.items()
                         if m.isfile() and m.mode & 0o111 and not p.startswith(("usr/lib", "lib")))
    assert executables == ["usr/local/bin/meridian"], executables
    r = podman("run", "--rm", "--entrypoint", "/bin/sh", IMAGE, "-c", "true", check=False)
    assert r.returncode != 0, "a shell ran"
    assert size_mb < MAX_IMAGE_MB, f"{size_mb:.1f} MB, not under the {MAX_IMAGE_MB} MB target"


def test_the_binary_is_static_on_a_base_without_a_c_library():
    binary = image_binary(IMAGE)
    e_type, interp, needed = elf_linking(binary)
    print(f"\nbinary: {len(binary) / 1e6:.1f} MB, ELF type {e_type}, interpreter {interp},"
          f" {needed} shared libraries needed")
    # A static-pie: position-independent (ASLR kept), loads itself.
    assert e_type == ET_DYN, f"ELF type {e_type}: not position-independent"
    assert interp is None, f"dynamically linked: interpreter {interp}"
    assert needed == 0, f"{needed} shared libraries needed"
    # distroless/static: nothing to link against, and what glibc reads at
    # run time for names, services, users and certificates.
    files = image_files(IMAGE)
    libs = sorted(p for p in files if ".so" in Path(p).name)
    assert not libs, f"shared libraries in the image: {libs}"
    for f in ["etc/nsswitch.conf", "etc/services", "etc/protocols", "etc/passwd", "etc/group",
              "etc/ssl/certs/ca-certificates.crt", "usr/share/zoneinfo/UTC"]:
        assert f in files, f"{f} missing from the image"


def test_dev_and_production_ship_the_same_binary_the_suite_tested():
    prod, dev = binary_sha256(IMAGE), binary_sha256(IMAGE_DEV)
    print(f"\nbinary sha256: production {prod}, dev {dev}")
    assert prod == dev, "dev and production images carry different binaries"
    if RELEASE_BIN:
        assert prod == file_sha256(RELEASE_BIN), f"the image does not ship {RELEASE_BIN}"
    if RECORDS:
        # scripts/build-image recorded it next to the SBOM.
        record = json.loads((Path(RECORDS) / "image-production.json").read_text())
        assert record["binarySha256"] == prod
        assert record["id"] == json.loads(podman("image", "inspect", IMAGE).stdout)[0]["Id"]


# ----------------------------------------------------- 2. the image runs

def test_the_image_runs_read_only_as_65532_and_drains_on_sigterm(postgres, secrets_dir):
    # By name: a static glibc resolves through its built-in `files` and
    # `dns` modules as the image's nsswitch.conf orders them. PostgreSQL's
    # name is known only to a DNS server this test runs (the container's
    # resolv.conf names nothing else), the API's only to the container's
    # /etc/hosts: if either module breaks, migrate cannot reach PostgreSQL
    # or the health check cannot reach the API.
    url = postgres("image_run")
    assert f"@{NET}.1:" in url, url
    url = url.replace(f"@{NET}.1:", "@postgres.meridian.test:")
    d, put = secrets_dir
    token = "mrd_" + secrets.token_hex(32)
    put("database_url", url)
    put("admin_token", token)
    addr = f"{NET}.2"
    api = f"http://{addr}:8080"
    drain = 5
    locked = ["--read-only", "--read-only-tmpfs=false", "--tmpfs", "/tmp:rw,size=16m",
              "--user", "65532:65532", "--cap-drop", "ALL",
              "--security-opt", "no-new-privileges", "--network", "host",
              "--add-host", f"api.meridian.test:{addr}",
              "-v", f"{d}:/run/secrets:ro"]
    dns = dns_server(f"{NET}.53", {"postgres.meridian.test": f"{NET}.1"})
    with dns as (resolv_conf, asked), containers() as names:
        locked += ["-v", f"{resolv_conf}:/etc/resolv.conf:ro"]
        for step, args in [
            ("migrate", ["migrate", "--database-url-file", "/run/secrets/database_url"]),
            ("token", ["token", "import", "--name", "admin", "--role", "admin",
                       "--file", "/run/secrets/admin_token",
                       "--database-url-file", "/run/secrets/database_url"]),
        ]:
            names.append(f"{RUN}-{step}")
            r = podman("run", "--name", names[-1], *locked, IMAGE, *args, check=False)
            assert r.returncode == 0, f"{step}: {r.stdout}\n{r.stderr}"
        # PostgreSQL was found through DNS, not some other way.
        assert "postgres.meridian.test" in asked, f"the DNS server was asked only {asked}"

        name = f"{RUN}-serve"
        names.append(name)
        podman("run", "-d", "--name", name, *locked,
               # Where the image's health check asks: by name, as above.
               "-e", "MERIDIAN_SERVER=http://api.meridian.test:8080",
               IMAGE, "serve",
               "--database-url-file", "/run/secrets/database_url", "--migrate", "false",
               "--api-addr", f"{addr}:8080", "--xds-addr", f"{addr}:18000",
               "--grpc-addr", f"{addr}:9090", "--data-dir", "/tmp/meridian",
               "--replica-id", "image-test", "--drain-seconds", str(drain))
        wait_ready(api, what=name)

        state = json.loads(podman("inspect", name).stdout)[0]
        assert state["HostConfig"]["ReadonlyRootfs"] is True
        status = Path(f"/proc/{state['State']['Pid']}/status").read_text()
        uids = next(l for l in status.splitlines() if l.startswith("Uid:")).split()[1:]
        assert set(uids) == {"65532"}, f"process uids {uids}"

        # The image's own health check, `meridian ready`.
        r = podman("healthcheck", "run", name, check=False)
        assert r.returncode == 0, f"health check: {r.stdout} {r.stderr}"

        # Authentication is on: nothing without the token, everything with it.
        body = policy("image-shop", "image-shop.example.com", f"{NET}.250")
        assert http("POST", f"{api}/api/v1/policies", body=body)[0] == 401
        status_code, text = http("POST", f"{api}/api/v1/policies", token=token, body=body)
        assert status_code == 201, text
        status_code, text = http("GET", f"{api}/api/v1/policies/image-shop", token=token)
        assert status_code == 200 and json.loads(text)["spec"]["host"] == "image-shop.example.com"

        # SIGTERM: not ready at once, gone with status 0 within the drain.
        started = time.monotonic()
        podman("kill", "--signal", "TERM", name)
        code = int(podman("wait", name, timeout=drain + 30).stdout.strip())
        took = time.monotonic() - started
        print(f"\nSIGTERM to exit: {took:.1f} s (drain {drain} s), status {code}")
        assert code == 0
        assert took <= drain + 3, f"{took:.1f} s"

        # Logs go to standard error, one JSON object a line; standard
        # output has only the "Meridian ... listening on" banners.
        r = podman("logs", name)
        lines = [l for l in r.stderr.splitlines() if l.strip()]
        assert len(lines) >= 3, f"too few log lines: {lines}"
        for line in lines:
            event = json.loads(line)
            assert "level" in event and "timestamp" in event, line
        assert any("shut" in line or "drain" in line for line in lines), "the drain is logged"
        for line in r.stdout.splitlines():
            assert line.startswith("Meridian ") and " listening on " in line, line


# --------------------------------------------- 3. kube play: Job, Deployment

def kube_docs(name):
    return list(yaml.safe_load_all((ROOT / "deploy/kubernetes" / name).read_text()))


def kube_secret(tmp_path, name, key, value):
    """The Secret `name` with `key` holding `value`, as podman 4.3 needs it.

    Its kube play ignores stringData, and writes a secret volume's files
    from `data` without base64-decoding them (while refusing a Secret whose
    data is not base64). So the podman secret is created directly, with the
    raw value under `data`."""
    f = tmp_path / f"{name}.yaml"
    f.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                                 "metadata": {"name": name, "namespace": "meridian"},
                                 "data": {key: value}}))
    podman("secret", "create", name, str(f))


def test_kube_play_runs_the_migrate_job_and_the_deployment(postgres, tmp_path):
    url = postgres("kube")
    token = "mrd_" + secrets.token_hex(32)
    (job,) = kube_docs("migrate-job.yaml")
    (deployment,) = kube_docs("deployment.yaml")
    (configmap,) = kube_docs("configmap.yaml")
    image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
    assert job["spec"]["template"]["spec"]["containers"][0]["image"] == image

    # The Secrets, made out of band as docs/operations.md says; names and
    # keys from secret.example.yaml.
    examples = {d["metadata"]["name"]: d for d in kube_docs("secret.example.yaml")}
    (db_key,) = examples["meridian-database"]["stringData"]
    (token_key,) = examples["meridian-admin-token"]["stringData"]

    # kube play runs Pods, not Jobs: the Job's pod template, as a Pod.
    template = job["spec"]["template"]
    job_pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": job["metadata"]["name"], "namespace": "meridian",
                            "labels": template["metadata"]["labels"]},
               "spec": template["spec"]}
    job_file = tmp_path / "job-pod.yaml"
    job_file.write_text(yaml.safe_dump(job_pod))

    # Two replicas of the Deployment (podman plays one pod per Deployment),
    # each on its own loopback address: on the host network they would
    # share the ConfigMap's 0.0.0.0 ports. MERIDIAN_* variables override
    # the settings file, as they would in a cluster.
    replicas = []
    for i, suffix in enumerate(["a", "b"]):
        d = copy.deepcopy(deployment)
        d["metadata"]["name"] = f"meridian-{suffix}"
        d["spec"]["replicas"] = 1
        addr = f"{NET}.{3 + i}"
        c = d["spec"]["template"]["spec"]["containers"][0]
        # Container ports only inform a cluster; podman 4.3 turns them into
        # port mappings, which the host network refuses.
        assert {p["containerPort"] for p in c.pop("ports")} == {8080, 18000, 9090}
        c["env"] = c.get("env", []) + [
            {"name": "MERIDIAN_API_ADDR", "value": f"{addr}:8080"},
            {"name": "MERIDIAN_XDS_ADDR", "value": f"{addr}:18000"},
            {"name": "MERIDIAN_GRPC_ADDR", "value": f"{addr}:9090"},
            {"name": "MERIDIAN_SERVER", "value": f"http://{addr}:8080"},
        ]
        f = tmp_path / f"deployment-{suffix}.yaml"
        f.write_text(yaml.safe_dump_all([configmap, d]))
        replicas.append((f, f"http://{addr}:8080"))

    # The image the manifests name is the one built here, under that name.
    podman("tag", IMAGE, image)
    played = []
    try:
        kube_secret(tmp_path, "meridian-database", db_key, url)
        kube_secret(tmp_path, "meridian-admin-token", token_key, token)
        podman("kube", "play", "--network", "host", str(job_file))
        played.append(job_file)
        pod = job["metadata"]["name"]
        deadline = time.monotonic() + 180
        while True:
            state = podman("inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}",
                           f"{pod}-admin-token", check=False).stdout.split()
            if state and state[0] in ("exited", "stopped"):
                break
            assert time.monotonic() < deadline, f"the Job's pod did not finish: {state}"
            time.sleep(1)
        logs = podman("logs", f"{pod}-migrate", check=False)
        migrate_code = podman("inspect", "--format", "{{.State.ExitCode}}",
                              f"{pod}-migrate", check=False).stdout.strip()
        token_logs = podman("logs", f"{pod}-admin-token", check=False)
        assert migrate_code in ("0", ""), f"migrate: {logs.stdout}{logs.stderr}"
        assert state[1] == "0", f"admin-token: {token_logs.stdout}{token_logs.stderr}"

        for f, _ in replicas:
            podman("kube", "play", "--network", "host", str(f))
            played.append(f)
        for _, base in replicas:
            wait_ready(base, seconds=120)

        # The token the Job imported logs in, on every replica; others do not.
        for _, base in replicas:
            assert http("GET", f"{base}/api/v1/policies")[0] == 401
            assert http("GET", f"{base}/api/v1/policies", token="mrd_" + "0" * 64)[0] == 401
            code, text = http("GET", f"{base}/api/v1/policies", token=token)
            assert code == 200, text
        code, text = http("POST", f"{replicas[0][1]}/api/v1/policies", token=token,
                          body=policy("kube-shop", "kube-shop.example.com", f"{NET}.251"))
        assert code == 201, text
        # The other replica serves it from the same database.
        code, _ = http("GET", f"{replicas[1][1]}/api/v1/policies/kube-shop", token=token)
        assert code == 200

        # Ready, and exactly one leads failover (the lease in PostgreSQL).
        deadline = time.monotonic() + 30
        while True:
            leaders = []
            for _, base in replicas:
                code, metrics = http("GET", f"{base}/metrics")
                assert code == 200
                leaders += [l for l in metrics.splitlines()
                            if l.startswith("meridian_failover_leader ") and l.endswith(" 1")]
            if len(leaders) == 1:
                break
            assert time.monotonic() < deadline, f"leaders: {leaders}"
            time.sleep(1)
        for f, base in replicas:
            assert http("GET", f"{base}/readyz")[0] == 200
        pods = podman("pod", "ps", "--format", "{{.Name}} {{.Status}}").stdout
        print(f"\nkube play pods:\n{pods}")
    finally:
        for f in reversed(played):
            podman("kube", "down", str(f), check=False)
        for s in ("meridian-database", "meridian-admin-token"):
            podman("secret", "rm", s, check=False)
        # kube play keeps a volume per ConfigMap and Secret; kube down (4.3)
        # leaves them.
        for v in ("meridian-config", "meridian-database", "meridian-admin-token"):
            podman("volume", "rm", "-f", v, check=False)
        podman("untag", IMAGE, image, check=False)
