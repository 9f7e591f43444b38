"""The dashboard (/dashboard/) in headless Chromium, driven by Selenium, against a store of
three local kvs processes on loopback addresses (one shard).

Run it with tests/browser/run.sh, which installs Chromium, chromedriver and selenium and
builds the binary. Environment:
  KVS_BIN            the kvs binary        [target/x86_64-unknown-linux-gnu/debug/kvs]
  KVS_BROWSER_SEED   seed of the addresses, keys and values [random, printed]
  KVS_BROWSER_KEEP   1: keep the temporary directory (node logs, screenshots)
  KVS_BROWSER_DOCS   1: also save the screenshot as docs/dashboard.png (the README's)

Every wait polls with a timeout; nothing sleeps a fixed time. Whatever happens, the nodes and
the browser are stopped and the temporary directory is removed (module cleanups, and atexit
for an interrupted run); a failing run prints the tails of the node logs first.
"""

import atexit
import base64
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.error
import urllib.parse
import urllib.request

from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BINARY = os.environ.get("KVS_BIN") or os.path.join(
    ROOT, "target", "x86_64-unknown-linux-gnu", "debug", "kvs"
)
SEED = int(os.environ.get("KVS_BROWSER_SEED") or random.SystemRandom().randrange(2**32))
RNG = random.Random(SEED)
DOCS_SCREENSHOT = os.path.join(ROOT, "docs", "dashboard.png")

NODES = 3
HTTP_TIMEOUT = 10
READY_TIMEOUT = 30
# How long the page may take to show a change: a status poll every 2 s, and the gossip
# failure detector's few seconds for a killed node.
PAGE_TIMEOUT = 15
# The admin token the store is started with (the admin forms must send it).
ADMIN_TOKEN = f"dash-token-{RNG.randrange(10**9)}"
# A few keys present before the page opens, so that the listing (and the screenshot) shows
# a store in use.
SEED_KEYS = {
    "user:1001": '{"name": "Ada", "plan": "pro"}',
    "user:1002": '{"name": "Grace", "plan": "free"}',
    "config/feature-flags": "dark-mode,beta-search",
    "greeting": "hello, world",
    f"session:{RNG.randrange(16**6):06x}": f"ttl={RNG.randrange(60, 3600)}",
    "counter": str(RNG.randrange(1000)),
}


def log(msg):
    print(f"[browser {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def wait_until(fn, timeout, what):
    """Polls fn() until it returns a truthy value, which is returned; AssertionError after
    `timeout` seconds with the last value or exception."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            value = fn()
            if value:
                return value
            last = value
        except (OSError, ValueError, AssertionError) as e:
            last = e
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


# ---------------------------------------------------------------------------------------
# HTTP to the store, as curl would

def http(method, url, body=None):
    """(status, parsed JSON body) of one request; an HTTP error status is an answer too."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


# ---------------------------------------------------------------------------------------
# The store: three processes

def free_on(ip, port):
    """Whether TCP and UDP (gossip) `port` are free on `ip`."""
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind((ip, port))
            except OSError:
                return False
    return True


def pick_addresses(n):
    """n addresses 127.A.B.2.. on one port, A and B from the seed: away from the Rust
    harness's (127.<1..250>..., ports 20000..32700) and from scripts/local-cluster.sh
    (127.0.0.x:8080)."""
    for _ in range(200):
        prefix = f"127.{RNG.randrange(200, 255)}.{RNG.randrange(1, 255)}"
        port = RNG.randrange(10000, 19999)
        ips = [f"{prefix}.{i + 2}" for i in range(n)]
        if all(free_on(ip, port) for ip in ips):
            return [f"{ip}:{port}" for ip in ips]
    raise RuntimeError("no free loopback addresses found")


class Store:
    def __init__(self, workdir):
        self.workdir = workdir
        self.addrs = pick_addresses(NODES)
        self.procs = [None] * NODES

    def url(self, i, path):
        return f"http://{self.addrs[i]}{path}"

    def key_url(self, i, key):
        return self.url(i, "/key-value-store/" + urllib.parse.quote(key, safe=""))

    def log_path(self, i):
        return os.path.join(self.workdir, f"node{i}.log")

    def start(self):
        env = dict(os.environ)
        env.update(
            VIEW=",".join(self.addrs),
            SHARD_COUNT="1",
            API_FORMAT="2019",
            KVS_IN_MEMORY="true",
            KVS_WORKERS="1",
            KVS_ADMIN_TOKEN=ADMIN_TOKEN,
            RUST_LOG="info",
        )
        for i, addr in enumerate(self.addrs):
            env.update(SOCKET_ADDRESS=addr, BIND_ADDRESS=addr)
            with open(self.log_path(i), "wb") as out:
                self.procs[i] = subprocess.Popen(
                    [BINARY], env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out
                )
        log(f"started {NODES} nodes: {', '.join(self.addrs)}")

    def wait_ready(self):
        """Until every node's view names every node."""
        for i in range(NODES):
            wait_until(lambda i=i: self.sees_everyone(i), READY_TIMEOUT, f"node {i}'s view")

    def sees_everyone(self, i):
        self.assert_running()
        status, body = http("GET", self.url(i, "/key-value-store-view"))
        return status == 200 and set(body["view"].split(",")) == set(self.addrs)

    def assert_running(self):
        for i, proc in enumerate(self.procs):
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"node {i} exited with {proc.returncode}")

    def kill(self, i):
        """SIGKILL, as a crash."""
        proc, self.procs[i] = self.procs[i], None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)

    def stop(self):
        for i in range(NODES):
            self.kill(i)

    def print_log_tails(self, lines=30):
        for i in range(NODES):
            try:
                with open(self.log_path(i), errors="replace") as f:
                    tail = f.readlines()[-lines:]
            except OSError as e:
                tail = [f"<cannot read: {e}>\n"]
            sys.stderr.write(f"---- node {i} ({self.addrs[i]}) log tail\n{''.join(tail)}")


# ---------------------------------------------------------------------------------------
# The browser

def chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    raise RuntimeError("Chromium not found (tests/browser/run.sh installs it)")


def start_browser(workdir):
    options = webdriver.ChromeOptions()
    options.binary_location = chromium()
    for arg in (
        "--headless=new",
        # Root (CI) cannot use Chromium's sandbox.
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--disable-extensions",
        "--disable-background-networking",
        "--no-first-run",
        "--no-default-browser-check",
        "--force-device-scale-factor=1",
        "--window-size=1280,1000",
        "--lang=en-US",
        f"--user-data-dir={os.path.join(workdir, 'chromium-profile')}",
    ):
        options.add_argument(arg)
    driver_path = shutil.which("chromedriver")
    if not driver_path:
        raise RuntimeError("chromedriver not found (tests/browser/run.sh installs it)")
    # An explicit driver path: Selenium Manager, which would download one, is never run.
    service = Service(
        executable_path=driver_path, log_output=os.path.join(workdir, "chromedriver.log")
    )
    return webdriver.Chrome(service=service, options=options)


# ---------------------------------------------------------------------------------------
# Module fixture: one store and one browser for every test

WORKDIR = None
STORE = None
BROWSER = None
_cleaned = False


def setUpModule():
    global WORKDIR, STORE, BROWSER
    log(f"seed {SEED} (KVS_BROWSER_SEED={SEED} repeats this run); binary {BINARY}")
    WORKDIR = tempfile.mkdtemp(prefix="kvs-browser-")
    atexit.register(cleanup)
    unittest.addModuleCleanup(cleanup)
    started = time.monotonic()
    STORE = Store(WORKDIR)
    STORE.start()
    try:
        STORE.wait_ready()
        for key, value in SEED_KEYS.items():
            status, body = http("PUT", STORE.key_url(0, key), {"value": value})
            assert status == 201, (status, body)
    except Exception:
        STORE.print_log_tails()
        raise
    log(f"store ready with {len(SEED_KEYS)} keys in {time.monotonic() - started:.1f}s")
    BROWSER = start_browser(WORKDIR)
    BROWSER.get(STORE.url(0, "/"))
    log(f"browser ready after {time.monotonic() - started:.1f}s")


def cleanup():
    """Stops the browser and the nodes, removes the temporary directory; runs once."""
    global _cleaned
    if _cleaned:
        return
    _cleaned = True
    if BROWSER is not None:
        try:
            BROWSER.quit()
        except Exception as e:  # a browser that died must not stop the rest of the cleanup
            log(f"browser quit: {e}")
    if STORE is not None:
        STORE.stop()
    if WORKDIR and os.environ.get("KVS_BROWSER_KEEP") == "1":
        log(f"kept {WORKDIR}")
    elif WORKDIR:
        shutil.rmtree(WORKDIR, ignore_errors=True)


class DashboardTest(unittest.TestCase):
    """Numbered: they share the store, and the last one kills a node."""

    def setUp(self):
        self.page = BROWSER
        self.addCleanup(self.report_failure)

    def report_failure(self):
        # unittest tells a cleanup nothing of the test's fate; its result (reached through
        # the private _outcome) already holds the failure (Python 3.11+).
        result = self._outcome.result
        if not any(test is self for test, _ in result.failures + result.errors):
            return
        STORE.print_log_tails()
        path = os.path.join(WORKDIR, f"{self._testMethodName}-failed.png")
        try:
            self.page.save_screenshot(path)
            log(f"screenshot of the failure: {path} (KVS_BROWSER_KEEP=1 keeps it)")
        except Exception as e:  # the browser may be what failed
            log(f"no screenshot of the failure: {e}")

    # -- helpers ---------------------------------------------------------------------------

    def wait(self, condition, what, timeout=PAGE_TIMEOUT):
        """Polls condition(driver) until truthy; an element that the page re-rendered in the
        meantime counts as 'not yet'."""
        try:
            return WebDriverWait(
                self.page, timeout, poll_frequency=0.1,
                ignored_exceptions=(StaleElementReferenceException,),
            ).until(condition)
        except TimeoutException:
            self.fail(f"the page did not show {what} within {timeout}s")

    def css(self, selector):
        return self.page.find_elements(By.CSS_SELECTOR, selector)

    def by_id(self, element_id):
        return self.page.find_element(By.ID, element_id)

    def nodes_shown(self):
        """{address: {up, shard, state, keys}} of the shards' node rows, read in one script: the
        page renders them anew at every poll, which would make an element found in one
        step stale in the next."""
        return self.page.execute_script("""
            const rows = {};
            for (const tr of document.querySelectorAll("#shards tr.node")) {
              rows[tr.dataset.node] = {
                up: tr.dataset.up, shard: tr.dataset.shard,
                state: tr.querySelector(".state").textContent,
                keys: tr.querySelector(".keys").textContent,
              };
            }
            return rows;""")

    def fill(self, element_id, text):
        field = self.by_id(element_id)
        field.clear()
        field.send_keys(text)

    def visible(self, element_id):
        """The element, once it is displayed."""
        def shown(driver):
            element = driver.find_element(By.ID, element_id)
            return element if element.is_displayed() else None
        return self.wait(shown, f"#{element_id}")

    def result_of(self, element_id, expected, what):
        """Waits until a result paragraph shows `expected`; returns (ok, text)."""
        def shown(driver):
            element = driver.find_element(By.ID, element_id)
            if element.is_displayed() and expected in element.text:
                return element.get_attribute("data-ok") == "true", element.text
            return None
        return self.wait(shown, what)

    def key_button(self, key):
        """The listing's button of `key`, or None (compared in the page: a key may hold any
        character, which a CSS selector would need escaping for)."""
        return self.page.execute_script(
            "return [...document.querySelectorAll('#key-list button.key')]"
            ".find((b) => b.dataset.key === arguments[0]) || null",
            key,
        )

    def list_prefix(self, prefix):
        self.fill("prefix", prefix)
        self.by_id("list-keys").click()

    @staticmethod
    def value_on(i, key):
        status, body = http("GET", STORE.key_url(i, key))
        return body["value"] if status == 200 else None

    def session_metadata(self):
        return self.page.execute_script(
            "return sessionStorage.getItem('kvs-dashboard.causal-metadata')"
        )

    def screenshot(self, name, also=None):
        """A PNG of the whole page (beyond the window's height) in the temporary directory,
        and at `also`."""
        size = self.page.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
        shot = self.page.execute_cdp_cmd("Page.captureScreenshot", {
            "format": "png",
            "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1},
        })
        path = os.path.join(WORKDIR, name)
        with open(path, "wb") as f:
            f.write(base64.b64decode(shot["data"]))
        if also and os.environ.get("KVS_BROWSER_DOCS") == "1":
            shutil.copyfile(path, also)
        else:
            also = None
        log(f"screenshot {path}" + (f" and {also}" if also else ""))

    # -- tests -----------------------------------------------------------------------------

    def test_1_the_page_shows_every_node_up_in_its_shard(self):
        self.assertTrue(self.page.current_url.endswith("/dashboard/"), self.page.current_url)
        self.assertEqual(self.page.title, "kvs dashboard")
        self.wait(lambda d: d.find_element(By.ID, "poll-state").get_attribute("data-state")
                  == "live", "live status")
        def everyone_up(driver):
            rows = self.nodes_shown()
            return sorted(rows) == sorted(STORE.addrs) and all(
                (r["up"], r["shard"], r["state"]) == ("true", "0", "up") for r in rows.values())
        self.wait(everyone_up, f"{NODES} nodes up in shard 0")
        shards = self.css("#shards article.shard")
        self.assertEqual([s.get_attribute("data-shard") for s in shards], ["0"])
        self.assertEqual(self.by_id("this-node").text, STORE.addrs[0])
        # The listing, asked for when the page opened, shows the keys already there.
        self.wait(lambda d: all(self.key_button(k) for k in SEED_KEYS), "the seeded keys")

    def test_2_a_key_put_in_the_page_is_in_the_store(self):
        key = f"dash:{RNG.randrange(10**6)}"
        value = f'{{"theme": "dark", "lucky": {RNG.randrange(100)}, "note": "ünïcode ✓"}}'
        self.fill("put-key", key)
        self.fill("put-value", value)
        self.by_id("put-submit").click()
        ok, text = self.result_of("kv-result", f"PUT {key}: Added successfully", "the PUT's answer")
        self.assertTrue(ok, text)
        self.wait(lambda d: self.key_button(key), f"{key} in the listing")
        self.wait(lambda d: d.find_element(By.ID, "view-value").text == value, "the value")
        for i in range(NODES):
            wait_until(lambda i=i: self.value_on(i, key) == value, HTTP_TIMEOUT,
                       f"GET {key} on node {i} = the page's value")
        # The page keeps the metadata of its answers: after writing `key` (and reading it
        # back), the session's is the one the PUT returned, which a GET without metadata
        # returns too.
        _, plain = http("GET", STORE.key_url(0, key))
        self.assertEqual(self.session_metadata(), plain["causal-metadata"])
        # Each node's key count comes by gossip, a few seconds late: the screenshot waits for
        # it, so that it shows the store as it is.
        count = str(len(SEED_KEYS) + 1)
        self.wait(lambda d: all(r["keys"] == count for r in self.nodes_shown().values()),
                  f"{count} keys on every node")
        self.screenshot("dashboard.png", also=DOCS_SCREENSHOT)

    def test_3_a_key_deleted_in_the_page_is_gone_from_the_store(self):
        # A key with a slash, and markup in the value: both must be shown as text.
        key = f"del/<i>{RNG.randrange(10**6)}</i>"
        value = '<img src="x" id="injected" onerror="document.title=\'pwned\'"> & <b>not bold</b>'
        status, body = http("PUT", STORE.key_url(0, key), {"value": value})
        self.assertEqual(status, 201, body)
        self.list_prefix("del/")
        button = self.wait(lambda d: self.key_button(key), f"{key} in the listing")
        self.assertEqual(button.text, key)
        button.click()
        self.wait(lambda d: d.find_element(By.ID, "view-value").text == value, "the value, as text")
        self.assertEqual(self.css("#injected"), [])
        self.assertEqual(self.page.title, "kvs dashboard")
        self.by_id("delete-key").click()
        ok, text = self.result_of("kv-result", f"DELETE {key}: Deleted successfully", "the DELETE's answer")
        self.assertTrue(ok, text)
        self.wait(lambda d: self.key_button(key) is None, f"{key} gone from the listing")
        for i in range(NODES):
            wait_until(lambda i=i: http("GET", STORE.key_url(i, key))[0] == 404,
                       HTTP_TIMEOUT, f"GET {key} = 404 on node {i}")
        self.list_prefix("")

    def test_3b_the_stores_errors_are_shown_readably(self):
        self.fill("put-key", "k" * 51)
        self.fill("put-value", "v")
        self.by_id("put-submit").click()
        ok, text = self.result_of("kv-result", "400: Key is too long (Error in PUT)", "the error")
        self.assertFalse(ok, text)

    def test_4_admin_changes_are_confirmed_and_the_answer_shown(self):
        self.fill("admin-token", "")
        self.fill("add-shard", "7")
        self.fill("add-address", "127.0.0.254:9")
        self.by_id("add-member").click()
        confirm = self.visible("confirm")
        self.assertIn("127.0.0.254:9", confirm.text)
        self.assertIn("shard 7", confirm.text)
        self.by_id("confirm-no").click()
        self.assertFalse(self.by_id("confirm").is_displayed())
        self.assertFalse(self.by_id("admin-result").is_displayed(), "cancelled, yet sent")

        # Without the token the store refuses; the page shows its error.
        self.by_id("add-member").click()
        self.by_id("confirm-yes").click()
        ok, text = self.result_of("admin-result", "401: Admin token required", "the refusal")
        self.assertFalse(ok, text)

        self.fill("admin-token", ADMIN_TOKEN)
        self.assertEqual(self.page.execute_script(
            "return sessionStorage.getItem('kvs-dashboard.admin-token')"), ADMIN_TOKEN)
        self.by_id("add-member").click()
        self.by_id("confirm-yes").click()
        ok, text = self.result_of("admin-result", "404: Shard ID does not exist", "the store's error")
        self.assertFalse(ok, text)

        self.fill("shard-count", "2")
        self.by_id("reshard").click()
        self.assertIn("2 shards", self.by_id("confirm-text").text)
        self.by_id("confirm-yes").click()
        ok, text = self.result_of(
            "admin-result", "400: Not enough nodes to provide fault-tolerance", "the reshard's answer")
        self.assertFalse(ok, text)
        self.assertEqual(len(self.css("#shards article.shard")), 1)

    def test_5_a_killed_node_is_shown_down(self):
        victim = STORE.addrs[NODES - 1]
        self.wait(lambda d: self.nodes_shown()[victim]["up"] == "true", f"{victim} up")
        killed = time.monotonic()
        STORE.kill(NODES - 1)
        shown = self.wait(lambda d: (lambda rows: rows[victim]["up"] == "false" and rows)(
            self.nodes_shown()), f"{victim} down")
        log(f"{victim} shown down {time.monotonic() - killed:.1f}s after SIGKILL")
        self.assertEqual(shown[victim]["state"], "down")
        for addr in STORE.addrs[:NODES - 1]:
            self.assertEqual(shown[addr]["up"], "true", addr)
        self.assertIn("1 down", self.by_id("cluster-summary").text)
        self.screenshot("dashboard-node-down.png")


if __name__ == "__main__":
    unittest.main(verbosity=2)
