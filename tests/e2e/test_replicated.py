"""The course's replicated store without shards: three replicas started seconds apart with
only SOCKET_ADDRESS, VIEW and API_FORMAT (no SHARD_COUNT), which then form one shard of all
three. Checked in both wire formats, each on the node port of its edition of the course:
2019 on 8080, 2020 on 8085 (build.sh --no-shard-count --node-port P --start-gap 3).

The tests of a class share its store and run in order (test_01 .. test_06); each one
leaves every replica up and in every view (setUp restores that if a failed test did not)."""

import time
import unittest

import requests

from kvs_e2e import StoreTestCase, Timer, build_image, log, wait_until


def setUpModule():
    build_image()


# How long a stopped replica may stay in the others' views (API.md: "within seconds").
LEAVE_TIMEOUT = 10
# How long a restarted replica may take to answer, to enter every view, and to converge.
JOIN_TIMEOUT = 30
CATCH_UP_TIMEOUT = 30
# How long a read carrying metadata may keep answering 503 (dependencies not yet
# satisfied) on a replica that has just come back, before it must answer 200.
CAUSAL_TIMEOUT = 30

VIEW_PATH = "/key-value-store-view"
NO_KEY_GET = {"doesExist": False, "error": "Key does not exist", "message": "Error in GET"}
NO_KEY_DELETE = {"doesExist": False, "error": "Key does not exist", "message": "Error in DELETE"}
# The 503 bodies API.md allows while a node cannot yet answer a request.
NOT_YET = ({"error": "Causal dependencies not satisfied", "message": "Error in GET"},
           {"error": "Unable to satisfy request", "message": "Error in GET"})


class ReplicatedChecks:
    """Mixed into one StoreTestCase per format (not a TestCase itself)."""

    NODES = 3
    SHARDS = 1
    SHARD_COUNT = False
    START_GAP = 3

    # ------------------------------------------------------------------ helpers
    def key(self, name):
        return f"r{self.FORMAT}-{name}"

    def running(self, i):
        return self.store.docker_inspect(i, "{{.State.Running}}").strip() == "true"

    def setUp(self):
        """Every replica up and in every view (a failed earlier test may have left one
        stopped)."""
        s = self.store
        for i in s.indexes:
            if not self.running(i):
                log(f"setUp: {s.name(i)} was left stopped; starting it")
                s.docker("start", i)
        self.assertViewsAll(timeout=JOIN_TIMEOUT)
        self.shard = self.the_shard()

    def the_shard(self):
        ids = self.store.shard_ids(1)
        self.assertEqual(len(ids), 1, f"one shard without SHARD_COUNT, got {ids}")
        return ids[0]

    def stop(self, victim, measure=False):
        """docker stop, then polls until the other replicas' views no longer list it, at most
        LEAVE_TIMEOUT seconds (measure: polls longer, to tell how late it was, then fails)."""
        s = self.store
        with Timer(f"docker stop {s.name(victim)}"):
            s.docker("stop", victim)
        self.addCleanup(lambda: None if self.running(victim) else s.docker("start", victim))
        others = [i for i in s.indexes if i != victim]
        start = time.monotonic()
        wait_until(lambda: all(s.addr(victim) not in s.view(i) for i in others),
                   3 * LEAVE_TIMEOUT + 30 if measure else LEAVE_TIMEOUT,
                   what=f"{s.name(victim)} leaving every other view")
        took = time.monotonic() - start
        log(f"{s.name(victim)} left the views of {[s.name(i) for i in others]} after {took:.2f}s")
        self.assertLessEqual(took, LEAVE_TIMEOUT,
                             f"{s.name(victim)} stayed in the views {took:.1f}s after it stopped")

    def start_again(self, victim):
        """docker start, then polls until the replica answers HTTP (not until it is in
        every view: reads right after it comes back are the point)."""
        s = self.store
        s.docker("start", victim)
        start = time.monotonic()
        wait_until(lambda: s.get(victim, VIEW_PATH, timeout=(1, 2)).status_code == 200,
                   JOIN_TIMEOUT, what=f"{s.name(victim)} answering on its host port")
        log(f"{s.name(victim)} answers {time.monotonic() - start:.2f}s after docker start")

    def wait_in_every_view(self, victim):
        start = time.monotonic()
        self.assertViewsAll(timeout=JOIN_TIMEOUT)
        log(f"{self.store.name(victim)} in every view (its own included) after "
            f"{time.monotonic() - start:.2f}s")

    def put(self, i, key, value, meta, status):
        """PUT that must answer `status` (201 new key, 200 update); returns its metadata."""
        s = self.store
        r = s.kv_put(i, key, value, meta)
        message = "Added successfully" if status == 201 else "Updated successfully"
        got = self.assertVersioned(r, status, message, {"shard-id": self.shard})
        log(f"PUT {key}={value} via {s.name(i)} -> {r.status_code}")
        return got["causal-metadata"]

    def read_causally(self, i, key, meta, want):
        """GET key via node i with the client's metadata. While the node cannot satisfy the
        metadata it may answer 503 (one of API.md's two bodies) or refuse the connection
        (just started): polled up to CAUSAL_TIMEOUT. Then it must answer 200 with `want`
        (or 404 when want is None); an older value, or a 404 for a key that exists, is a
        causality violation and fails at once. Returns the answer's metadata (the
        client's own when 404)."""
        s = self.store
        start = time.monotonic()
        deadline = start + CAUSAL_TIMEOUT
        waits = []
        while True:
            try:
                r = s.kv_get(i, key, meta)
            except requests.RequestException as e:
                r, why = None, type(e).__name__
            else:
                why = r.status_code
                if r.status_code == 503:
                    self.assertIn(r.json(), NOT_YET, f"GET {key} via {s.name(i)}: {r.text}")
                    why = f"503 {r.json()['error']}"
                else:
                    break
            waits.append(why)
            self.assertLess(time.monotonic(), deadline,
                            f"GET {key} via {s.name(i)} with metadata: no answer but "
                            f"{waits[-1]} for {CAUSAL_TIMEOUT}s ({len(waits)} tries)")
            time.sleep(0.2)
        took = time.monotonic() - start
        what = f"GET {key} via {s.name(i)} with the client's metadata"
        if waits:
            log(f"{what}: {len(waits)} tries not answered ({sorted(set(map(str, waits)))}) "
                f"before {r.status_code} after {took:.2f}s")
        if want is None:
            self.assertBody(r, 404, NO_KEY_GET)
            return meta
        self.assertNotEqual(r.status_code, 404,
                            f"{what}: 404, a key the metadata depends on is missing: {r.text}")
        got = self.assertVersioned(r, 200, "Retrieved successfully", {"value": None})
        self.assertEqual(got["value"], want, f"{what}: stale value {got['value']!r} "
                                             f"(want {want!r}): {r.text}")
        return got["causal-metadata"]

    def serves(self, i, expected):
        """True when node i answers every key as `expected` ({key: value or None}) to a
        GET without metadata."""
        s = self.store
        for key, value in expected.items():
            r = s.kv_get(i, key)
            if value is None:
                if r.status_code != 404:
                    return False
            elif r.status_code != 200 or r.json().get("value") != value:
                return False
        return True

    def wait_converged(self, expected):
        s = self.store
        start = time.monotonic()
        for i in s.indexes:
            wait_until(lambda i=i: self.serves(i, expected), CATCH_UP_TIMEOUT, interval=0.5,
                       what=f"{s.name(i)} serving the {len(expected)} keys without metadata")
        shard = self.shard
        live = sum(1 for v in expected.values() if v is not None)
        counts = wait_until(
            lambda: (lambda c: c if len(set(c.values())) == 1 else None)(
                {s.name(i): s.key_count(i, shard) for i in s.indexes}),
            CATCH_UP_TIMEOUT, what="every node answering the same key count")
        self.assertGreaterEqual(min(counts.values()), live, counts)
        log(f"every replica serves the {len(expected)} keys without metadata after "
            f"{time.monotonic() - start:.2f}s; key counts {counts}")

    # ------------------------------------------------------------------ steps
    def test_01_every_view_lists_the_three(self):
        s = self.store
        want = {"message": "View retrieved successfully", "view": ",".join(s.addrs())}
        for i in s.indexes:
            self.assertBody(s.get(i, VIEW_PATH), 200, want)

    def test_02_one_shard_of_all_three(self):
        s = self.store
        r = s.get(1, "/key-value-store-shard/shard-ids")
        self.assertEqual(r.status_code, 200, r.text)
        ids_body = r.json()
        self.assertEqual(set(ids_body), {"message", "shard-ids"}, r.text)
        self.assertEqual(ids_body["message"], "Shard IDs retrieved successfully")
        ids = s.lst(ids_body["shard-ids"])  # a JSON array in 2020, a string in 2019
        self.assertEqual(len(ids), 1, f"one shard without SHARD_COUNT: {r.text}")
        shard = ids[0]
        self.assertIsInstance(shard, str)
        r = s.get(1, f"/key-value-store-shard/shard-id-members/{shard}")
        self.assertEqual(r.status_code, 200, r.text)
        members_body = r.json()
        self.assertEqual(set(members_body), {"message", "shard-id-members"}, r.text)
        self.assertEqual(s.lst(members_body["shard-id-members"]), s.addrs(),
                         "the shard is every node, sorted")
        for i in s.indexes:  # every node answers the same, byte for byte
            self.assertBody(s.get(i, "/key-value-store-shard/shard-ids"), 200, ids_body)
            self.assertBody(s.get(i, f"/key-value-store-shard/shard-id-members/{shard}"),
                            200, members_body)
            self.assertBody(s.get(i, "/key-value-store-shard/node-shard-id"), 200,
                            {"message": "Shard ID of the node retrieved successfully",
                             "shard-id": shard})
            r = s.get(i, f"/key-value-store-shard/shard-id-key-count/{shard}")
            self.assertEqual(r.status_code, 200, r.text)
            self.assertIsInstance(r.json()["shard-id-key-count"], int)
        log(f"shard ids {ids_body['shard-ids']!r}, members {members_body['shard-id-members']!r}")

    def test_03_key_value_through_different_replicas(self):
        s = self.store
        key, shard = self.key("kv"), self.shard
        m1 = self.put(1, key, "one", "", 201)
        r = s.kv_get(2, key, m1)
        got = self.assertVersioned(r, 200, "Retrieved successfully", {"value": "one"})
        self.assertEqual(got["causal-metadata"], m1, "GET with the PUT's own metadata")
        m2 = self.put(3, key, "two", got["causal-metadata"], 200)
        for i in s.indexes:
            r = s.kv_get(i, key, m2)
            got = self.assertVersioned(r, 200, "Retrieved successfully", {"value": "two"})
            self.assertEqual(got["causal-metadata"], m2, f"GET via {s.name(i)}")
        # Without metadata, once replicated: every replica returns exactly the PUT's metadata.
        wait_until(lambda: all(s.kv_get(i, key).json().get("value") == "two" for i in s.indexes),
                   CATCH_UP_TIMEOUT, what="every replica returning 'two' without metadata")
        for i in s.indexes:
            got = self.assertVersioned(s.get(i, f"/key-value-store/{key}"), 200,
                                       "Retrieved successfully", {"value": "two"})
            self.assertEqual(got["causal-metadata"], m2, f"GET without body via {s.name(i)}")
        r = s.kv_delete(2, key, m2)
        dele = self.assertVersioned(r, 200, "Deleted successfully", {"shard-id": shard})
        m3 = dele["causal-metadata"]
        for i in s.indexes:
            self.assertBody(s.kv_get(i, key, m3), 404, NO_KEY_GET)
        self.assertBody(s.kv_delete(1, key, m3), 404, NO_KEY_DELETE)
        m4 = self.put(1, key, "three", m3, 201)  # a deleted key is new again
        for i in s.indexes:
            self.assertEqual(self.read_causally(i, key, m4, "three"), m4)
        self.assertBody(s.kv_get(3, self.key("never-written"), m4), 404, NO_KEY_GET)

    def test_04_replica_down_then_back(self):
        s = self.store
        a, b, c = 1, 2, 3
        values = {}  # key -> latest value (None: deleted)
        meta = ""
        for n in range(6):  # written everywhere before the fault
            key = self.key(f"down-pre{n}")
            meta = self.put(s.indexes[n % 3], key, f"pre{n}", meta, 201)
            values[key] = f"pre{n}"
        self.wait_converged(values)

        self.stop(c)
        # The other two keep serving reads and writes: new keys, updates, a delete.
        with Timer("writes and reads through the two live replicas"):
            for n in range(10):
                key = self.key(f"down-new{n}")
                meta = self.put((a, b)[n % 2], key, f"new{n}", meta, 201)
                values[key] = f"new{n}"
            for n in range(3):
                key = self.key(f"down-pre{n}")
                meta = self.put((b, a)[n % 2], key, f"updated{n}", meta, 200)
                values[key] = f"updated{n}"
            key = self.key("down-pre5")
            r = s.kv_delete(a, key, meta)
            meta = self.assertVersioned(r, 200, "Deleted successfully",
                                        {"shard-id": self.shard})["causal-metadata"]
            values[key] = None
            for key, value in values.items():
                for i in (a, b):
                    meta = self.read_causally(i, key, meta, value)
        self.assertNotIn(s.addr(c), s.view(a))

        self.start_again(c)
        with Timer(f"reads through {s.name(c)} with the client's metadata, right after start"):
            for key, value in values.items():
                meta = self.read_causally(c, key, meta, value)
        self.wait_in_every_view(c)
        self.wait_converged(values)
        # And it serves writes again.
        meta = self.put(c, self.key("down-after"), "after", meta, 201)
        self.read_causally(a, self.key("down-after"), meta, "after")

    def test_05_causal_scenario_across_a_restart(self):
        """x written through A, read through B, y written through B after it, both read
        through C, which was down for all of it and has just been started again."""
        s = self.store
        a, b, c = 1, 2, 3
        x, y = self.key("x"), self.key("y")
        m = self.put(a, x, "x-old", "", 201)
        m = self.put(a, y, "y-old", m, 201)
        # C holds the old values, so that a stale read would show them rather than a 404.
        self.wait_converged({x: "x-old", y: "y-old"})

        self.stop(c)
        m = self.put(a, x, "x-new", m, 200)
        m = self.read_causally(b, x, m, "x-new")
        m = self.put(b, y, "y-new", m, 200)
        self.start_again(c)
        with Timer(f"GET y then x via {s.name(c)} with the latest metadata"):
            m = self.read_causally(c, y, m, "y-new")
            m = self.read_causally(c, x, m, "x-new")
        self.wait_in_every_view(c)
        self.wait_converged({x: "x-new", y: "y-new"})

    def test_06_view_delete_and_put(self):
        """Last: a replica deleted from the views and put back with the view endpoints, then
        stopped, must leave the views like any other stopped replica."""
        s = self.store
        third = s.addr(3)
        self.assertBody(s.put(1, VIEW_PATH, {"socket-address": third}), 404,
                        {"error": "Socket address already exists in the view",
                         "message": "Error in PUT"})
        self.assertBody(s.delete(1, VIEW_PATH, {"socket-address": third}), 200,
                        {"message": "Replica deleted successfully from the view"})
        self.assertNotIn(third, s.view(1))
        # node1 tells the other replica (node3 itself keeps listing itself).
        wait_until(lambda: third not in s.view(2), 10, what=f"node2's view without {third}")
        self.assertBody(s.delete(1, VIEW_PATH, {"socket-address": third}), 404,
                        {"error": "Socket address does not exist in the view",
                         "message": "Error in DELETE"})
        self.assertBody(s.delete(2, VIEW_PATH, {"socket-address": third}), 404,
                        {"error": "Socket address does not exist in the view",
                         "message": "Error in DELETE"})
        self.assertBody(s.put(2, VIEW_PATH, {"socket-address": third}), 201,
                        {"message": "Replica added successfully to the view"})
        self.assertIn(third, s.view(2))
        self.assertBody(s.put(2, VIEW_PATH, {"socket-address": third}), 404,
                        {"error": "Socket address already exists in the view",
                         "message": "Error in PUT"})
        self.assertViewsAll(timeout=10)
        # Put back by an administrator, then stopped: it leaves the views as test_04's did.
        self.stop(3, measure=True)


class Replicated2019(ReplicatedChecks, StoreTestCase):
    FORMAT = "2019"
    NODE_PORT = 8080


class Replicated2020(ReplicatedChecks, StoreTestCase):
    FORMAT = "2020"
    NODE_PORT = 8085


if __name__ == "__main__":
    unittest.main()
