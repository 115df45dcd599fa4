"""kustomize renders the base and every overlay, and what it renders is right.

Every directory under deploy/k8s/overlays is built with the kustomize that
scripts/install-deps.sh installs (conftest.py; a missing kustomize fails in
CI). The secured overlays are checked the way a cluster would run them:
every certificate and key a variable names is a file of a mounted Secret,
every password comes from a Secret, and the built outboxd accepts the
rendered environment (librdkafka judges every kafka.* property at start).

    python3 -m pytest -q -p no:cacheprovider tests/deploy/test_render.py
"""
import copy
import functools
import os
import re
import subprocess
from collections import Counter
from pathlib import Path

import pytest
import yaml

from conftest import require_tool
from test_manifests import OUTBOXD_BIN, env_problems

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = sorted(p.parent.name for p in (K8S / "overlays").glob("*/kustomization.yaml"))
BASE_KINDS = Counter({"ConfigMap": 2, "Deployment": 2, "Service": 2, "PodDisruptionBudget": 2,
                      "ServiceMonitor": 2, "PrometheusRule": 1})
SECURED = {"secured": {"OUTBOXD_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
                       "OUTBOXD_KAFKA_SASL_MECHANISMS": "SCRAM-SHA-512"},
           "secured-mtls": {"OUTBOXD_KAFKA_SECURITY_PROTOCOL": "SSL"}}
# Variables that name a file outboxd (libpq, librdkafka) opens.
FILE_VARS = re.compile(r"^(OUTBOXD_KAFKA_SSL_\w+_LOCATION|PGSSLROOTCERT|PGSSLCERT|PGSSLKEY|PGPASSFILE)$")


@functools.lru_cache(maxsize=None)
def render(path):
    out = subprocess.run([require_tool("kustomize"), "build", str(path)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, f"kustomize build {path}:\n{out.stderr}"
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def kinds(docs):
    return Counter(d["kind"] for d in docs)


def by_kind(docs, kind):
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def test_there_are_overlays_to_render():
    assert {"secured", "secured-mtls", "relay-only", "apply-only", "without-prometheus-operator"} <= set(OVERLAYS)


def test_base_renders():
    docs = render(K8S / "base")
    assert kinds(docs) == BASE_KINDS
    assert set(by_kind(docs, "Deployment")) == {"outboxd", "outboxd-apply"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders(overlay):
    docs = render(K8S / "overlays" / overlay)
    got = kinds(docs)
    if overlay == "relay-only":
        assert got == Counter({k: 1 for k in BASE_KINDS})
        assert all(d["metadata"]["labels"]["app.kubernetes.io/name"] == "outboxd" for d in docs)
    elif overlay == "apply-only":
        assert got == Counter({k: 1 for k in BASE_KINDS})
        assert all(d["metadata"]["labels"]["app.kubernetes.io/name"] == "outboxd-apply"
                   for d in docs if d["kind"] != "PrometheusRule")
        rule = by_kind(docs, "PrometheusRule")["outboxd"]
        assert [g["name"] for g in rule["spec"]["groups"]] == ["outboxd-apply"]
    elif overlay == "without-prometheus-operator":
        assert got == BASE_KINDS - Counter({"ServiceMonitor": 2, "PrometheusRule": 1})
        assert not [d for d in docs if d["apiVersion"].startswith("monitoring.coreos.com/")]
    else:
        assert got == BASE_KINDS


def secret_files(pod):
    """Mounted path -> (Secret, key) of every Secret volume item."""
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    files = {}
    for c in pod["containers"]:
        for m in c.get("volumeMounts", []):
            secret = volumes[m["name"]]["secret"]
            for item in secret.get("items", []):
                files[f"{m['mountPath']}/{item['path']}"] = (secret["secretName"], item["key"])
    return files


def secured_problems(docs, expect):
    """What would stop the secured set-up from working, or leak a secret."""
    problems = []
    cms = by_kind(docs, "ConfigMap")
    for name, d in by_kind(docs, "Deployment").items():
        pod = d["spec"]["template"]["spec"]
        c = pod["containers"][0]
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for m in c.get("volumeMounts", []):
            v = volumes.get(m["name"])
            if v is None:
                problems.append(f"{name}: mount {m['name']} has no volume")
                continue
            if "secret" not in v:
                problems.append(f"{name}: volume {m['name']} is not a Secret")
                continue
            if not m.get("readOnly"):
                problems.append(f"{name}: Secret volume {m['name']} mounted writable")
            if v["secret"].get("defaultMode", 0o644) & 0o007:
                problems.append(f"{name}: Secret volume {m['name']} readable by others (defaultMode)")
        if c.get("volumeMounts") and pod.get("securityContext", {}).get("fsGroup") != \
                pod["securityContext"].get("runAsGroup"):
            problems.append(f"{name}: fsGroup must be the runAsGroup, or uid 10001 cannot read the 0440 files")
        files = secret_files(pod)
        env = {e["name"]: e for e in c.get("env", [])}
        for var, e in env.items():
            if FILE_VARS.match(var) and e.get("value") not in files:
                problems.append(f"{name}: {var}={e.get('value')} is no file of a mounted Secret")
            if re.search(r"PASSWORD|SECRET", var) and "secretKeyRef" not in e.get("valueFrom", {}):
                problems.append(f"{name}: {var} is not read from a Secret")
        want = dict(expect, PGSSLMODE="verify-full")
        for var, value in want.items():
            if env.get(var, {}).get("value") != value:
                problems.append(f"{name}: {var} should be {value}, is {env.get(var, {}).get('value')}")
        if "PGSSLROOTCERT" not in env:
            problems.append(f"{name}: verify-full without PGSSLROOTCERT checks against nothing the pod has")
        if expect["OUTBOXD_KAFKA_SECURITY_PROTOCOL"] == "SSL":
            for var in ("OUTBOXD_KAFKA_SSL_CERTIFICATE_LOCATION", "OUTBOXD_KAFKA_SSL_KEY_LOCATION"):
                if var not in env:
                    problems.append(f"{name}: mTLS without {var}")
        else:
            if "OUTBOXD_KAFKA_SASL_PASSWORD" not in env:
                problems.append(f"{name}: SASL without OUTBOXD_KAFKA_SASL_PASSWORD")
        if "OUTBOXD_KAFKA_SSL_CA_LOCATION" not in env:
            problems.append(f"{name}: Kafka TLS without OUTBOXD_KAFKA_SSL_CA_LOCATION")
        cm = cms[c["envFrom"][0]["configMapRef"]["name"]]["data"]
        problems += env_problems({**cm, **{k: e.get("value") for k, e in env.items()}}, f"{name} env")
    return problems


@pytest.mark.parametrize("overlay", sorted(SECURED))
def test_secured_overlay(overlay):
    docs = render(K8S / "overlays" / overlay)
    assert secured_problems(docs, SECURED[overlay]) == []


def _dep(docs, name="outboxd"):
    return by_kind(docs, "Deployment")[name]["spec"]["template"]["spec"]


SECURED_MISTAKES = [
    ("password literal", lambda d: _dep(d)["containers"][0]["env"].append(
        {"name": "OUTBOXD_KAFKA_SASL_PASSWORD", "value": "hunter2"})),
    ("CA path not mounted", lambda d: _dep(d, "outboxd-apply")["containers"][0]["env"].append(
        {"name": "OUTBOXD_KAFKA_SSL_CA_LOCATION", "value": "/etc/ssl/ca.crt"})),
    ("writable mount", lambda d: _dep(d)["containers"][0]["volumeMounts"][0].update(readOnly=False)),
    ("world-readable key", lambda d: _dep(d)["volumes"][0]["secret"].update(defaultMode=0o444)),
    ("no fsGroup", lambda d: _dep(d)["securityContext"].pop("fsGroup")),
    ("sslmode require", lambda d: [e.update(value="require") for e in _dep(d)["containers"][0]["env"]
                                   if e["name"] == "PGSSLMODE"]),
    ("unknown variable", lambda d: _dep(d)["containers"][0]["env"].append(
        {"name": "OUTBOXD_APPLY_TABLES", "value": "x"})),
]


@pytest.mark.parametrize("what,mutate", SECURED_MISTAKES, ids=[w for w, _ in SECURED_MISTAKES])
def test_secured_check_catches(what, mutate):
    docs = copy.deepcopy(render(K8S / "overlays" / "secured"))
    mutate(docs)
    assert secured_problems(docs, SECURED["secured"]), f"accepted: {what}"


@pytest.mark.parametrize("overlay", sorted(SECURED))
@pytest.mark.parametrize("app", ["outboxd", "outboxd-apply"])
def test_outboxd_accepts_the_rendered_environment(overlay, app):
    """The rendered ConfigMap + env (Secret values stand in) pass outboxd's
    start-up checks, librdkafka's judgement of every kafka.* property
    included, and nothing secret is printed."""
    if not os.access(OUTBOXD_BIN, os.X_OK):
        pytest.skip(f"{OUTBOXD_BIN} not built")
    docs = render(K8S / "overlays" / overlay)
    c = by_kind(docs, "Deployment")[app]["spec"]["template"]["spec"]["containers"][0]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    env.update(by_kind(docs, "ConfigMap")[c["envFrom"][0]["configMapRef"]["name"]]["data"])
    planted = "planted-secret-4711"
    for e in c.get("env", []):
        env[e["name"]] = e["value"] if "value" in e else planted
    # What the Secrets of secret.example.yaml / apply-secret.example.yaml hold.
    env["OUTBOXD_PG_CONNINFO" if app == "outboxd" else "OUTBOXD_APPLY_CONNINFO"] = "host=db dbname=app user=u"
    env["PGPASSWORD"] = planted
    cmd = [str(OUTBOXD_BIN)] + ([] if app == "outboxd" else ["apply"]) + ["--print-config"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert planted not in out.stdout + out.stderr
    printed = dict(line.split(" = ", 1) for line in out.stdout.splitlines() if " = " in line)
    for e in c.get("env", []):
        if e["name"].startswith("OUTBOXD_KAFKA_") and "value" in e:
            key = "kafka." + e["name"][len("OUTBOXD_KAFKA_"):].lower().replace("_", ".")
            # ssl.key.location is one of the properties librdkafka flags sensitive.
            assert printed.get(key) in (e["value"], "[redacted]"), f"{e['name']} did not reach {key}"
    assert printed.get("kafka.bootstrap.servers", "").endswith(":9093")


@pytest.mark.parametrize("example", ["secret.example.yaml", "apply-secret.example.yaml"])
def test_example_secrets_do_not_weaken_verify_full(example):
    """A conninfo keyword beats PGSSLMODE: an example Secret (the file users
    copy) with sslmode=require would silently undo pg-verify-full."""
    doc = yaml.safe_load((K8S / "base" / example).read_text())
    for key, value in doc["stringData"].items():
        if key.endswith("_CONNINFO"):
            modes = re.findall(r"\bsslmode\s*=\s*(\S+)", value)
            assert all(m == "verify-full" for m in modes), f"{example} {key}: sslmode={modes}"
