"""The course's six-node, two-shard scenario: 600 keys with chained causal metadata,
balanced key counts, a seventh node joined with add-member, and a reshard to 3.

The steps share one store and run in order (test_01 .. test_08); once a step fails,
the later ones are skipped rather than failing for the same reason."""

import unittest

from kvs_e2e import StoreTestCase, Timer, build_image, log, wait_until


def setUpModule():
    build_image()


KEYS = 600


class CourseScenario(StoreTestCase):
    NODES = 6
    SHARDS = 2
    FORMAT = "2019"

    broken = None
    values = {}   # key -> value
    meta = ""     # the last causal-metadata received

    def setUp(self):
        if type(self).broken:
            self.skipTest(f"an earlier step failed: {type(self).broken}")

    def run(self, result=None):
        before = len(result.failures) + len(result.errors) if result else 0
        out = super().run(result)
        if result and len(result.failures) + len(result.errors) > before:
            type(self).broken = self._testMethodName
        return out

    def all_nodes(self):
        return self.store.indexes

    def check_map_everywhere(self, want_ids):
        """Every node: the same shard ids and members; members cover all nodes once,
        two or more a shard; every node's node-shard-id agrees. Returns the map."""
        s = self.store
        first = s.shard_map(1)
        self.assertEqual(sorted(first, key=int), want_ids)
        for i in self.all_nodes():
            self.assertEqual(s.shard_map(i), first, f"node {s.name(i)} has another map")
        everyone = sorted(a for m in first.values() for a in m)
        self.assertEqual(everyone, sorted(s.addrs()), "members must cover every node once")
        for shard, members in first.items():
            self.assertGreaterEqual(len(members), 2, f"shard {shard}: {members}")
            self.assertEqual(members, s.addrs([s.index_of(a) for a in members]), "sorted")
        for i in self.all_nodes():
            self.assertIn(s.addr(i), first[s.node_shard(i)])
        return first

    def counts(self, shard_ids, via=None):
        s = self.store
        return {sh: s.key_count(via or 1, sh) for sh in shard_ids}

    def read_all(self, offset):
        """Reads every key through node (k + offset) % n, chaining metadata."""
        s = self.store
        nodes = self.all_nodes()
        meta = type(self).meta
        for n, (key, value) in enumerate(type(self).values.items()):
            i = nodes[(n + offset) % len(nodes)]
            r = s.kv_get(i, key, meta)
            self.assertEqual(r.status_code, 200, f"GET {key} via {s.name(i)}: {r.text}")
            got = r.json()
            self.assertEqual(got["value"], value, f"GET {key} via {s.name(i)}")
            meta = got["causal-metadata"]
        type(self).meta = meta

    # ------------------------------------------------------------------ steps
    def test_01_shard_ids_agree(self):
        s = self.store
        for i in self.all_nodes():
            self.assertEqual(s.shard_ids(i), ["0", "1"], s.name(i))

    def test_02_members_cover_all_nodes(self):
        shard_map = self.check_map_everywhere(["0", "1"])
        log(f"initial map: {shard_map}")

    def test_03_write_600_keys_round_robin(self):
        s = self.store
        nodes = self.all_nodes()
        meta = ""
        values = {}
        with Timer(f"{KEYS} PUTs round-robin over {len(nodes)} nodes, chained metadata"):
            for n in range(KEYS):
                key, value = f"key{n}", f"value{n}"
                r = s.kv_put(nodes[n % len(nodes)], key, value, meta)
                self.assertEqual(r.status_code, 201, f"PUT {key}: {r.text}")
                meta = r.json()["causal-metadata"]
                values[key] = value
        type(self).values = values
        type(self).meta = meta

    def test_04_read_back_through_other_nodes(self):
        with Timer(f"{KEYS} GETs, each through another node than its PUT"):
            self.read_all(offset=1)

    def test_05_key_counts_balanced(self):
        s = self.store
        counts = self.counts(["0", "1"])
        log(f"key counts after {KEYS} keys: {counts}")
        self.assertEqual(sum(counts.values()), KEYS)
        for shard, n in counts.items():
            self.assertLessEqual(abs(n - KEYS / 2), KEYS / 2 * 0.25, f"shard {shard}: {n}")
        for i in self.all_nodes():  # every node answers the same counts
            self.assertEqual(self.counts(["0", "1"], via=i), counts, s.name(i))

    def test_06_add_member(self):
        s = self.store
        new = s.start_extra()
        self.assertEqual(new, 7)
        shard = "1"
        with Timer("PUT add-member"):
            r = s.put(2, f"/key-value-store-shard/add-member/{shard}",
                      {"socket-address": s.addr(new)}, timeout=(3, 120))
        self.assertBody(r, 200, {"message": "Node added to shard successfully"})
        # Right away: the new member holds every key of its shard.
        mine = s.key_count(new, shard)
        peers = {s.name(s.index_of(a)): s.key_count(s.index_of(a), shard)
                 for a in s.members(2, shard) if a != s.addr(new)}
        log(f"after add-member: {s.name(new)} counts {mine}, peers {peers}")
        self.assertEqual(set(peers.values()), {mine})
        self.assertEqual(s.node_shard(new), shard)
        # Every node lists it (the new map spreads by gossip: poll).
        with Timer("every node lists the new member"):
            wait_until(lambda: all(s.addr(new) in s.members(i, shard) for i in s.indexes),
                       timeout=10, what="every node listing the new member")
        self.check_map_everywhere(["0", "1"])
        self.assertViewsAll(timeout=10)

    def test_07_reshard_to_10_rejected(self):
        s = self.store
        self.assertBody(s.put(3, "/key-value-store-shard/reshard", {"shard-count": 10}), 400,
                        {"message": "Not enough nodes to provide fault-tolerance "
                                    "with the given shard count!"})
        self.assertEqual(s.shard_ids(1), ["0", "1"])

    def test_08_reshard_to_3(self):
        s = self.store
        with Timer("PUT reshard 3"):
            r = s.put(1, "/key-value-store-shard/reshard", {"shard-count": 3}, timeout=(3, 180))
        self.assertBody(r, 200, {"message": "Resharding done successfully"})
        counts = self.counts(["0", "1", "2"])
        log(f"key counts after reshard: {counts}")
        self.assertEqual(sum(counts.values()), KEYS)
        for shard, n in counts.items():
            self.assertLessEqual(abs(n - KEYS / 3), KEYS / 3 * 0.25, f"shard {shard}: {n}")
        # Every node's map: give gossip a moment to bring the map to nodes the reshard
        # did not tell itself (it should tell all of them).
        shard_map = wait_until(lambda: self.check_map_everywhere(["0", "1", "2"]), timeout=10,
                               what="every node showing the 3-shard map")
        log(f"map after reshard: {shard_map}")
        for i in s.indexes:
            self.assertEqual(self.counts(["0", "1", "2"], via=i), counts, s.name(i))
        with Timer(f"{KEYS} GETs after reshard"):
            self.read_all(offset=3)


if __name__ == "__main__":
    unittest.main()
