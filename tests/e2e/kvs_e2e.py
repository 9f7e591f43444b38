"""Helpers for the end-to-end suite: a store of kvs containers driven through
build.sh / clean.sh on a network of the suite's own, HTTP through the published
127.0.0.1 host ports, docker fault injection, and polling with timeouts.

Environment:
  KVS_E2E_NETWORK   network name           [kvs-e2e]
  KVS_E2E_SUBNET    its subnet             [10.213.0.0/16]
  KVS_E2E_PREFIX    container name prefix  [kvs-e2e-node]
  KVS_E2E_PORT_BASE host port of node 1    [18082]
  KVS_E2E_IMAGE     image                  [kvs-image]
  KVS_E2E_BUILD     1: build.sh runs cargo build and docker build once [default];
                    image: only docker build from the binary already built;
                    0: use the image as it is
  KVS_E2E_LOGS      lines of `docker logs` printed per node when a test fails [40]
"""

import ipaddress
import os
import subprocess
import sys
import time
import unittest

import requests

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
NETWORK = os.environ.get("KVS_E2E_NETWORK", "kvs-e2e")
SUBNET = os.environ.get("KVS_E2E_SUBNET", "10.213.0.0/16")
PREFIX = os.environ.get("KVS_E2E_PREFIX", "kvs-e2e-node")
PORT_BASE = int(os.environ.get("KVS_E2E_PORT_BASE", "18082"))
IMAGE = os.environ.get("KVS_E2E_IMAGE", "kvs-image")
BUILD = os.environ.get("KVS_E2E_BUILD", "1")
LOG_LINES = int(os.environ.get("KVS_E2E_LOGS", "40"))
# The port a node listens on inside its container, unless a Store says otherwise
# (build.sh --node-port; the 2020 course scripts use 8085).
NODE_PORT = 8080

# Timeouts (seconds) for HTTP calls: connect, read. Reshard and add-member move data.
HTTP_TIMEOUT = (3, 30)
ADMIN_TIMEOUT = (3, 120)


def log(msg):
    print(f"[e2e {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def script_env():
    env = dict(os.environ)
    env.update(
        KVS_NETWORK=NETWORK,
        KVS_SUBNET=SUBNET,
        KVS_PREFIX=PREFIX,
        KVS_PORT_BASE=str(PORT_BASE),
        KVS_IMAGE=IMAGE,
        KVS_HOST_IP="127.0.0.1",
    )
    # A Store passes these as options; build.sh calls without them get build.sh's defaults.
    for name in ("KVS_NODE_PORT", "KVS_START_GAP"):
        env.pop(name, None)
    return env


def run(cmd, check=True, quiet=False, timeout=600):
    """Runs a command from the repo root; returns CompletedProcess (text)."""
    p = subprocess.run(
        cmd, cwd=ROOT, env=script_env(), capture_output=True, text=True, timeout=timeout
    )
    if check and p.returncode != 0:
        raise AssertionError(
            f"command failed ({p.returncode}): {' '.join(cmd)}\n"
            f"--- stdout\n{p.stdout}\n--- stderr\n{p.stderr}"
        )
    if not quiet and p.stdout.strip():
        log(f"{' '.join(cmd)}:\n{p.stdout.rstrip()}")
    return p


def docker(*args, check=True):
    return run(["docker", *args], check=check, quiet=True)


def clean():
    run(["./clean.sh"], quiet=True)


_image_ready = False


def build_image():
    """Once per suite (every module's setUpModule calls it): the image the stores run,
    per KVS_E2E_BUILD; also removes what an interrupted earlier run left behind."""
    global _image_ready
    if _image_ready:
        return
    clean()
    t = time.monotonic()
    if BUILD == "1":
        run(["./build.sh", "--build-only"], quiet=True, timeout=1800)
    elif BUILD == "image":
        run(["./build.sh", "--build-only", "--no-cargo"], quiet=True)
    else:
        docker("image", "inspect", IMAGE)
    log(f"image {IMAGE} ready in {time.monotonic() - t:.1f}s (KVS_E2E_BUILD={BUILD})")
    _image_ready = True


def wait_until(fn, timeout, interval=0.2, what="condition"):
    """Polls fn() until it returns a truthy value, which is returned. Exceptions from fn
    (a refused connection, a failed assert) count as 'not yet'. Raises AssertionError
    after `timeout` seconds, with the last value or exception."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            value = fn()
            if value:
                return value
            last = value
        except (requests.RequestException, AssertionError, ValueError, KeyError) as e:
            last = e
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")
        time.sleep(interval)


class Timer:
    def __init__(self, what):
        self.what = what

    def __enter__(self):
        self.start = time.monotonic()
        return self

    def __exit__(self, *exc):
        self.elapsed = time.monotonic() - self.start
        log(f"{self.what}: {self.elapsed:.2f}s")
        return False


class Store:
    """A store started by build.sh: nodes 1..n (plus an extra node n+1 once added).

    node_port: the port inside the containers (build.sh --node-port); shard_count=False
    starts the nodes without SHARD_COUNT (build.sh --no-shard-count: they form one shard
    of all of them, and `shards` is then 1); start_gap: seconds between starting two
    nodes (build.sh --start-gap)."""

    def __init__(self, nodes, shards, api_format="2019", node_port=NODE_PORT,
                 shard_count=True, start_gap=0):
        self.n = nodes
        self.shards = shards if shard_count else 1
        self.format = api_format
        self.node_port = int(node_port)
        self.shard_count = shard_count
        self.start_gap = start_gap
        self.extra_started = False
        self.session = requests.Session()
        self.session.trust_env = False  # never through a proxy: loopback only

    # ---- layout (the same arithmetic as build.sh)
    def name(self, i):
        return f"{PREFIX}{i}"

    def ip(self, i):
        return str(ipaddress.ip_network(SUBNET).network_address + i + 1)

    def addr(self, i):
        return f"{self.ip(i)}:{self.node_port}"

    def port(self, i):
        return PORT_BASE + i - 1

    def url(self, i, path):
        return f"http://127.0.0.1:{self.port(i)}{path}"

    @property
    def indexes(self):
        last = self.n + 1 if self.extra_started else self.n
        return list(range(1, last + 1))

    def addrs(self, indexes=None):
        return sorted((self.addr(i) for i in (indexes or self.indexes)), key=addr_key)

    # ---- lifecycle
    def layout_args(self):
        """The build.sh options that describe this store (every build.sh call repeats them)."""
        args = ["-n", str(self.n)]
        args += ["-s", str(self.shards)] if self.shard_count else ["--no-shard-count"]
        args += ["--format", self.format, "--node-port", str(self.node_port)]
        return args

    def start(self):
        args = self.layout_args()
        if self.start_gap:
            args += ["--start-gap", str(self.start_gap)]
        with Timer(f"build.sh {' '.join(args)}"):
            run(["./build.sh", "--no-build", *args, "--timeout", "90"])
        self.extra_started = False

    def start_extra(self):
        """Starts node n+1 without SHARD_COUNT (build.sh --only-add-node)."""
        with Timer(f"build.sh --only-add-node ({self.name(self.n + 1)})"):
            run(["./build.sh", "--no-build", "--only-add-node", *self.layout_args(),
                 "--timeout", "60"])
        self.extra_started = True
        return self.n + 1

    def logs(self, lines=LOG_LINES):
        out = []
        for i in self.indexes:
            p = docker("logs", "--tail", str(lines), self.name(i), check=False)
            out.append(f"---- docker logs --tail {lines} {self.name(i)}\n{p.stdout}{p.stderr}")
        return "\n".join(out)

    # ---- HTTP
    def request(self, method, i, path, body=None, timeout=HTTP_TIMEOUT, raw=None):
        kwargs = {"timeout": timeout}
        if raw is not None:
            kwargs["data"] = raw
            kwargs["headers"] = {"Content-Type": "application/json"}
        elif body is not None:
            kwargs["json"] = body
        return self.session.request(method, self.url(i, path), **kwargs)

    def get(self, i, path, body=None, **kw):
        return self.request("GET", i, path, body, **kw)

    def put(self, i, path, body=None, **kw):
        return self.request("PUT", i, path, body, **kw)

    def delete(self, i, path, body=None, **kw):
        return self.request("DELETE", i, path, body, **kw)

    def kv_put(self, i, key, value, meta=""):
        return self.put(i, f"/key-value-store/{key}", {"value": value, "causal-metadata": meta})

    def kv_get(self, i, key, meta=None):
        body = None if meta is None else {"causal-metadata": meta}
        return self.get(i, f"/key-value-store/{key}", body)

    def kv_delete(self, i, key, meta=""):
        return self.delete(i, f"/key-value-store/{key}", {"causal-metadata": meta})

    def lst(self, value):
        """A list field in this store's format, as a Python list."""
        if self.format == "2020":
            assert isinstance(value, list), f"format 2020 wants a JSON array, got {value!r}"
            return value
        assert isinstance(value, str), f"format 2019 wants a comma string, got {value!r}"
        return [v for v in value.split(",") if v]

    def view(self, i):
        r = self.get(i, "/key-value-store-view", timeout=(1, 3))
        r.raise_for_status()
        return [v for v in r.json()["view"].split(",") if v]

    def shard_ids(self, i):
        r = self.get(i, "/key-value-store-shard/shard-ids")
        assert r.status_code == 200, (r.status_code, r.text)
        return self.lst(r.json()["shard-ids"])

    def node_shard(self, i):
        r = self.get(i, "/key-value-store-shard/node-shard-id")
        assert r.status_code == 200, (r.status_code, r.text)
        return r.json()["shard-id"]

    def members(self, i, shard):
        r = self.get(i, f"/key-value-store-shard/shard-id-members/{shard}")
        assert r.status_code == 200, (r.status_code, r.text)
        return self.lst(r.json()["shard-id-members"])

    def key_count(self, i, shard):
        r = self.get(i, f"/key-value-store-shard/shard-id-key-count/{shard}")
        assert r.status_code == 200, (r.status_code, r.text)
        return r.json()["shard-id-key-count"]

    def shard_map(self, i):
        """{shard id: [members]} as node i answers it."""
        return {s: self.members(i, s) for s in self.shard_ids(i)}

    def index_of(self, addr):
        for i in range(1, self.n + 2):
            if self.addr(i) == addr:
                return i
        raise KeyError(addr)

    # ---- docker faults
    def docker(self, verb, i):
        docker(verb, self.name(i))

    def disconnect(self, i):
        docker("network", "disconnect", NETWORK, self.name(i))

    def connect(self, i):
        docker("network", "connect", "--ip", self.ip(i), NETWORK, self.name(i))

    def docker_inspect(self, i, template):
        return docker("inspect", "--format", template, self.name(i), check=False).stdout

    def is_paused(self, i):
        return self.docker_inspect(i, "{{.State.Paused}}").strip() == "true"

    def is_connected(self, i):
        p = docker("inspect", "--format", "{{json .NetworkSettings.Networks}}", self.name(i),
                   check=False)
        return NETWORK in p.stdout


def addr_key(addr):
    ip, port = addr.rsplit(":", 1)
    return (tuple(int(o) for o in ip.split(".")), int(port))


class StoreTestCase(unittest.TestCase):
    """A test class with a store of its own: cleaned before, started once, cleaned after
    (even when setUpClass fails). When a test fails, the nodes' logs are printed."""

    NODES = 4
    SHARDS = 2
    FORMAT = "2019"
    NODE_PORT = NODE_PORT   # inside the containers (build.sh --node-port)
    SHARD_COUNT = True      # False: build.sh --no-shard-count (one shard of every node)
    START_GAP = 0           # seconds between starting two nodes (build.sh --start-gap)
    store = None

    @classmethod
    def setUpClass(cls):
        cls.addClassCleanup(clean)
        cls.class_start = time.monotonic()
        clean()
        cls.store = Store(cls.NODES, cls.SHARDS, cls.FORMAT, node_port=cls.NODE_PORT,
                          shard_count=cls.SHARD_COUNT, start_gap=cls.START_GAP)
        cls.store.start()

    @classmethod
    def tearDownClass(cls):
        log(f"{cls.__name__}: {time.monotonic() - cls.class_start:.1f}s in all")

    def run(self, result=None):
        before = len(result.failures) + len(result.errors) if result else 0
        start = time.monotonic()
        out = super().run(result)
        log(f"{self.id().split('.', 1)[1]}: {time.monotonic() - start:.1f}s")
        if result and len(result.failures) + len(result.errors) > before and self.store:
            try:
                log(f"{self.id()} failed; container logs follow\n{self.store.logs()}")
            except Exception as e:  # never hide the failure itself
                log(f"(could not read container logs: {e})")
        return out

    # ---- shared assertions
    def assertBody(self, r, status, body):
        self.assertEqual((r.status_code, r.json()), (status, body), r.text)

    def assertVersioned(self, r, status, message, extra):
        """A key response carrying V: exact keys, version == causal-metadata (2019)."""
        self.assertEqual(r.status_code, status, r.text)
        got = r.json()
        want_keys = {"message", "causal-metadata", *extra}
        if self.store.format == "2019" or "version" in got:
            want_keys.add("version")
        self.assertEqual(set(got), want_keys, r.text)
        self.assertEqual(got["message"], message)
        self.assertIsInstance(got["causal-metadata"], str)
        self.assertNotEqual(got["causal-metadata"], "")
        if "version" in got:
            self.assertEqual(got["version"], got["causal-metadata"])
        for k, v in extra.items():
            if v is not None:
                self.assertEqual(got[k], v, r.text)
        if "shard-id" in extra:
            self.assertIsInstance(got["shard-id"], str)
        return got

    def assertViewsAll(self, timeout=20, indexes=None):
        store = self.store
        want = store.addrs(indexes)

        def every_view_full():
            return all(store.view(i) == want for i in (indexes or store.indexes))
        wait_until(every_view_full, timeout, what=f"every view == {want}")
