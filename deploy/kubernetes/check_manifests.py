"""What the store relies on in the rendered manifests, beyond their schemas: checked so that
an edit cannot quietly break a StatefulSet that still validates."""

import sys

import yaml


def main(path):
    docs = [d for d in yaml.safe_load_all(open(path)) if d]
    by_kind = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    sts = by_kind[("StatefulSet", "kvs")]
    spec = sts["spec"]
    pod = spec["template"]["spec"]
    kvs = pod["containers"][0]
    env = {e["name"]: e for e in kvs["env"]}
    problems = []

    def need(ok, what):
        if not ok:
            problems.append(what)

    need(spec["podManagementPolicy"] == "Parallel", "pods must start in parallel (a store forms from a majority)")
    need(spec["serviceName"] == "kvs", "serviceName must be the headless Service kvs")
    need(env["KVS_STATEFULSET_REPLICAS"]["value"] == str(spec["replicas"]),
         "KVS_STATEFULSET_REPLICAS must be the set's first replica count")
    shards = int(env["SHARD_COUNT"]["value"])
    need(spec["replicas"] >= 2 * shards, "at least two members per shard")
    need(env["SOCKET_ADDRESS"]["value"].startswith("$(POD_NAME).kvs."), "identity from the pod's name")
    need(env["KVS_DATA_DIR"]["value"] == "/data", "data on the volume")
    need(any(m["mountPath"] == "/data" for m in kvs["volumeMounts"]), "the data volume mounted")
    need(spec["volumeClaimTemplates"][0]["metadata"]["name"] == "data", "a volume claim per pod")
    need("/kvs" in kvs["readinessProbe"]["exec"]["command"], "readiness by kvs healthcheck")
    need("--live" in kvs["livenessProbe"]["exec"]["command"], "liveness by kvs healthcheck --live")
    sc = kvs["securityContext"]
    need(sc.get("readOnlyRootFilesystem") is True, "read-only root filesystem")
    need(pod["securityContext"].get("runAsNonRoot") is True, "non-root")
    need("secretKeyRef" in env["KVS_ADMIN_TOKEN"].get("valueFrom", {}), "admin token from the Secret")
    need(env["KVS_CLUSTER_SECRET_FILE"]["value"].startswith("/etc/kvs/"), "cluster secret from the Secret")
    need(kvs["resources"]["requests"], "resource requests")
    headless = by_kind[("Service", "kvs")]["spec"]
    need(headless.get("clusterIP") == "None", "the peer Service is headless")
    need(headless.get("publishNotReadyAddresses") is True, "names published before readiness")
    ports = {(p["port"], p["protocol"]) for p in headless["ports"]}
    relay = int(env["KVS_RELAY_PORT"]["value"])
    need({(8080, "TCP"), (8080, "UDP"), (relay, "TCP")} <= ports, "HTTP, gossip and relay ports")
    pdb = by_kind[("PodDisruptionBudget", "kvs")]["spec"]
    need(pdb.get("maxUnavailable") == 1, "at most one pod down at a time")
    if problems:
        sys.exit("manifests: " + "; ".join(problems))


if __name__ == "__main__":
    main(sys.argv[1])
