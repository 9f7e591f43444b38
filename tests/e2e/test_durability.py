"""Durable storage in containers: every node of a store stopped at once (docker kill, as a
power cut or a host reboot would) and started again on its data volume comes back with
every acknowledged key, under the same shard ids, also after add-member."""

import unittest

from kvs_e2e import StoreTestCase, Timer, build_image, log, run, wait_until


def setUpModule():
    build_image()


class WholeStoreRestart(StoreTestCase):
    NODES = 4
    SHARDS = 2
    FORMAT = "2019"

    def restart_on_volumes(self, indexes):
        s = self.store
        for i in indexes:
            s.docker("kill", i)
        extra = ["--add-node"] if s.extra_started else []
        with Timer("build.sh --keep-data (every container anew, on its volume)"):
            run(["./build.sh", "--no-build", "--keep-data", "-n", str(s.n), "-s",
                 str(s.shards), "--format", s.format, "--timeout", "90", *extra])

    def write_once(self, nodes, count, tag, meta):
        s = self.store
        written = {}
        for n in range(count):
            key, value = f"{tag}-{n}", f"{tag}-value-{n}"
            r = s.kv_put(nodes[n % len(nodes)], key, value, meta)
            self.assertEqual(r.status_code, 201, r.text)
            meta = r.json()["causal-metadata"]
            written[key] = value
        return written, meta

    def assert_all_back(self, written, meta, nodes):
        s = self.store
        for n, (key, value) in enumerate(written.items()):
            i = nodes[n % len(nodes)]
            r = wait_until(lambda: s.kv_get(i, key, meta), 30, what=f"{key} via {s.name(i)}")
            self.assertEqual((r.status_code, r.json().get("value")), (200, value), r.text)

    def test_a_killed_store_comes_back_whole_also_after_add_member(self):
        s = self.store
        written, meta = self.write_once(s.indexes, 300, "before", "")
        shards = {i: s.node_shard(i) for i in s.indexes}
        self.restart_on_volumes(s.indexes)
        self.assertEqual({i: s.node_shard(i) for i in s.indexes}, shards)
        self.assert_all_back(written, meta, s.indexes)
        log(f"{len(written)} keys back after a restart of every container")

        fifth = s.start_extra()
        wait_until(lambda: all(s.addr(fifth) in s.view(i) for i in s.indexes), 30,
                   what="the fifth node in every view")
        r = s.put(1, "/key-value-store-shard/add-member/0", {"socket-address": s.addr(fifth)})
        self.assertEqual(r.status_code, 200, r.text)
        more, meta = self.write_once(s.indexes, 100, "after", meta)
        written.update(more)
        shards = {i: s.node_shard(i) for i in s.indexes}
        self.restart_on_volumes(s.indexes)
        self.assertEqual({i: s.node_shard(i) for i in s.indexes}, shards)
        self.assert_all_back(written, meta, s.indexes)
        log(f"{len(written)} keys back after add-member and a second restart")


if __name__ == "__main__":
    unittest.main()
