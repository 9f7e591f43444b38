"""The HTTP contract of shared/API.md, checked in both wire formats against a small
store of real containers (4 nodes, 2 shards), one store per format."""

import time
import unittest

from kvs_e2e import StoreTestCase, build_image, docker, log, wait_until


def setUpModule():
    build_image()


NO_KEY_GET = {"doesExist": False, "error": "Key does not exist", "message": "Error in GET"}
NO_KEY_DELETE = {"doesExist": False, "error": "Key does not exist", "message": "Error in DELETE"}
TOO_LONG = {"error": "Key is too long", "message": "Error in PUT"}
NO_VALUE = {"error": "Value is missing", "message": "Error in PUT"}
NOT_ENOUGH = {"message": "Not enough nodes to provide fault-tolerance with the given shard count!"}


class ContractChecks:
    """Mixed into one StoreTestCase per format (not a TestCase itself)."""

    NODES = 4
    SHARDS = 2

    def key(self, name):
        return f"c{self.FORMAT}-{name}"

    def fmt(self, items):
        return list(items) if self.FORMAT == "2020" else ",".join(items)

    # ------------------------------------------------------------------ view
    def test_containers_report_healthy(self):
        """The image's HEALTHCHECK runs `kvs healthcheck` (no shell, no curl in the image):
        every container turns healthy, and `docker ps` says so."""
        def health(i):
            return docker("inspect", "-f", "{{.State.Health.Status}}", self.store.name(i)).stdout.strip()
        for i in self.store.indexes:
            wait_until(lambda: health(i) == "healthy", 60, interval=1,
                       what=f"{self.store.name(i)} to report healthy")
        listed = docker("ps", "--format", "{{.Names}} {{.Status}}").stdout
        for i in self.store.indexes:
            line = next(l for l in listed.splitlines() if l.split()[0] == self.store.name(i))
            self.assertIn("(healthy)", line)

    def test_view_get(self):
        s = self.store
        want = {"message": "View retrieved successfully", "view": ",".join(s.addrs())}
        for i in s.indexes:
            self.assertBody(s.get(i, "/key-value-store-view"), 200, want)

    def test_view_put_delete(self):
        s = self.store
        path = "/key-value-store-view"
        ghost = s.addr(200)  # an address in the store's subnet where nothing runs
        self.assertBody(s.put(1, path, {"socket-address": s.addr(2)}), 404,
                        {"error": "Socket address already exists in the view",
                         "message": "Error in PUT"})
        self.assertBody(s.delete(1, path, {"socket-address": ghost}), 404,
                        {"error": "Socket address does not exist in the view",
                         "message": "Error in DELETE"})
        self.assertBody(s.put(1, path, {"socket-address": ghost}), 201,
                        {"message": "Replica added successfully to the view"})
        self.assertIn(ghost, s.view(1))
        self.assertBody(s.put(1, path, {"socket-address": ghost}), 404,
                        {"error": "Socket address already exists in the view",
                         "message": "Error in PUT"})
        self.assertBody(s.delete(1, path, {"socket-address": ghost}), 200,
                        {"message": "Replica deleted successfully from the view"})
        self.assertBody(s.delete(1, path, {"socket-address": ghost}), 404,
                        {"error": "Socket address does not exist in the view",
                         "message": "Error in DELETE"})
        for body in ({}, {"socket-address": "not-an-address"}, {"socket-address": 5}):
            r = s.put(1, path, body)
            self.assertEqual(r.status_code, 400, r.text)
            self.assertEqual(r.json()["message"], "Error in PUT")
            self.assertIn("socket-address", r.json()["error"])
        # The relayed add and delete leave every node's view as the store again.
        self.assertViewsAll(timeout=40)

    # ------------------------------------------------------------------ shards
    def test_shard_ids(self):
        s = self.store
        want = {"message": "Shard IDs retrieved successfully",
                "shard-ids": self.fmt(["0", "1"])}
        for i in s.indexes:
            self.assertBody(s.get(i, "/key-value-store-shard/shard-ids"), 200, want)

    def test_node_shard_id_and_members(self):
        s = self.store
        members = {}
        for shard in ("0", "1"):
            r = s.get(1, f"/key-value-store-shard/shard-id-members/{shard}")
            self.assertEqual(r.status_code, 200, r.text)
            got = r.json()
            self.assertEqual(set(got), {"message", "shard-id-members"})
            self.assertEqual(got["message"], "Members of shard ID retrieved successfully")
            members[shard] = s.lst(got["shard-id-members"])
            self.assertEqual(members[shard], s.addrs([s.index_of(a) for a in members[shard]]),
                             "members must be sorted by IP then port")
            self.assertGreaterEqual(len(members[shard]), 2)
            for i in s.indexes:  # every node gives the same, byte for byte
                self.assertBody(s.get(i, f"/key-value-store-shard/shard-id-members/{shard}"),
                                200, got)
        self.assertEqual(sorted(members["0"] + members["1"], key=str), sorted(s.addrs(), key=str))
        for i in s.indexes:
            r = s.get(i, "/key-value-store-shard/node-shard-id")
            self.assertEqual(r.status_code, 200, r.text)
            got = r.json()
            self.assertEqual(set(got), {"message", "shard-id"})
            self.assertEqual(got["message"], "Shard ID of the node retrieved successfully")
            self.assertIsInstance(got["shard-id"], str)
            self.assertIn(s.addr(i), members[got["shard-id"]])

    def test_unknown_shard_id(self):
        s = self.store
        get404 = {"error": "Shard ID does not exist", "message": "Error in GET"}
        for bad in ("7", "abc"):
            self.assertBody(s.get(2, f"/key-value-store-shard/shard-id-members/{bad}"), 404, get404)
            self.assertBody(s.get(2, f"/key-value-store-shard/shard-id-key-count/{bad}"), 404, get404)
        self.assertBody(s.put(2, "/key-value-store-shard/add-member/7",
                              {"socket-address": s.addr(4)}), 404,
                        {"error": "Shard ID does not exist", "message": "Error in PUT"})

    def test_add_member_bad_socket_address(self):
        s = self.store
        for body in ({}, {"socket-address": "nope"}):
            r = s.put(1, "/key-value-store-shard/add-member/0", body)
            self.assertEqual(r.status_code, 400, r.text)
            self.assertEqual(r.json()["message"], "Error in PUT")
            self.assertIn("socket-address", r.json()["error"])

    def test_reshard_errors(self):
        s = self.store
        for count in (3, 10):
            self.assertBody(s.put(1, "/key-value-store-shard/reshard", {"shard-count": count}),
                            400, NOT_ENOUGH)
        for body in ({}, {"shard-count": "abc"}, {"shard-count": 0}, {"shard-count": -2}):
            r = s.put(1, "/key-value-store-shard/reshard", body)
            self.assertEqual(r.status_code, 400, f"{body}: {r.text}")
            self.assertEqual(r.json()["message"], "Error in PUT")
            self.assertIn("shard-count", r.json()["error"])
        r = s.put(1, "/key-value-store-shard/reshard", raw="{not json")
        self.assertEqual(r.status_code, 400, r.text)
        self.assertEqual(r.json()["message"], "Error in PUT")

    def test_reshard_to_same_count(self):
        s = self.store
        self.assertBody(s.put(3, "/key-value-store-shard/reshard", {"shard-count": 2}), 200,
                        {"message": "Resharding done successfully"})
        self.assertEqual(s.shard_ids(1), ["0", "1"])

    # ------------------------------------------------------------------ key-value
    def test_kv_rows(self):
        s = self.store
        key = self.key("rows")
        r = s.kv_put(1, key, "v1")
        put1 = self.assertVersioned(r, 201, "Added successfully", {"shard-id": None})
        self.assertIn(put1["shard-id"], s.shard_ids(1))
        r = s.kv_put(2, key, "v2", put1["causal-metadata"])
        put2 = self.assertVersioned(r, 200, "Updated successfully",
                                    {"shard-id": put1["shard-id"]})
        # Every node (the key's replicas and the forwarding ones) returns the value with
        # the metadata its write returned.
        for i in s.indexes:
            r = s.kv_get(i, key, put2["causal-metadata"])
            got = self.assertVersioned(r, 200, "Retrieved successfully", {"value": "v2"})
            self.assertEqual(got["causal-metadata"], put2["causal-metadata"])
        r = s.kv_delete(4, key, put2["causal-metadata"])
        dele = self.assertVersioned(r, 200, "Deleted successfully",
                                    {"shard-id": put1["shard-id"]})
        for i in s.indexes:
            self.assertBody(s.kv_get(i, key, dele["causal-metadata"]), 404, NO_KEY_GET)
        self.assertBody(s.kv_delete(3, key, dele["causal-metadata"]), 404, NO_KEY_DELETE)
        self.assertBody(s.kv_get(2, self.key("never-written")), 404, NO_KEY_GET)
        self.assertBody(s.kv_delete(2, self.key("never-written")), 404, NO_KEY_DELETE)

    def test_kv_get_without_body_and_missing_metadata(self):
        s = self.store
        key = self.key("nometa")
        r = s.put(2, f"/key-value-store/{key}", {"value": "x"})  # no causal-metadata field
        put = self.assertVersioned(r, 201, "Added successfully", {"shard-id": None})
        r = s.get(2, f"/key-value-store/{key}")  # no body at all
        got = self.assertVersioned(r, 200, "Retrieved successfully", {"value": "x"})
        self.assertEqual(got["causal-metadata"], put["causal-metadata"])

    def test_kv_key_length(self):
        s = self.store
        self.assertBody(s.kv_put(1, "k" * 51, "v"), 400, TOO_LONG)
        self.assertBody(s.kv_put(3, "L" * 60, "v"), 400, TOO_LONG)
        self.assertVersioned(s.kv_put(1, "k" * 50, "v"), 201, "Added successfully",
                             {"shard-id": None})

    def test_kv_value_missing(self):
        s = self.store
        self.assertBody(s.put(1, f"/key-value-store/{self.key('novalue')}",
                              {"causal-metadata": ""}), 400, NO_VALUE)
        self.assertBody(s.put(2, f"/key-value-store/{self.key('novalue')}", {}), 400, NO_VALUE)

    def test_kv_bad_bodies(self):
        s = self.store
        path = f"/key-value-store/{self.key('bad')}"
        for method, op in (("PUT", "PUT"), ("DELETE", "DELETE"), ("GET", "GET")):
            r = s.request(method, 1, path, raw="this is not json")
            self.assertEqual(r.status_code, 400, f"{method}: {r.text}")
            got = r.json()
            self.assertEqual(set(got), {"error", "message"}, r.text)
            self.assertEqual(got["message"], f"Error in {op}")
        for body in ({"value": 5, "causal-metadata": ""}, {"value": "v", "causal-metadata": 7}):
            r = s.put(1, path, body)
            self.assertEqual(r.status_code, 400, f"{body}: {r.text}")
            self.assertEqual(r.json()["message"], "Error in PUT")
            self.assertIsInstance(r.json()["error"], str)

    def test_kv_invalid_metadata(self):
        s = self.store
        key = self.key("badmeta")
        self.assertBody(s.kv_put(1, key, "v", "this-is-not-ours"), 400,
                        {"error": "Invalid causal metadata", "message": "Error in PUT"})
        self.assertBody(s.kv_get(1, key, "this-is-not-ours"), 400,
                        {"error": "Invalid causal metadata", "message": "Error in GET"})
        self.assertBody(s.kv_delete(1, key, "this-is-not-ours"), 400,
                        {"error": "Invalid causal metadata", "message": "Error in DELETE"})

    def test_kv_key_counts(self):
        s = self.store
        path = "/key-value-store-shard/shard-id-key-count/{}"

        def counts():
            out = {}
            for shard in ("0", "1"):
                seen = set()
                for i in s.indexes:
                    r = s.get(i, path.format(shard))
                    self.assertEqual(r.status_code, 200, r.text)
                    got = r.json()
                    self.assertEqual(set(got), {"message", "shard-id-key-count"})
                    self.assertEqual(got["message"], "Key count of shard ID retrieved successfully")
                    n = got["shard-id-key-count"]
                    self.assertIs(type(n), int, "key count must be a JSON integer")
                    seen.add(n)
                self.assertEqual(len(seen), 1, f"nodes disagree on shard {shard}'s count: {seen}")
                out[shard] = seen.pop()
            return out

        before = counts()
        added = {"0": 0, "1": 0}
        meta = ""
        for n in range(40):
            r = s.kv_put(1 + n % s.n, self.key(f"count-{n}"), str(n), meta)
            got = self.assertVersioned(r, 201, "Added successfully", {"shard-id": None})
            added[got["shard-id"]] += 1
            meta = got["causal-metadata"]
        # Replication to the other replicas is asynchronous: every node must agree within
        # moments (logged, so that a slow convergence shows).
        start = time.monotonic()
        want = {k: before[k] + added[k] for k in before}
        wait_until(lambda: counts() == want, 5, interval=0.05,
                   what=f"every node counting {want}")
        log(f"format {self.FORMAT}: 40 keys split {added}; every node agreed after "
            f"{time.monotonic() - start:.2f}s")


class Contract2019(ContractChecks, StoreTestCase):
    FORMAT = "2019"


class Contract2020(ContractChecks, StoreTestCase):
    FORMAT = "2020"


if __name__ == "__main__":
    unittest.main()
