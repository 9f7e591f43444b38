"""What a Kubernetes StatefulSet gives a pod, reproduced with Docker (issue 14): containers
whose only identity is a DNS name (network aliases kvs-0.kvs ... kvs-5.kvs on a network of
this module's own), each with a named volume, VIEW derived from the names
(KVS_STATEFULSET_REPLICAS). The store forms from names alone; a pod removed and created
again under its name with another IP rejoins with its data and is reached by name; a rolling
restart of every pod under a steady write load loses no acknowledged write and answers no
5xx but the contract's 503.

Everything this module creates carries the label kvs.e2e=names and is removed before and
after it runs, also when a test fails.
"""

import ipaddress
import random
import threading
import time
import unittest

import requests

from kvs_e2e import IMAGE, build_image, docker, log, wait_until

NETWORK = "kvs-e2e-names"
SUBNET = "10.214.0.0/16"
LABEL = "kvs.e2e=names"
PODS = 6
SHARDS = 2
PORT_BASE = 18182
SECRET = "e2e-names-cluster-secret-0123456789"
HTTP_TIMEOUT = (2, 30)


def remove_everything():
    ids = docker("ps", "-aq", "--filter", f"label={LABEL}", check=False).stdout.split()
    if ids:
        docker("rm", "-f", *ids, check=False)
    vols = docker("volume", "ls", "-q", "--filter", f"label={LABEL}", check=False).stdout.split()
    if vols:
        docker("volume", "rm", "-f", *vols, check=False)
    docker("network", "rm", NETWORK, check=False)


def setUpModule():
    build_image()
    remove_everything()
    unittest.addModuleCleanup(remove_everything)
    docker("network", "create", "--subnet", SUBNET, "--label", LABEL, NETWORK)


class Pods:
    """Six "pods" kvs-0..kvs-5: container kvs-e2e-pod-<i>, DNS name kvs-<i>.kvs, volume
    kvs-e2e-pod-<i>-data, host port PORT_BASE+i. Each (re)creation takes a new IP."""

    def __init__(self):
        self.generation = [0] * PODS
        self.http = requests.Session()
        self.http.trust_env = False

    def container(self, i):
        return f"kvs-e2e-pod-{i}"

    def identity(self, i):
        return f"kvs-{i}.kvs:8080"

    def ip(self, i):
        base = ipaddress.ip_network(SUBNET).network_address
        return str(base + 10 + i + 16 * self.generation[i])

    def url(self, i, path):
        return f"http://127.0.0.1:{PORT_BASE + i}{path}"

    def create(self, i):
        docker(
            "run", "-d", "--name", self.container(i), "--label", LABEL,
            "--network", NETWORK, "--ip", self.ip(i), "--network-alias", f"kvs-{i}.kvs",
            "-p", f"127.0.0.1:{PORT_BASE + i}:8080",
            "--mount", f"type=volume,src=kvs-e2e-pod-{i}-data,dst=/data,"
                       f"volume-label={LABEL}",
            "-e", f"SOCKET_ADDRESS={self.identity(i)}",
            "-e", f"KVS_STATEFULSET_REPLICAS={PODS}",
            "-e", f"SHARD_COUNT={SHARDS}",
            "-e", "KVS_RELAY_PORT=8081",
            "-e", f"KVS_CLUSTER_SECRET={SECRET}",
            "-e", "KVS_WORKERS=1",
            IMAGE,
        )

    def delete(self, i):
        """`kubectl delete pod`: SIGTERM, then the container is gone (its volume stays)."""
        docker("stop", "-t", "20", self.container(i))
        docker("rm", self.container(i))
        self.generation[i] += 1

    def get(self, i, path, body=None):
        return self.http.get(self.url(i, path), json=body, timeout=HTTP_TIMEOUT)

    def put(self, i, path, body):
        return self.http.put(self.url(i, path), json=body, timeout=HTTP_TIMEOUT)

    def ready(self, i):
        return self.get(i, "/kvs/health/ready").status_code == 200

    def wait_ready(self, indexes, timeout=90):
        wait_until(lambda: all(self.ready(i) for i in indexes), timeout, what=f"pods {indexes} ready")

    def logs(self, i, lines=30):
        return docker("logs", "--tail", str(lines), self.container(i), check=False).stderr


class StatefulSetLikeNames(unittest.TestCase):
    pods = None

    @classmethod
    def setUpClass(cls):
        cls.pods = Pods()
        for i in range(PODS):
            cls.pods.create(i)
        cls.pods.wait_ready(range(PODS))
        seed = int(time.time())
        log(f"names: seed {seed}")
        cls.rng = random.Random(seed)

    def run(self, result=None):
        before = len(result.failures) + len(result.errors) if result else 0
        out = super().run(result)
        if result and len(result.failures) + len(result.errors) > before and self.pods:
            for i in range(PODS):
                log(f"pod {i} log tail:\n{self.pods.logs(i)}")
        return out

    def test_1_the_store_forms_from_names_alone(self):
        names = sorted(self.pods.identity(i) for i in range(PODS))
        # Ready means a shard map and the shard's data; the view follows gossip, which may
        # not have heard from every pod yet (a CI run saw five of six).
        wait_until(lambda: self.pods.get(3, "/key-value-store-view").json()["view"]
                   == ",".join(names), 30, what="pod 3's view of every name")
        ids = self.pods.get(0, "/key-value-store-shard/shard-ids").json()["shard-ids"]
        self.assertEqual(ids, "0,1")
        members = self.pods.get(1, "/key-value-store-shard/shard-id-members/0").json()
        self.assertEqual(members["shard-id-members"],
                         ",".join(sorted(names[0::2])))
        r = self.pods.put(0, "/key-value-store/formed", {"value": "by name", "causal-metadata": ""})
        self.assertIn(r.status_code, (200, 201), r.text)
        cm = r.json()["causal-metadata"]
        for i in range(PODS):
            r = self.pods.get(i, "/key-value-store/formed", {"causal-metadata": cm})
            self.assertEqual((r.status_code, r.json().get("value")), (200, "by name"), r.text)

    def test_2_a_pod_created_again_with_another_ip_rejoins_with_its_data(self):
        cm = ""
        keys = [f"before-{n}" for n in range(40)]
        for n, key in enumerate(keys):
            r = self.pods.put(n % PODS, f"/key-value-store/{key}", {"value": key, "causal-metadata": cm})
            self.assertIn(r.status_code, (200, 201), r.text)
            cm = r.json()["causal-metadata"]
        # Every pod holds its shard's keys before pod 1 goes.
        wait_until(lambda: all(
            self.pods.get(i, "/kvs/status").json()["nodes"] for i in range(PODS)), 10)
        old_ip = self.pods.ip(1)
        self.pods.delete(1)
        self.pods.create(1)
        self.assertNotEqual(self.pods.ip(1), old_ip)
        self.pods.wait_ready([1])
        # Reached by name again: the others see it up, and forward to it.
        wait_until(lambda: all(
            n["up"] for n in self.pods.get(4, "/kvs/status").json()["nodes"]), 30,
            what="every pod up in pod 4's status")
        shard = self.pods.get(1, "/key-value-store-shard/node-shard-id").json()["shard-id"]
        # Its own data, read from it alone (no metadata: nothing is relayed elsewhere).
        count = self.pods.get(1, f"/key-value-store-shard/shard-id-key-count/{shard}").json()
        self.assertGreater(count["shard-id-key-count"], 0)
        for key in keys:
            r = self.pods.get(1, f"/key-value-store/{key}", {"causal-metadata": cm})
            self.assertEqual((r.status_code, r.json().get("value")), (200, key), r.text)
        r = self.pods.put(1, "/key-value-store/after", {"value": "rejoined", "causal-metadata": cm})
        self.assertIn(r.status_code, (200, 201), r.text)

    def test_3_a_rolling_restart_under_writes_loses_nothing(self):
        acked, unexpected, stop = {}, [], threading.Event()
        session = {"cm": ""}
        http = requests.Session()
        http.trust_env = False

        def writer():
            n = 0
            while not stop.is_set():
                key, i = f"roll-{n}", self.rng.randrange(PODS)
                try:
                    r = http.put(self.pods.url(i, f"/key-value-store/{key}"),
                                 json={"value": key, "causal-metadata": session["cm"]},
                                 timeout=HTTP_TIMEOUT)
                except requests.RequestException:
                    continue  # that pod is away: like a Service, try another
                if r.status_code in (200, 201):
                    acked[key] = r.json()["shard-id"]
                    session["cm"] = r.json()["causal-metadata"]
                    n += 1
                elif r.status_code != 503:
                    unexpected.append((key, r.status_code, r.text))
                time.sleep(0.02)

        thread = threading.Thread(target=writer, daemon=True)
        thread.start()
        try:
            for i in range(PODS):
                before = len(acked)
                self.pods.delete(i)
                self.pods.create(i)
                self.pods.wait_ready(range(PODS))
                wait_until(lambda: len(acked) > before + 5, 30, what="writes going on")
                log(f"pod {i} restarted; {len(acked)} writes acknowledged so far")
        finally:
            stop.set()
            thread.join(timeout=60)
        self.assertEqual(unexpected, [])
        self.assertGreater(len(acked), 50)
        cm = session["cm"]
        lost = []
        for key in acked:
            r = self.pods.get(self.rng.randrange(PODS), f"/key-value-store/{key}",
                              {"causal-metadata": cm})
            if r.status_code != 200 or r.json().get("value") != key:
                lost.append((key, r.status_code, r.text[:200]))
        log(f"rolling restart: {len(acked)} acknowledged writes, {len(lost)} missing")
        self.assertEqual(lost, [])


if __name__ == "__main__":
    unittest.main()
