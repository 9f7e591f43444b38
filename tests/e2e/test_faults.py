"""Faults injected with docker on a six-node, two-shard store: a killed and restarted
node, a replica cut off with `docker network disconnect` (and the course's causal
scenario across that partition), and a paused node. Each class has its own store."""

import time
import unittest

from kvs_e2e import StoreTestCase, Timer, build_image, log, wait_until


def setUpModule():
    build_image()


# How long a node that stops answering may stay in the others' views.
LEAVE_TIMEOUT = 10
# How long a node that is back may take to enter every view, and to catch up.
JOIN_TIMEOUT = 30
CATCH_UP_TIMEOUT = 30


class FaultTestCase(StoreTestCase):
    NODES = 6
    SHARDS = 2
    FORMAT = "2019"

    def wait_left(self, victim, observers):
        """Polls until no observer's view lists the victim; returns the seconds taken."""
        s = self.store
        start = time.monotonic()
        wait_until(lambda: all(s.addr(victim) not in s.view(i) for i in observers),
                   LEAVE_TIMEOUT, what=f"{s.name(victim)} leaving every other view")
        took = time.monotonic() - start
        log(f"{s.name(victim)} left the views of {len(observers)} nodes after {took:.2f}s")
        return took

    def wait_joined(self, victim):
        s = self.store
        start = time.monotonic()
        self.assertViewsAll(timeout=JOIN_TIMEOUT)
        took = time.monotonic() - start
        log(f"{s.name(victim)} back in every view (its own included) after {took:.2f}s")
        return took

    def answering(self, i):
        """Polls until node i answers HTTP again; logs how far behind its peers it is then
        (informative: a node may well have caught up by the time it answers)."""
        s = self.store
        start = time.monotonic()
        wait_until(lambda: s.get(i, "/key-value-store-view", timeout=(1, 2)).status_code == 200,
                   JOIN_TIMEOUT, what=f"{s.name(i)} answering on its host port")
        took = time.monotonic() - start
        shard = s.node_shard(i)
        peer = next(s.index_of(a) for a in s.members(i, shard) if a != s.addr(i))
        log(f"{s.name(i)} answers after {took:.2f}s with {s.key_count(i, shard)} keys of "
            f"shard {shard} ({s.name(peer)} has {s.key_count(peer, shard)})")

    def write_through(self, nodes, count, tag, meta=""):
        """PUTs `count` new keys round-robin through `nodes`, chaining metadata.
        Returns ({key: (value, shard-id)}, last metadata)."""
        s = self.store
        written = {}
        for n in range(count):
            key, value = f"{tag}-{n}", f"{tag}-value-{n}"
            i = nodes[n % len(nodes)]
            r = s.kv_put(i, key, value, meta)
            self.assertEqual(r.status_code, 201, f"PUT {key} via {s.name(i)}: {r.text}")
            meta = r.json()["causal-metadata"]
            written[key] = (value, r.json()["shard-id"])
        return written, meta

    def serves_all(self, i, written, meta=None):
        """True when node i returns every written value (GET, with or without metadata)."""
        s = self.store
        for key, (value, _) in written.items():
            r = s.kv_get(i, key, meta)
            if r.status_code != 200 or r.json().get("value") != value:
                return False
        return True

    def wait_caught_up(self, i, written):
        s = self.store
        start = time.monotonic()
        shard = s.node_shard(i)
        peers = [s.index_of(a) for a in s.members(i, shard) if a != s.addr(i)]
        wait_until(lambda: self.serves_all(i, written), CATCH_UP_TIMEOUT, interval=0.5,
                   what=f"{s.name(i)} serving the {len(written)} writes it missed")
        wait_until(lambda: len({s.key_count(p, shard) for p in peers + [i]}) == 1,
                   CATCH_UP_TIMEOUT, what=f"{s.name(i)}'s key count equal to its peers'")
        log(f"{s.name(i)} caught up after {time.monotonic() - start:.2f}s")


class KillAndRestart(FaultTestCase):
    def test_kill_then_start(self):
        s = self.store
        victim = 6
        others = [i for i in s.indexes if i != victim]
        before, meta = self.write_through(s.indexes, 12, "kill-before")
        s.docker("kill", victim)
        self.addCleanup(lambda: s.docker("start", victim) if not self.running(victim) else None)
        self.wait_left(victim, others)
        with Timer("30 writes through the 5 live nodes"):
            missed, meta = self.write_through(others, 30, "kill-during", meta)
        log(f"writes while down, by shard: {shard_counts(missed)}")
        s.docker("start", victim)
        self.answering(victim)
        self.wait_joined(victim)
        # With the latest metadata the restarted node must answer right away (it fetches
        # what it lacks from its shard peers), then it converges on its own.
        with Timer("reads via the restarted node, with metadata"):
            for key, (value, _) in {**before, **missed}.items():
                r = s.kv_get(victim, key, meta)
                self.assertEqual((r.status_code, r.json().get("value")), (200, value),
                                 f"GET {key} via {s.name(victim)}: {r.text}")
        self.wait_caught_up(victim, {**before, **missed})

    def running(self, i):
        p = self.store.docker_inspect(i, "{{.State.Running}}")
        return p.strip() == "true"


class NetworkPartition(FaultTestCase):
    def replicas(self, of_node):
        """(A, B, C): the members of of_node's shard, of_node first being B."""
        s = self.store
        shard = s.node_shard(of_node)
        members = [s.index_of(a) for a in s.members(of_node, shard)]
        self.assertGreaterEqual(len(members), 3, members)
        others = [m for m in members if m != of_node]
        return shard, others[0], of_node, others[1]

    def cut(self, b):
        s = self.store
        s.disconnect(b)
        self.addCleanup(lambda: None if s.is_connected(b) else s.connect(b))

    def heal(self, b):
        # Its published port works again once it is back on the network.
        self.store.connect(b)
        self.answering(b)

    def test_partitioned_replica_converges(self):
        s = self.store
        shard, a, b, c = self.replicas(4)
        log(f"shard {shard}: A={s.name(a)} B={s.name(b)} (cut off) C={s.name(c)}")
        self.cut(b)
        self.wait_left(b, [i for i in s.indexes if i != b])
        with Timer("40 writes through A and C while B is cut off"):
            written, _ = self.write_through([a, c], 40, "part")
        mine = {k: v for k, v in written.items() if v[1] == shard}
        log(f"{len(mine)} of the 40 writes are in B's shard {shard}")
        self.assertTrue(mine)
        self.heal(b)
        self.wait_joined(b)
        self.wait_caught_up(b, written)

    def test_causal_put_across_partition(self):
        s = self.store
        shard, a, b, c = self.replicas(5)
        log(f"shard {shard}: A={s.name(a)} B={s.name(b)} (cut off) C={s.name(c)}")
        self.cut(b)
        self.wait_left(b, [a, c])
        # A key of B's shard, written on A while B cannot hear of it.
        n = 0
        while True:
            key = f"causal-k{n}"
            r = s.kv_put(a, key, "foo")
            self.assertEqual(r.status_code, 201, r.text)
            if r.json()["shard-id"] == shard:
                break
            n += 1
        m1 = r.json()["causal-metadata"]
        log(f"PUT {key}=foo on A -> M1 (after {n} keys of the other shard)")
        self.heal(b)
        r = s.kv_put(b, key, "bar", m1)
        self.assertVersioned(r, 200, "Updated successfully", {"shard-id": shard})
        m2 = r.json()["causal-metadata"]
        for i in (a, b, c):
            r = s.kv_get(i, key, m2)
            got = self.assertVersioned(r, 200, "Retrieved successfully", {"value": "bar"})
            self.assertEqual(got["causal-metadata"], m2, f"GET via {s.name(i)}")
        # And without metadata too, once the replicas have converged.
        wait_until(lambda: all(s.kv_get(i, key).json().get("value") == "bar" for i in (a, b, c)),
                   CATCH_UP_TIMEOUT, what="every replica returning bar without metadata")
        for i in (a, b, c):
            r = s.kv_get(i, key)
            self.assertEqual(r.json()["causal-metadata"], m2, f"GET via {s.name(i)}")
        self.wait_joined(b)


class PauseAndUnpause(FaultTestCase):
    def test_pause_then_unpause(self):
        s = self.store
        victim = 3
        others = [i for i in s.indexes if i != victim]
        s.docker("pause", victim)
        self.addCleanup(lambda: s.docker("unpause", victim) if s.is_paused(victim) else None)
        self.wait_left(victim, others)
        with Timer("30 writes through the 5 other nodes"):
            missed, _ = self.write_through(others, 30, "pause")
        log(f"writes while paused, by shard: {shard_counts(missed)}")
        s.docker("unpause", victim)
        self.answering(victim)
        self.wait_joined(victim)
        self.wait_caught_up(victim, missed)


def shard_counts(written):
    out = {}
    for _, shard in written.values():
        out[shard] = out.get(shard, 0) + 1
    return dict(sorted(out.items()))


if __name__ == "__main__":
    unittest.main()
