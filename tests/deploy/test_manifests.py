"""Static checks of the deployment artefacts against the code they deploy.

deploy/k8s/base (kustomize), deploy/grafana/outboxd-dashboard.json,
docker-compose.yml and deploy/Dockerfile are checked against the facts in the
sources: the config table (src/common/config.c), the status paths (src/common/status_http.c),
the metric names, labels and label values (src/common/metrics.c), the package needs
(CMakeLists.txt) and the local service ports (scripts/pg.sh, scripts/kafka.sh).

Every check is a function that returns a list of problems. The positive tests
run it on the real files and expect none; the negative tests run the same
function on a copy with one deliberate mistake and expect it to be caught, so
no check can pass vacuously. Needs PyYAML; kubectl and build/outboxd are used
when present (kustomize render, --print-config) and skipped otherwise.

    python3 -m pytest -q tests/deploy
"""
import copy
import functools
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
BASE = ROOT / "deploy" / "k8s" / "base"
DASHBOARD = ROOT / "deploy" / "grafana" / "outboxd-dashboard.json"
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
OUTBOXD_BIN = Path(os.environ.get("OUTBOXD_BIN", ROOT / "build" / "outboxd"))

REQUIRED_ALERTS = {
    "OutboxdSourceAgeHigh", "OutboxdNoAcks", "OutboxdRetainedWALHigh", "OutboxdSlotWALAtRisk",
    "OutboxdSlotLost", "OutboxdNotReady", "OutboxdHalted", "OutboxdRestartsHigh",
    "OutboxdApplySourceAgeHigh", "OutboxdApplyHalted", "OutboxdApplyNotApplying",
}
# Labels Prometheus (Operator) attaches to every scraped series.
TARGET_LABELS = {"namespace", "pod", "service", "job", "instance", "endpoint", "container"}
# The two programs the base deploys, told apart by app.kubernetes.io/name: what
# each Deployment must look like, and the job its ServiceMonitor gives (the
# OutboxdDown / OutboxdApplyDown alerts select it).
APPS = {
    "outboxd": {"args": "run", "secret_file": "secret.example.yaml", "job": "outboxd", "container": "outboxd"},
    "outboxd-apply": {"args": "apply", "secret_file": "apply-secret.example.yaml", "job": "outboxd-apply",
                      "container": "outboxd-apply"},
}
# A SIGTERM'd pod needs time after shutdown.timeout_ms for the final status
# update and exit before the kubelet's SIGKILL.
SHUTDOWN_MARGIN_MS = 5000


# --------------------------------------------------------------------------
# Facts from the sources


def src(path):
    return (ROOT / path).read_text()


@functools.lru_cache(maxsize=None)
def config_table():
    """key -> dict(type, default, min, max, required) from the opts[] table."""
    text = src("src/common/config.c")
    table = {}
    for m in re.finditer(
        r'\{\s*"([a-z0-9_.]+)",\s*(T_STR|T_INT|T_BOOL),\s*S\(\w+\),\s*"((?:[^"\\]|\\.)*)",'
        r'\s*(-?\d+),\s*(-?\d+),\s*([01])', text):
        table[m[1]] = {"type": m[2], "default": m[3], "min": int(m[4]), "max": int(m[5]),
                       "required": m[6] == "1"}
    assert "pg.conninfo" in table and "shutdown.timeout_ms" in table, \
        "could not parse the opts[] table in src/common/config.c"
    return table


def env_name(key):
    return "OUTBOXD_" + key.upper().replace(".", "_")


@functools.lru_cache(maxsize=None)
def allowed_words():
    """key -> allowed values, from obx_config_validate's messages of the form
    `key = "%s": use a, b or c` (log.level, log.format, poison.policy, ...)."""
    text, words = src("src/common/config.c"), {}
    for key, choice in re.findall(r'([a-z_.]+) = \\"%s\\": use ((?:[a-z-]+, )*[a-z-]+ or [a-z-]+)"', text):
        words[key] = set(re.split(r",\s*|\s+or\s+", choice))
    assert {"log.level", "log.format"} <= set(words), "no allowed values for log.* in src/common/config.c"
    return words


@functools.lru_cache(maxsize=None)
def status_paths():
    text = src("src/common/status_http.c")
    paths = set(re.findall(r'strcmp\(url,\s*"(/[^"]*)"\)', text))
    assert {"/healthz", "/readyz", "/metrics"} <= paths, f"status paths not found in status_http.c: {paths}"
    return paths


@functools.lru_cache(maxsize=None)
def metric_catalog():
    """Series names outboxd exposes, their labels, types and label values.

    Names come from COUNTER("x", ...) / GAUGE("x", ...) (exposed as outboxd_x
    with {slot}), from literal series strings "outboxd_x{a=..,b=..}" or
    "outboxd_x%s" (the {slot} label string), from HISTOGRAM("x", help, "label", ...)
    (outboxd_x_bucket/_sum/_count), and from "# TYPE outboxd_x type"."""
    text = src("src/common/metrics.c")
    series, types = {}, {}
    # COUNTER/GAUGE take the label string of the function they are in: {group}
    # in render_apply_prometheus, {slot} elsewhere.
    apply_start = text.index("static void render_apply_prometheus")
    apply_end = text.index("static void render_apply_json")
    for m in re.finditer(r'\b(COUNTER|GAUGE)\(\s*"([a-z0-9_]+)"', text):
        label = "group" if apply_start <= m.start() < apply_end else "slot"
        series.setdefault("outboxd_" + m[2], set()).add(label)
        types["outboxd_" + m[2]] = m[1].lower()
    for name, typ in re.findall(r'# TYPE (outboxd_[a-z0-9_]+) (counter|gauge|histogram|summary)', text):
        types[name] = typ
    for name, key in re.findall(r'\bHISTOGRAM\(\s*"([a-z0-9_]+)",\s*"[^"]*",\s*"(\w+)"', text):
        types["outboxd_" + name] = "histogram"
        series["outboxd_" + name + "_bucket"] = {key, "le"}
        series["outboxd_" + name + "_sum"] = {key}
        series["outboxd_" + name + "_count"] = {key}
    for name, labels in re.findall(r'(outboxd_[a-z0-9_]+)(%s|\{[^}]*\})', text):
        lbl = {"slot"} if labels == "%s" else set(re.findall(r'(\w+)=', labels))
        series.setdefault(name, set()).update(lbl)
    # A histogram's family name is not a series; its _bucket/_sum/_count are.
    for name, typ in types.items():
        if typ == "histogram":
            series.pop(name, None)
            for suffix in ("_bucket", "_sum", "_count"):
                assert name + suffix in series, f"histogram {name} lacks {suffix} in metrics.c"
    assert "outboxd_events_acked_total" in series, "could not parse metric names in src/common/metrics.c"

    def c_strings(array_regex):
        m = re.search(array_regex, text)
        assert m, f"no {array_regex} in metrics.c"
        return set(re.findall(r'"([^"]*)"', m[1]))

    values = {"state": c_strings(r'n\[\]\s*=\s*\{([^}]*)\}'),
              "status": c_strings(r'wal_names\[\]\s*=\s*\{([^}]*)\}')}
    return {"series": series, "types": types, "values": values}


def metric_families():
    cat = metric_catalog()
    return set(cat["types"]) | {n for n in cat["series"] if not re.search(r"_(bucket|sum|count)$", n)}


def is_counterish(name, cat):
    if re.search(r"_(bucket|sum|count)$", name):
        return cat["types"].get(re.sub(r"_(bucket|sum|count)$", "", name)) in ("histogram", "summary")
    return cat["types"].get(name) == "counter"


@functools.lru_cache(maxsize=None)
def dockerfile_facts(text=None):
    text = text if text is not None else DOCKERFILE.read_text()
    # Join continuation lines, drop comments.
    lines = re.sub(r"\\\n", " ", text).splitlines()
    stages, cur = [], None
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instr, _, rest = line.partition(" ")
        instr = instr.upper()
        if instr == "FROM":
            cur = {"from": rest.split()[0], "packages": set(), "copy": [], "entrypoint": None, "cmd": None,
                   "user": None}
            stages.append(cur)
        elif instr == "RUN":
            for m in re.finditer(r"apt-get install\s+([^&|;]*)", rest):
                cur["packages"].update(w for w in m[1].split() if not w.startswith("-"))
        elif instr == "COPY":
            cur["copy"].append(rest.split())
        elif instr in ("ENTRYPOINT", "CMD"):
            cur[instr.lower()] = json.loads(rest) if rest.startswith("[") else ["/bin/sh", "-c", rest]
        elif instr == "USER":
            cur["user"] = rest.strip()
    return stages


def cmake_required_pkgconfig():
    """pkg-config modules CMakeLists.txt requires outside if() blocks."""
    depth, mods = 0, []
    for line in src("CMakeLists.txt").splitlines():
        s = line.strip()
        if re.match(r"if\s*\(", s):
            depth += 1
        elif re.match(r"endif\s*\(", s):
            depth -= 1
        m = re.match(r"pkg_check_modules\(\s*\w+\s+(.*)\)", s)
        if m and depth == 0 and "REQUIRED" in m[1].split():
            mods.append([w for w in m[1].split() if w not in ("REQUIRED", "IMPORTED_TARGET", "QUIET")][0])
    return mods


# Debian 12 packages for a pkg-config module: (build stage, runtime stage).
PKGCONFIG_DEBIAN = {
    "libpq": ("libpq-dev", "libpq5"),
    "rdkafka": ("librdkafka-dev", "librdkafka1"),
    "libprotobuf-c": ("libprotobuf-c-dev", "libprotobuf-c1"),
    "libcjson": ("libcjson-dev", "libcjson1"),
    "libmicrohttpd": ("libmicrohttpd-dev", "libmicrohttpd12"),
    "cmocka": ("libcmocka-dev", "libcmocka0"),
    "libcrypto": ("libssl-dev", "libssl3"),
}


def script_default_port(path, var):
    m = re.search(r"\$\{" + var + r":-(\d+)\}", src(path))
    assert m, f"no default for {var} in {path}"
    return int(m[1])


def gh_anchor(heading):
    """GitHub's anchor for a Markdown heading."""
    s = heading.strip().lower()
    s = re.sub(r"[^\w\- ]", "", s)
    return s.replace(" ", "-")


def doc_anchors(path):
    text = (ROOT / path).read_text()
    return {gh_anchor(h) for h in re.findall(r"^#{1,6}\s+(.*?)\s*#*\s*$", text, re.M)}


# --------------------------------------------------------------------------
# Loading the artefacts into one bundle the checks read


def load_yaml_docs(path):
    return [d for d in yaml.safe_load_all(Path(path).read_text()) if d is not None]


def load_bundle(app="outboxd"):
    kust = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    files = {}
    for p in sorted(BASE.glob("*.yaml")):
        files[p.name] = load_yaml_docs(p)
    by_kind = {}
    for name, docs in files.items():
        for d in docs:
            by_kind.setdefault(d.get("kind"), []).append(d)
    return {
        "app": app,
        "kustomization": kust,
        "files": files,
        "kinds": by_kind,
        "dashboard": json.loads(DASHBOARD.read_text()),
        "compose": yaml.safe_load(COMPOSE.read_text()),
        "dockerfile": DOCKERFILE.read_text(),
    }


@pytest.fixture
def bundle():
    return load_bundle()


def app_of(doc):
    return doc.get("metadata", {}).get("labels", {}).get("app.kubernetes.io/name")


def one(b, kind, file=None):
    """The one document of kind for the bundle's app (the PrometheusRule is
    the relay's and covers both)."""
    docs = b["files"][file] if file else b["kinds"].get(kind, [])
    docs = [d for d in docs if d.get("kind") == kind]
    if not file and kind != "PrometheusRule":
        docs = [d for d in docs if app_of(d) == b["app"]]
    assert len(docs) == 1, f"expected exactly one {kind}, got {len(docs)}"
    return docs[0]


def deployment(b):
    return one(b, "Deployment")


def container(b):
    return deployment(b)["spec"]["template"]["spec"]["containers"][0]


def configmap(b):
    return one(b, "ConfigMap")


def secret_example(b):
    return one(b, "Secret", APPS[b["app"]]["secret_file"])


def named_port(b, name):
    for p in container(b).get("ports", []):
        if p.get("name") == name:
            return p["containerPort"]
    return None


# --------------------------------------------------------------------------
# Checks: each returns a list of problems (empty = fine)


def env_problems(env, where):
    """OUTBOXD_* names must be config keys (or OUTBOXD_KAFKA_*), values valid."""
    table, words, problems = config_table(), allowed_words(), []
    by_env = {env_name(k): k for k in table}
    for name, value in env.items():
        if not name.startswith("OUTBOXD_"):
            continue
        if name.startswith("OUTBOXD_KAFKA_"):
            prop = name[len("OUTBOXD_KAFKA_"):].lower().replace("_", ".")
            if not re.fullmatch(r"[a-z0-9]+(\.[a-z0-9]+)*", prop):
                problems.append(f"{where}: {name} is not a librdkafka property name")
            continue
        key = by_env.get(name)
        if key is None:
            problems.append(f"{where}: {name} is no config key of src/common/config.c "
                            f"(outboxd would silently ignore it)")
            continue
        if value is None:  # valueFrom and the like
            continue
        o, v = table[key], str(value)
        if o["type"] == "T_INT":
            if not re.fullmatch(r"-?\d+", v) or not o["min"] <= int(v) <= o["max"]:
                problems.append(f"{where}: {name}={v!r} is not an integer in [{o['min']}, {o['max']}]")
        elif o["type"] == "T_BOOL":
            if v not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
                problems.append(f"{where}: {name}={v!r} is not a boolean")
        elif key in words and v not in words[key]:
            problems.append(f"{where}: {name}={v!r} is not one of {sorted(words[key])}")
    return problems


def container_env(b):
    env = dict(configmap(b).get("data", {}))
    for e in container(b).get("env", []) or []:
        env[e["name"]] = e.get("value")
    return env


def check_env(b):
    problems = env_problems(container_env(b), "ConfigMap/Deployment env")
    problems += env_problems(secret_example(b).get("stringData", {}), "secret.example.yaml")
    return problems


def check_configmap_has_no_secrets(b):
    problems = []
    for k, v in configmap(b).get("data", {}).items():
        if re.search(r"PASSWORD|SECRET|TOKEN|CONNINFO", k) or re.search(r"password\s*=", str(v), re.I):
            problems.append(f"ConfigMap: {k} carries a secret: put it in the Secret")
    return problems


def check_status_listen(b):
    """The status port must listen on the pod IP, on the port the probes use."""
    listen = container_env(b).get(env_name("status.listen"))
    port = named_port(b, "status")
    if listen is None:
        return ["ConfigMap: OUTBOXD_STATUS_LISTEN unset: the default 127.0.0.1:8080 is unreachable for probes"]
    host, _, p = str(listen).rpartition(":")
    problems = []
    if host not in ("0.0.0.0", ""):
        problems.append(f"OUTBOXD_STATUS_LISTEN={listen}: must listen on 0.0.0.0 in a pod")
    if not p.isdigit() or int(p) != port:
        problems.append(f"OUTBOXD_STATUS_LISTEN={listen}: port differs from container port 'status' ({port})")
    return problems


def check_probes(b):
    c, problems = container(b), []
    want = {"startupProbe": "/healthz", "livenessProbe": "/healthz", "readinessProbe": "/readyz"}
    names = {p.get("name") for p in c.get("ports", [])} | {p.get("containerPort") for p in c.get("ports", [])}
    for probe, path in want.items():
        get = (c.get(probe) or {}).get("httpGet")
        if not get:
            problems.append(f"{probe}: missing or not httpGet")
            continue
        if get.get("path") not in status_paths():
            problems.append(f"{probe}: path {get.get('path')} is not served by src/common/status_http.c "
                            f"({sorted(status_paths())})")
        elif get["path"] != path:
            problems.append(f"{probe}: should probe {path}, probes {get['path']}")
        if get.get("port") not in names:
            problems.append(f"{probe}: port {get.get('port')} is no container port")
    return problems


def check_termination_grace(b):
    spec = deployment(b)["spec"]["template"]["spec"]
    key = "shutdown.timeout_ms"
    timeout = int(container_env(b).get(env_name(key)) or config_table()[key]["default"])
    grace = spec.get("terminationGracePeriodSeconds", 30)
    if grace * 1000 < timeout + SHUTDOWN_MARGIN_MS:
        return [f"terminationGracePeriodSeconds {grace} s is not above {key} {timeout} ms "
                f"+ {SHUTDOWN_MARGIN_MS} ms: SIGKILL would cut the final flush"]
    return []


def quantity(q):
    q = str(q)
    units = {"m": 1e-3, "": 1, "k": 1e3, "M": 1e6, "G": 1e9, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    m = re.fullmatch(r"([0-9.]+)([a-zA-Z]*)", q)
    if not m or m[2] not in units:
        raise ValueError(f"bad quantity {q}")
    return float(m[1]) * units[m[2]]


def labels_match(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def check_deployment(b):
    d, problems = deployment(b), []
    if d.get("apiVersion") != "apps/v1":
        problems.append("Deployment: apiVersion must be apps/v1")
    spec = d["spec"]
    pod = spec["template"]["spec"]
    tlabels = spec["template"]["metadata"].get("labels", {})
    if not labels_match(spec.get("selector", {}).get("matchLabels"), tlabels):
        problems.append("Deployment: selector does not match the pod template labels")
    if b["app"] == "outboxd" and spec.get("replicas") != 2:
        problems.append("Deployment: replicas should be 2 (one streams, one stands by)")
    if b["app"] == "outboxd-apply" and not (isinstance(spec.get("replicas"), int) and spec["replicas"] > 1):
        problems.append("Deployment: apply should run more than one process in its consumer group")
    st = spec.get("strategy", {})
    ru = st.get("rollingUpdate", {})
    if st.get("type") != "RollingUpdate" or ru.get("maxSurge") is None or ru.get("maxUnavailable") is None:
        problems.append("Deployment: RollingUpdate with explicit maxSurge/maxUnavailable expected")
    elif ru.get("maxSurge") in (0, "0%") and ru.get("maxUnavailable") in (0, "0%"):
        problems.append("Deployment: maxSurge and maxUnavailable cannot both be 0")
    containers = pod.get("containers") or []
    if len(containers) != 1 or not containers[0].get("name") or not containers[0].get("image"):
        problems.append("Deployment: one named container with an image expected")
        return problems
    if containers[0]["name"] != APPS[b["app"]]["container"]:
        problems.append(f"Deployment: container {containers[0]['name']} should be {APPS[b['app']]['container']} "
                        f"(the CrashLooping alerts select it)")
    c = containers[0]
    psc, csc = pod.get("securityContext", {}), c.get("securityContext", {})
    if not (psc.get("runAsNonRoot") or csc.get("runAsNonRoot")):
        problems.append("Deployment: runAsNonRoot must be true")
    if csc.get("readOnlyRootFilesystem") is not True:
        problems.append("Deployment: readOnlyRootFilesystem must be true")
    if csc.get("allowPrivilegeEscalation") is not False:
        problems.append("Deployment: allowPrivilegeEscalation must be false")
    if "ALL" not in (csc.get("capabilities", {}).get("drop") or []):
        problems.append("Deployment: capabilities must drop ALL")
    if pod.get("enableServiceLinks") is not False:
        problems.append("Deployment: enableServiceLinks must be false (a Service named outboxd-kafka* "
                        "would inject OUTBOXD_KAFKA_* variables, read as librdkafka properties)")
    res = c.get("resources", {})
    for r in ("cpu", "memory"):
        req, lim = res.get("requests", {}).get(r), res.get("limits", {}).get(r)
        if req is None or lim is None:
            problems.append(f"Deployment: resources.requests/limits.{r} missing")
        elif quantity(req) > quantity(lim):
            problems.append(f"Deployment: {r} request {req} above limit {lim}")
    env_from = c.get("envFrom") or []
    cm_refs = {e["configMapRef"]["name"] for e in env_from if "configMapRef" in e}
    sec_refs = {e["secretRef"]["name"] for e in env_from if "secretRef" in e}
    if configmap(b)["metadata"]["name"] not in cm_refs:
        problems.append("Deployment: envFrom does not reference the ConfigMap")
    if secret_example(b)["metadata"]["name"] not in sec_refs:
        problems.append("Deployment: envFrom does not reference the Secret of secret.example.yaml")
    return problems


def check_image(b):
    """Container command/args/user agree with deploy/Dockerfile and kustomize images."""
    stages, c, problems = dockerfile_facts(b["dockerfile"]), container(b), []
    final = stages[-1]
    ep, cmd = final["entrypoint"], final["cmd"]
    if not ep or not ep[-1].endswith("/outboxd"):
        problems.append(f"Dockerfile: ENTRYPOINT {ep} is not outboxd")
    elif not any(cp[-1] == ep[-1] for cp in final["copy"]):
        problems.append(f"Dockerfile: nothing is copied to the ENTRYPOINT path {ep[-1]}")
    if "command" in c and c["command"] != ep:
        problems.append(f"Deployment: command {c['command']} overrides the image ENTRYPOINT {ep}")
    args = c.get("args", cmd)
    want = APPS[b["app"]]["args"]
    if not args or args[0] != want:
        problems.append(f"Deployment: args {args} do not start `{want}`")
    uid = final["user"]
    run_as = c.get("securityContext", {}).get("runAsUser") or \
        deployment(b)["spec"]["template"]["spec"].get("securityContext", {}).get("runAsUser")
    if uid is None or not uid.isdigit():
        problems.append(f"Dockerfile: USER {uid} should be numeric for runAsNonRoot")
    elif run_as is not None and run_as != int(uid):
        problems.append(f"Deployment: runAsUser {run_as} differs from the image USER {uid}")
    image = c["image"].split("@")[0]
    image = image.rsplit(":", 1)[0] if ":" in image.rsplit("/", 1)[-1] else image
    names = {i.get("name") for i in b["kustomization"].get("images", [])}
    if image not in names:
        problems.append(f"kustomization: images[] does not name the container image {image}")
    return problems


def check_dockerfile_packages(b):
    """The image can be built and run: every pkg-config module CMakeLists.txt
    requires has its -dev package in the build stage and its library in the
    final stage."""
    stages, problems = dockerfile_facts(b["dockerfile"]), []
    build_pkgs = set().union(*(s["packages"] for s in stages[:-1])) if len(stages) > 1 else set()
    run_pkgs = stages[-1]["packages"]
    for mod in cmake_required_pkgconfig():
        if mod not in PKGCONFIG_DEBIAN:
            problems.append(f"CMakeLists.txt requires {mod}: add its Debian packages to PKGCONFIG_DEBIAN")
            continue
        dev, lib = PKGCONFIG_DEBIAN[mod]
        if dev not in build_pkgs:
            problems.append(f"Dockerfile build stage lacks {dev} (CMakeLists.txt requires pkg-config {mod})")
        if lib not in run_pkgs:
            problems.append(f"Dockerfile final stage lacks {lib} (outboxd links {mod})")
    return problems


def check_service(b):
    s, problems = one(b, "Service"), []
    tlabels = deployment(b)["spec"]["template"]["metadata"].get("labels", {})
    if not labels_match(s["spec"].get("selector"), tlabels):
        problems.append("Service: selector does not match the pod labels")
    ports = {p.get("name"): p for p in s["spec"].get("ports", [])}
    if "status" not in ports:
        problems.append("Service: no port named status")
    else:
        p = ports["status"]
        tp = p.get("targetPort", p.get("port"))
        if tp != "status" and tp != named_port(b, "status"):
            problems.append(f"Service: targetPort {tp} is not the container port 'status'")
        if p.get("port") != 8080:
            problems.append("Service: status port should be 8080")
    return problems


def check_pdb(b):
    p, problems = one(b, "PodDisruptionBudget"), []
    if p.get("apiVersion") != "policy/v1":
        problems.append("PDB: apiVersion must be policy/v1")
    spec = p["spec"]
    if ("minAvailable" in spec) == ("maxUnavailable" in spec):
        problems.append("PDB: set exactly one of minAvailable/maxUnavailable")
    tlabels = deployment(b)["spec"]["template"]["metadata"].get("labels", {})
    if not labels_match(spec.get("selector", {}).get("matchLabels"), tlabels):
        problems.append("PDB: selector does not match the pod labels")
    replicas = deployment(b)["spec"]["replicas"]
    if b["app"] == "outboxd" and spec.get("minAvailable") != 1:
        problems.append("PDB: minAvailable should be 1")
    elif "minAvailable" in spec and spec["minAvailable"] >= replicas:
        problems.append("PDB: minAvailable >= replicas blocks every drain")
    elif "maxUnavailable" in spec and not 0 < int(spec["maxUnavailable"]) < replicas:
        problems.append("PDB: maxUnavailable must let one pod go and keep one")
    return problems


def check_servicemonitor(b):
    sm, problems = one(b, "ServiceMonitor"), []
    if sm.get("apiVersion") != "monitoring.coreos.com/v1":
        problems.append("ServiceMonitor: apiVersion must be monitoring.coreos.com/v1")
    svc = one(b, "Service")
    if not labels_match(sm["spec"].get("selector", {}).get("matchLabels"), svc["metadata"].get("labels", {})):
        problems.append("ServiceMonitor: selector does not match the Service labels")
    svc_ports = {p.get("name") for p in svc["spec"]["ports"]}
    eps = sm["spec"].get("endpoints") or []
    if not eps:
        problems.append("ServiceMonitor: no endpoints")
    for ep in eps:
        if ep.get("port") not in svc_ports:
            problems.append(f"ServiceMonitor: port {ep.get('port')} is no Service port name")
        if ep.get("path", "/metrics") != "/metrics" or "/metrics" not in status_paths():
            problems.append(f"ServiceMonitor: path {ep.get('path')} is not /metrics of status_http.c")
    jl = sm["spec"].get("jobLabel")
    job = APPS[b["app"]]["job"]
    if not jl or svc["metadata"].get("labels", {}).get(jl) != job:
        problems.append(f"ServiceMonitor: jobLabel {jl} does not give job={job} (the *Down alerts)")
    return problems


def _balanced(expr):
    pairs, stack = {")": "(", "]": "[", "}": "{"}, []
    for ch in re.sub(r'"[^"]*"', '""', expr):
        if ch in "([{":
            stack.append(ch)
        elif ch in pairs:
            if not stack or stack.pop() != pairs[ch]:
                return False
    return not stack


def promql_problems(expr, where):
    """Metric names, labels, one-hot label values and rate() targets of an
    expression against src/common/metrics.c."""
    cat, problems = metric_catalog(), []
    series = cat["series"]
    all_labels = set().union(*series.values()) | TARGET_LABELS | {"le"}
    if not _balanced(expr):
        problems.append(f"{where}: unbalanced brackets in {expr!r}")
    bare = re.sub(r'"[^"]*"', '""', expr)
    for name in re.findall(r"\b(outboxd_[a-zA-Z0-9_]+)", bare):
        if name not in series:
            problems.append(f"{where}: metric {name} is not exposed by src/common/metrics.c")
    for name, body in re.findall(r"\b(outboxd_[a-zA-Z0-9_]+)\s*\{([^}]*)\}", expr):
        for label, op, value in re.findall(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"', body):
            if name in series and label not in series[name] | TARGET_LABELS:
                problems.append(f"{where}: {name} has no label {label}")
            if label in cat["values"] and "$" not in value:
                wanted = value.split("|") if op in ("=~", "!~") else [value]
                for w in wanted:
                    if w not in cat["values"][label]:
                        problems.append(f"{where}: {name}{{{label}{op}\"{value}\"}}: {w!r} is never exported "
                                        f"(values: {sorted(cat['values'][label])})")
    for clause in re.findall(r"\b(?:by|on|without|ignoring|group_left|group_right)\s*\(([^)]*)\)", bare):
        for label in (x.strip() for x in clause.split(",")):
            if label and label not in all_labels:
                problems.append(f"{where}: grouping label {label} exists on no series")
    for fn, name in re.findall(r"\b(rate|irate|increase|delta|deriv)\s*\(\s*(outboxd_[a-zA-Z0-9_]+)", bare):
        counterish = is_counterish(name, cat)
        if fn in ("rate", "irate", "increase") and name in series and not counterish:
            problems.append(f"{where}: {fn}() of {name}, which is not a counter")
        if fn in ("delta", "deriv") and counterish:
            problems.append(f"{where}: {fn}() of counter {name}: use rate()/increase()")
    for m in re.findall(r"histogram_quantile\s*\(\s*[0-9.]+\s*,(.*)", bare, re.S):
        if "_bucket" not in m:
            problems.append(f"{where}: histogram_quantile without a _bucket series")
    return problems


DURATION = re.compile(r"^(\d+(ms|s|m|h|d|w|y))+$")


def check_prometheusrule(b):
    r, problems = one(b, "PrometheusRule"), []
    if r.get("apiVersion") != "monitoring.coreos.com/v1":
        problems.append("PrometheusRule: apiVersion must be monitoring.coreos.com/v1")
    groups = r.get("spec", {}).get("groups") or []
    if not groups:
        problems.append("PrometheusRule: no groups")
    seen = set()
    for g in groups:
        if not g.get("name") or not g.get("rules"):
            problems.append("PrometheusRule: every group needs a name and rules")
            continue
        for rule in g["rules"]:
            name = rule.get("alert") or rule.get("record")
            if not name or not rule.get("expr"):
                problems.append(f"PrometheusRule: rule {rule} lacks alert/record or expr")
                continue
            if name in seen:
                problems.append(f"PrometheusRule: {name} defined twice")
            seen.add(name)
            problems += promql_problems(rule["expr"], name)
            if "for" in rule and not DURATION.match(str(rule["for"])):
                problems.append(f"{name}: for: {rule['for']} is no Prometheus duration")
            if "alert" not in rule:
                continue
            if rule.get("labels", {}).get("severity") not in ("critical", "warning", "info"):
                problems.append(f"{name}: labels.severity must be critical, warning or info")
            ann = rule.get("annotations", {})
            for a in ("summary", "description", "runbook_url"):
                if not ann.get(a):
                    problems.append(f"{name}: annotation {a} missing")
            url = ann.get("runbook_url", "")
            m = re.search(r"(docs/[\w.-]+\.md)#([\w-]+)$", url)
            if not m:
                problems.append(f"{name}: runbook_url {url!r} does not point to a docs/*.md anchor")
            elif not (ROOT / m[1]).exists():
                problems.append(f"{name}: runbook_url file {m[1]} does not exist")
            elif m[2] not in doc_anchors(m[1]):
                problems.append(f"{name}: runbook_url anchor #{m[2]} is no heading in {m[1]}")
    missing = REQUIRED_ALERTS - seen
    if missing:
        problems.append(f"PrometheusRule: alerts missing: {sorted(missing)}")
    return problems


def dashboard_panels(dash):
    for p in dash.get("panels", []):
        yield p
        yield from p.get("panels", []) or []


def check_dashboard(b):
    dash, problems = b["dashboard"], []
    if not 36 <= int(dash.get("schemaVersion", 0)) <= 41:
        problems.append(f"dashboard: schemaVersion {dash.get('schemaVersion')} is not ~38")
    variables = {v.get("name"): v for v in dash.get("templating", {}).get("list", [])}
    ds = variables.get("datasource")
    if not ds or ds.get("type") != "datasource" or ds.get("query") != "prometheus":
        problems.append("dashboard: no Prometheus datasource variable named datasource")
    slot = variables.get("slot")
    if not slot or slot.get("type") != "query":
        problems.append("dashboard: no query variable named slot")
    else:
        q = slot.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        problems += promql_problems(re.sub(r"label_values\((.*),\s*\w+\)", r"\1", q or ""), "variable slot")
        m = re.search(r"label_values\(.*,\s*(\w+)\)", q or "")
        if not m or m[1] != "slot":
            problems.append("dashboard: variable slot is not label_values(..., slot)")
    ids = set()
    for p in dashboard_panels(dash):
        title = p.get("title") or f"panel {p.get('id')}"
        if p.get("id") in ids:
            problems.append(f"dashboard: duplicate panel id {p.get('id')}")
        ids.add(p.get("id"))
        if not {"x", "y", "w", "h"} <= set(p.get("gridPos", {})):
            problems.append(f"dashboard: {title}: gridPos incomplete")
        if p.get("type") == "row":
            continue
        if p.get("datasource", {}).get("uid") != "${datasource}":
            problems.append(f"dashboard: {title}: datasource is not ${{datasource}}")
        targets = [t for t in p.get("targets") or [] if (t.get("expr") or "").strip()]
        if not targets:
            problems.append(f"dashboard: {title}: no target with an expression")
        for t in targets:
            problems += promql_problems(t["expr"], f"dashboard {title!r} {t.get('refId')}")
    return problems


def check_kustomization(b):
    k, problems = b["kustomization"], []
    if k.get("kind") != "Kustomization":
        problems.append("kustomization.yaml: kind must be Kustomization")
    res = k.get("resources") or []
    for r in res:
        if not (BASE / r).exists():
            problems.append(f"kustomization.yaml: resource {r} does not exist")
    if len(set(res)) != len(res):
        problems.append("kustomization.yaml: duplicate resources")
    examples = {a["secret_file"] for a in APPS.values()}
    for ex in sorted(examples & set(res)):
        problems.append(f"kustomization.yaml: {ex} must not be a resource")
    listed = {Path(r).name for r in res}
    for name in b["files"]:
        if name not in listed | {"kustomization.yaml"} | examples:
            problems.append(f"kustomization.yaml: {name} is in the base but not a resource")
    for name, docs in b["files"].items():
        if name == "kustomization.yaml":
            continue
        for d in docs:
            if not d.get("apiVersion") or not d.get("kind") or not d.get("metadata", {}).get("name"):
                problems.append(f"{name}: a document lacks apiVersion, kind or metadata.name")
            elif app_of(d) not in APPS:
                problems.append(f"{name}: {d['kind']} lacks label app.kubernetes.io/name=outboxd or outboxd-apply")
    return problems


def compose_env(svc):
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(e.split("=", 1) if "=" in e else (e, None) for e in env)
    return env


def compose_host_ports(svc):
    """container port -> host port of a service's port mappings."""
    out = {}
    for p in svc.get("ports") or []:
        parts = str(p).split("/")[0].split(":")
        if len(parts) >= 2:
            out[int(parts[-1])] = int(parts[-2])
    return out


def check_compose(b):
    c, problems = b["compose"], []
    services = c.get("services") or {}
    if not services:
        return ["docker-compose.yml: no services"]
    hostnames = set(services) | {s.get("hostname") for s in services.values() if s.get("hostname")}
    for name, svc in services.items():
        build = svc.get("build")
        if build is not None:
            ctx = build if isinstance(build, str) else build.get("context", ".")
            dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
            if not (ROOT / ctx).is_dir():
                problems.append(f"compose {name}: build context {ctx} does not exist")
            elif not (ROOT / ctx / dockerfile).is_file():
                problems.append(f"compose {name}: Dockerfile {ctx}/{dockerfile} does not exist")
        env = compose_env(svc)
        problems += env_problems(env, f"compose {name}")
        conninfo = env.get(env_name("pg.conninfo"))
        if conninfo:
            kv = dict(re.findall(r"(\w+)=(\S+)", conninfo))
            host, port = kv.get("host"), int(kv.get("port", 5432))
            if host not in hostnames:
                problems.append(f"compose {name}: pg host {host} is no compose service")
            elif compose_host_ports(services[host]) and port not in compose_host_ports(services[host]):
                problems.append(f"compose {name}: pg port {port} is not a container port of {host} "
                                f"(inside the compose network, use the container port, not the host port)")
        brokers = env.get("OUTBOXD_KAFKA_BOOTSTRAP_SERVERS")
        if brokers:
            for hp in brokers.split(","):
                host, _, port = hp.rpartition(":")
                if host not in hostnames:
                    problems.append(f"compose {name}: broker {hp} is no compose service")
                    continue
                ksvc = next(s for n, s in services.items() if n == host or s.get("hostname") == host)
                adv = str(compose_env(ksvc).get("KAFKA_ADVERTISED_LISTENERS", ""))
                if f"//{host}:{port}" not in adv:
                    problems.append(f"compose {name}: broker {hp} is not an advertised listener of {host} ({adv})")
    want = {"postgres": (5432, script_default_port("scripts/pg.sh", "OBX_PG_PORT")),
            "kafka": (None, script_default_port("scripts/kafka.sh", "OBX_KAFKA_PORT"))}
    for name, (cport, hport) in want.items():
        if name not in services:
            problems.append(f"compose: no service {name}")
            continue
        ports = compose_host_ports(services[name])
        if hport not in ports.values():
            problems.append(f"compose {name}: host port {hport} (scripts default) not published: {ports}")
        if cport is not None and ports.get(cport) != hport:
            problems.append(f"compose {name}: container port {cport} not published on host port {hport}")
    return problems


def check_apps_apart(b):
    """No selector of one program's Deployment, Service, PDB or ServiceMonitor
    matches the other's pods: the relay's PDB must never count apply pods, its
    Service never scrape them as the relay."""
    problems = []
    pods = {}
    for d in b["kinds"].get("Deployment", []):
        pods[app_of(d)] = d["spec"]["template"]["metadata"].get("labels", {})
    for kind in ("Deployment", "Service", "PodDisruptionBudget", "ServiceMonitor"):
        for d in b["kinds"].get(kind, []):
            spec = d.get("spec", {})
            sel = spec.get("selector", {})
            sel = sel.get("matchLabels", sel) if kind != "Service" else sel
            for app, labels in pods.items():
                if app != app_of(d) and labels_match(sel, labels):
                    problems.append(f"{kind} {d['metadata']['name']}: selector {sel} matches the pods of {app}")
    if set(pods) != set(APPS):
        problems.append(f"Deployments of {sorted(pods)}, expected {sorted(APPS)}")
    return problems


def outboxd_selectors(expr):
    """(metric, label matchers text) of every outboxd_* selector in expr."""
    return re.findall(r"\b(outboxd_[a-zA-Z0-9_]+)\s*(?:\{([^}]*)\})?", expr)


def check_scopes(b):
    """The relay's alerts and panels select slot series, apply's group series:
    apply pods export outboxd_state etc. too, with group and no slot, and a
    selector without the scope would mix the two (a halted apply paging as a
    halted relay)."""
    problems = []
    scope = {"outboxd": 'slot!=""', "outboxd-apply": 'group!=""'}
    for g in one(b, "PrometheusRule")["spec"]["groups"]:
        want = scope.get(g["name"])
        if want is None:
            problems.append(f"PrometheusRule: group {g['name']} is neither outboxd nor outboxd-apply")
            continue
        for r in g["rules"]:
            for name, matchers in outboxd_selectors(r["expr"]):
                if want not in re.sub(r"\s", "", matchers or ""):
                    problems.append(f"{r.get('alert')}: {name} without {want} (group {g['name']})")
    for p in dashboard_panels(b["dashboard"]):
        for t in p.get("targets") or []:
            for name, matchers in outboxd_selectors(t.get("expr") or ""):
                m = re.sub(r"\s", "", matchers or "")
                if name == "outboxd_build_info":
                    continue
                if name.startswith("outboxd_apply_") and 'group=~"$group"' not in m:
                    problems.append(f"dashboard {p.get('title')!r}: {name} without group=~\"$group\"")
                elif 'slot=~"$slot"' not in m and 'group=~"$group"' not in m:
                    problems.append(f"dashboard {p.get('title')!r}: {name} selects neither $slot nor $group")
    variables = {v.get("name"): v for v in b["dashboard"].get("templating", {}).get("list", [])}
    for v in ("slot", "group"):
        # Grafana's own All value would be a regex of the values found; ".+"
        # keeps series without the label (the other program's) out.
        if variables.get(v, {}).get("allValue") != ".+":
            problems.append(f"dashboard: variable {v} needs allValue .+")
    return problems


def check_docs(b):
    problems = []
    text = (ROOT / "docs" / "metrics.md").read_text()
    for fam in sorted(metric_families()):
        if fam not in text:
            problems.append(f"docs/metrics.md does not document {fam}")
    for label, values in metric_catalog()["values"].items():
        for v in values:
            if f"`{v}`" not in text:
                problems.append(f"docs/metrics.md does not explain {label} value {v}")
    for doc in ("docs/metrics.md", "docs/kubernetes.md", "docs/operations.md", "docs/security.md"):
        problems += link_problems(doc)
    return problems


def link_problems(doc):
    """Relative Markdown links of doc point to existing files and headings."""
    path = ROOT / doc
    if not path.exists():
        return [f"{doc} missing"]
    problems = []
    for target in re.findall(r"\]\(([^)\s]+)\)", path.read_text()):
        if re.match(r"[a-z]+:", target):
            continue
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        if not dest.exists():
            problems.append(f"{doc}: link {target} points to a missing file")
        elif anchor and dest.suffix == ".md" and anchor not in doc_anchors(dest.relative_to(ROOT)):
            problems.append(f"{doc}: link {target} points to a missing heading")
    return problems


CHECKS = [check_env, check_configmap_has_no_secrets, check_status_listen, check_probes,
          check_termination_grace, check_deployment, check_image, check_dockerfile_packages,
          check_service, check_pdb, check_servicemonitor, check_prometheusrule, check_dashboard,
          check_kustomization, check_compose, check_docs, check_apps_apart, check_scopes]
# The same checks of the apply Deployment and what belongs to it.
APPLY_CHECKS = [check_env, check_configmap_has_no_secrets, check_status_listen, check_probes,
                check_termination_grace, check_deployment, check_image, check_service, check_pdb,
                check_servicemonitor]


# --------------------------------------------------------------------------
# The real files pass


def test_every_yaml_and_json_parses():
    files = list(BASE.glob("*.yaml")) + [COMPOSE]
    assert len(files) >= 9
    for p in files:
        assert load_yaml_docs(p), f"{p} is empty"
    json.loads(DASHBOARD.read_text())


@pytest.mark.parametrize("check", CHECKS, ids=lambda f: f.__name__)
def test_real_files(bundle, check):
    problems = check(bundle)
    assert problems == [], "\n".join(problems)


@pytest.mark.parametrize("check", APPLY_CHECKS, ids=lambda f: f.__name__)
def test_real_files_apply(check):
    problems = check(load_bundle("outboxd-apply"))
    assert problems == [], "\n".join(problems)


def test_outboxd_accepts_the_configuration(bundle):
    """The built binary parses the ConfigMap + example Secret env (ranges,
    booleans, log words, librdkafka properties) without error."""
    if not os.access(OUTBOXD_BIN, os.X_OK):
        pytest.skip(f"{OUTBOXD_BIN} not built")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    env.update({k: str(v) for k, v in container_env(bundle).items()})
    env.update({k: str(v) for k, v in secret_example(bundle)["stringData"].items()})
    out = subprocess.run([str(OUTBOXD_BIN), "--print-config"], env=env, capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 0, out.stderr
    assert "change-me" not in out.stdout, "a secret was printed"
    printed = dict(line.split(" = ", 1) for line in out.stdout.splitlines() if " = " in line)
    by_env = {env_name(k): k for k in config_table()}
    checked = 0
    for name, value in container_env(bundle).items():
        if name.startswith("OUTBOXD_KAFKA_"):
            key = "kafka." + name[len("OUTBOXD_KAFKA_"):].lower().replace("_", ".")
        else:
            key = by_env.get(name)
        # A binary built before a key was added does not print it.
        if key in printed:
            assert printed[key] == str(value), f"{name} did not reach {key}"
            checked += 1
    assert checked >= 5, out.stdout


# --------------------------------------------------------------------------
# The same checks reject deliberate mistakes


def _rule(b, name):
    for g in one(b, "PrometheusRule")["spec"]["groups"]:
        for r in g["rules"]:
            if r.get("alert") == name:
                return r
    raise KeyError(name)


def _first_target(b):
    return next(p for p in dashboard_panels(b["dashboard"]) if p.get("type") != "row")["targets"][0]


MUTATIONS = [
    (check_env, "unknown key", lambda b: configmap(b)["data"].update(OUTBOXD_SLOT_NAMES="x")),
    (check_env, "int out of range", lambda b: configmap(b)["data"].update(OUTBOXD_STATUS_INTERVAL_MS="60000")),
    (check_env, "bad log.format", lambda b: configmap(b)["data"].update(OUTBOXD_LOG_FORMAT="logfmt")),
    (check_env, "bad poison.policy", lambda b: configmap(b)["data"].update(OUTBOXD_POISON_POLICY="skip")),
    (check_env, "bad bool", lambda b: configmap(b)["data"].update(OUTBOXD_EXACTLY_ONCE="maybe")),
    (check_env, "bad kafka property", lambda b: configmap(b)["data"].update(OUTBOXD_KAFKA_="x")),
    (check_env, "unknown key in the example Secret",
     lambda b: secret_example(b)["stringData"].update(OUTBOXD_PG_CONNSTRING="host=x")),
    (check_configmap_has_no_secrets, "conninfo with a password",
     lambda b: configmap(b)["data"].update(OUTBOXD_PG_CONNINFO="host=db password=hunter2")),
    (check_status_listen, "status on loopback",
     lambda b: configmap(b)["data"].update(OUTBOXD_STATUS_LISTEN="127.0.0.1:8080")),
    (check_status_listen, "status on another port",
     lambda b: configmap(b)["data"].update(OUTBOXD_STATUS_LISTEN="0.0.0.0:9090")),
    (check_status_listen, "status unset", lambda b: configmap(b)["data"].pop("OUTBOXD_STATUS_LISTEN")),
    (check_probes, "path not served", lambda b: container(b)["livenessProbe"]["httpGet"].update(path="/health")),
    (check_probes, "readiness on /healthz",
     lambda b: container(b)["readinessProbe"]["httpGet"].update(path="/healthz")),
    (check_probes, "unnamed port", lambda b: container(b)["readinessProbe"]["httpGet"].update(port="http")),
    (check_probes, "no startup probe", lambda b: container(b).pop("startupProbe")),
    (check_termination_grace, "grace 30 s",
     lambda b: deployment(b)["spec"]["template"]["spec"].update(terminationGracePeriodSeconds=30)),
    (check_termination_grace, "timeout raised in ConfigMap",
     lambda b: configmap(b)["data"].update(OUTBOXD_SHUTDOWN_TIMEOUT_MS="60000")),
    (check_deployment, "root allowed",
     lambda b: (deployment(b)["spec"]["template"]["spec"]["securityContext"].update(runAsNonRoot=False),
                container(b)["securityContext"].update(runAsNonRoot=False))),
    (check_deployment, "writable root fs",
     lambda b: container(b)["securityContext"].update(readOnlyRootFilesystem=False)),
    (check_deployment, "caps kept", lambda b: container(b)["securityContext"]["capabilities"].update(drop=[])),
    (check_deployment, "service links", lambda b: deployment(b)["spec"]["template"]["spec"].pop("enableServiceLinks")),
    (check_deployment, "request above limit",
     lambda b: container(b)["resources"]["requests"].update(memory="512Mi")),
    (check_deployment, "selector mismatch",
     lambda b: deployment(b)["spec"]["selector"]["matchLabels"].update({"app.kubernetes.io/name": "other"})),
    (check_deployment, "no secret ref",
     lambda b: container(b).update(envFrom=[e for e in container(b)["envFrom"] if "secretRef" not in e])),
    (check_deployment, "surge and unavailable 0",
     lambda b: deployment(b)["spec"]["strategy"]["rollingUpdate"].update(maxSurge=0, maxUnavailable=0)),
    (check_image, "command overrides entrypoint", lambda b: container(b).update(command=["/bin/outboxd"])),
    (check_image, "args not run", lambda b: container(b).update(args=["consume"])),
    (check_image, "uid differs",
     lambda b: deployment(b)["spec"]["template"]["spec"]["securityContext"].update(runAsUser=1000)),
    (check_image, "image not in kustomize images", lambda b: container(b).update(image="registry/other:1")),
    (check_image, "entrypoint not outboxd",
     lambda b: b.update(dockerfile=b["dockerfile"].replace('ENTRYPOINT ["/usr/local/bin/outboxd"]',
                                                           'ENTRYPOINT ["/bin/sh"]'))),
    (check_dockerfile_packages, "runtime library missing",
     lambda b: b.update(dockerfile=re.sub(r"\blibpq5\b", "", b["dockerfile"]))),
    (check_dockerfile_packages, "dev package missing",
     lambda b: b.update(dockerfile=re.sub(r"\blibcjson-dev\b", "", b["dockerfile"]))),
    (check_service, "targetPort unknown", lambda b: one(b, "Service")["spec"]["ports"][0].update(targetPort="web")),
    (check_service, "port renamed", lambda b: one(b, "Service")["spec"]["ports"][0].update(name="http")),
    (check_service, "selector mismatch", lambda b: one(b, "Service")["spec"].update(selector={"app": "x"})),
    (check_pdb, "selector mismatch",
     lambda b: one(b, "PodDisruptionBudget")["spec"].update(selector={"matchLabels": {"app": "x"}})),
    (check_pdb, "minAvailable 2", lambda b: one(b, "PodDisruptionBudget")["spec"].update(minAvailable=2)),
    (check_pdb, "both set", lambda b: one(b, "PodDisruptionBudget")["spec"].update(maxUnavailable=1)),
    (check_servicemonitor, "wrong port", lambda b: one(b, "ServiceMonitor")["spec"]["endpoints"][0].update(port="metrics")),
    (check_servicemonitor, "wrong path", lambda b: one(b, "ServiceMonitor")["spec"]["endpoints"][0].update(path="/prom")),
    (check_servicemonitor, "selector mismatch",
     lambda b: one(b, "ServiceMonitor")["spec"].update(selector={"matchLabels": {"app": "x"}})),
    (check_prometheusrule, "wrong metric name",
     lambda b: _rule(b, "OutboxdRetainedWALHigh").update(
         expr="max by (namespace, slot) (outboxd_slot_retained_wal) > 1073741824")),
    (check_prometheusrule, "histogram family name is no series",
     lambda b: _rule(b, "OutboxdRetainedWALHigh").update(expr="rate(outboxd_commit_to_ack_seconds[5m]) > 1")),
    (check_prometheusrule, "state never exported",
     lambda b: _rule(b, "OutboxdHalted").update(expr='max(outboxd_state{state="running"}) == 1')),
    (check_prometheusrule, "wal_status never exported",
     lambda b: _rule(b, "OutboxdSlotLost").update(expr='max(outboxd_slot_wal_status{status="invalid"}) == 1')),
    (check_prometheusrule, "label the metric lacks",
     lambda b: _rule(b, "OutboxdSlotLost").update(expr='max(outboxd_state{status="lost"}) == 1')),
    (check_prometheusrule, "rate of a gauge",
     lambda b: _rule(b, "OutboxdRestartsHigh").update(expr="rate(outboxd_inflight_events[5m]) > 3")),
    (check_prometheusrule, "unknown grouping label",
     lambda b: _rule(b, "OutboxdRestartsHigh").update(expr="sum by (slott) (increase(outboxd_restarts_total[15m])) > 3")),
    (check_prometheusrule, "unbalanced", lambda b: _rule(b, "OutboxdRestartsHigh").update(expr="sum(outboxd_restarts_total > 3")),
    (check_prometheusrule, "bad for", lambda b: _rule(b, "OutboxdNotReady").update({"for": "2 minutes"})),
    (check_prometheusrule, "runbook anchor missing",
     lambda b: _rule(b, "OutboxdNotReady")["annotations"].update(runbook_url="docs/metrics.md#no-such-heading")),
    (check_prometheusrule, "runbook file missing",
     lambda b: _rule(b, "OutboxdNotReady")["annotations"].update(runbook_url="docs/runbook.md#outboxdnotready")),
    (check_prometheusrule, "no severity", lambda b: _rule(b, "OutboxdNotReady")["labels"].clear()),
    (check_prometheusrule, "required alert missing",
     lambda b: one(b, "PrometheusRule")["spec"]["groups"][0]["rules"].remove(_rule(b, "OutboxdSlotLost"))),
    (check_scopes, "relay alert without slot scope",
     lambda b: _rule(b, "OutboxdHalted").update(
         expr='max by (namespace, pod, slot) (max_over_time(outboxd_state{state="halted"}[15m])) == 1')),
    (check_scopes, "apply alert without group scope",
     lambda b: _rule(b, "OutboxdApplyHalted").update(
         expr='max by (namespace, pod, group) (max_over_time(outboxd_state{state="halted"}[15m])) == 1')),
    (check_scopes, "apply panel without $group",
     lambda b: next(p for p in dashboard_panels(b["dashboard"]) if p.get("id") == 23)["targets"][0].update(
         expr="max by (group, pod) (outboxd_apply_source_age_seconds)")),
    (check_scopes, "relay panel without $slot",
     lambda b: _first_target(b).update(expr="max by (pod, state) (outboxd_state) == 1")),
    (check_scopes, "group variable All matches the relay",
     lambda b: [v.update(allValue=None) for v in b["dashboard"]["templating"]["list"] if v["name"] == "group"]),
    (check_dashboard, "wrong metric name",
     lambda b: _first_target(b).update(expr='max by (pod) (outboxd_status{slot=~"$slot"})')),
    (check_dashboard, "panel without target",
     lambda b: next(p for p in dashboard_panels(b["dashboard"]) if p.get("type") != "row").update(targets=[])),
    (check_dashboard, "no datasource variable",
     lambda b: b["dashboard"]["templating"].update(list=b["dashboard"]["templating"]["list"][1:])),
    (check_dashboard, "fixed datasource",
     lambda b: next(p for p in dashboard_panels(b["dashboard"]) if p.get("type") != "row").update(
         datasource={"type": "prometheus", "uid": "abc"})),
    (check_kustomization, "resource missing", lambda b: b["kustomization"]["resources"].append("hpa.yaml")),
    (check_kustomization, "secret included",
     lambda b: b["kustomization"]["resources"].append("secret.example.yaml")),
    (check_kustomization, "file left out",
     lambda b: b["kustomization"]["resources"].remove("pdb.yaml")),
    (check_compose, "unknown env", lambda b: b["compose"]["services"]["outboxd"]["environment"].update(OUTBOXD_SLOTNAME="x")),
    (check_compose, "pg port differs from scripts/pg.sh",
     lambda b: b["compose"]["services"]["postgres"].update(ports=["127.0.0.1:5432:5432"])),
    (check_compose, "kafka port differs from scripts/kafka.sh",
     lambda b: b["compose"]["services"]["kafka"].update(ports=["127.0.0.1:29092:19092"])),
    (check_compose, "missing Dockerfile",
     lambda b: b["compose"]["services"]["outboxd"]["build"].update(dockerfile="deploy/Dockerfile.nope")),
    (check_compose, "missing context", lambda b: b["compose"]["services"]["postgres"].update(build="deploy/pg")),
    (check_compose, "broker not advertised",
     lambda b: b["compose"]["services"]["outboxd"]["environment"].update(OUTBOXD_KAFKA_BOOTSTRAP_SERVERS="kafka:9093")),
    (check_compose, "pg host port used inside compose",
     lambda b: b["compose"]["services"]["outboxd"]["environment"].update(
         OUTBOXD_PG_CONNINFO="host=postgres port=55432 dbname=app")),
    (check_compose, "pg host unknown",
     lambda b: b["compose"]["services"]["outboxd"]["environment"].update(
         OUTBOXD_PG_CONNINFO="host=db port=5432 dbname=app")),
]


@pytest.mark.parametrize("check,what,mutate", MUTATIONS, ids=[f"{c.__name__}-{w}" for c, w, _ in MUTATIONS])
def test_mistake_is_caught(check, what, mutate):
    """The mistake adds a problem beyond those the real files may have."""
    real = set(check(load_bundle()))
    b = copy.deepcopy(load_bundle())
    mutate(b)
    assert set(check(b)) - real, f"{check.__name__} accepted a deliberate mistake: {what}"


APPLY_MUTATIONS = [
    (check_env, "unknown apply key", lambda b: configmap(b)["data"].update(OUTBOXD_APPLY_TABLES="x")),
    (check_env, "bad apply int", lambda b: configmap(b)["data"].update(OUTBOXD_APPLY_BATCH_MAX="0")),
    (check_configmap_has_no_secrets, "replica password in the ConfigMap",
     lambda b: configmap(b)["data"].update(OUTBOXD_APPLY_CONNINFO="host=db password=hunter2")),
    (check_image, "args run the relay", lambda b: container(b).update(args=["run"])),
    (check_deployment, "one replica", lambda b: deployment(b)["spec"].update(replicas=1)),
    (check_deployment, "container named as the relay's", lambda b: container(b).update(name="outboxd")),
    (check_deployment, "reads the relay's Secret",
     lambda b: container(b).update(envFrom=[{"configMapRef": {"name": "outboxd-apply"}},
                                            {"secretRef": {"name": "outboxd"}}])),
    (check_probes, "readiness on /healthz",
     lambda b: container(b)["readinessProbe"]["httpGet"].update(path="/healthz")),
    (check_status_listen, "status on loopback",
     lambda b: configmap(b)["data"].update(OUTBOXD_STATUS_LISTEN="127.0.0.1:8080")),
    (check_pdb, "maxUnavailable = replicas",
     lambda b: one(b, "PodDisruptionBudget")["spec"].update(maxUnavailable=3)),
    (check_servicemonitor, "job of the relay",
     lambda b: one(b, "ServiceMonitor")["spec"].update(jobLabel="app.kubernetes.io/part-of")),
    (check_service, "selects the relay's pods",
     lambda b: one(b, "Service")["spec"].update(selector={"app.kubernetes.io/name": "outboxd"})),
    (check_apps_apart, "apply pods labelled as the relay",
     lambda b: deployment(b)["spec"]["template"]["metadata"]["labels"].update({"app.kubernetes.io/name": "outboxd"})),
    (check_apps_apart, "relay PDB selects by part-of",
     lambda b: one(dict(b, app="outboxd"), "PodDisruptionBudget")["spec"].update(
         selector={"matchLabels": {"app.kubernetes.io/part-of": "outboxd"}})),
]


@pytest.mark.parametrize("check,what,mutate", APPLY_MUTATIONS,
                         ids=[f"{c.__name__}-{w}" for c, w, _ in APPLY_MUTATIONS])
def test_apply_mistake_is_caught(check, what, mutate):
    real = set(check(load_bundle("outboxd-apply")))
    b = copy.deepcopy(load_bundle("outboxd-apply"))
    mutate(b)
    assert set(check(b)) - real, f"{check.__name__} accepted a deliberate mistake in apply: {what}"


def test_every_check_has_a_mistake():
    assert {c for c, _, _ in MUTATIONS + APPLY_MUTATIONS} >= set(CHECKS) - {check_docs}
    assert {c for c, _, _ in APPLY_MUTATIONS} >= set(APPLY_CHECKS) - {check_termination_grace}


def test_docs_check_catches_undocumented_metric(monkeypatch):
    real = metric_families()
    monkeypatch.setattr(sys.modules[__name__], "metric_families", lambda: real | {"outboxd_not_documented_total"})
    assert any("outboxd_not_documented_total" in p for p in check_docs(load_bundle()))


def test_link_check_catches_a_broken_anchor(tmp_path, monkeypatch):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("# A\n\n## Real heading\n\n[ok](#real-heading) [bad](#no-heading) [gone](b.md)\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    problems = link_problems("docs/a.md")
    assert len(problems) == 2 and "#no-heading" in problems[0] and "b.md" in problems[1]


def test_gh_anchor():
    assert gh_anchor("A poison row (exit 3)") == "a-poison-row-exit-3"
    assert gh_anchor("`outboxd_state`") == "outboxd_state"
    assert gh_anchor("OutboxdSourceAgeHigh") == "outboxdsourceagehigh"


def test_queue_and_memory_figures_have_one_source():
    """Issue 17 item 11: a figure of the producer queue next to its property
    (deploy comments, docs) is the config table's default; manifests quote no
    RSS figure of their own (docs/benchmarks.md is the one source)."""
    table = (ROOT / "src" / "common" / "kconf.c").read_text() + (ROOT / "src" / "common" / "config.c").read_text()
    kbytes = int(re.search(r'"queue\.buffering\.max\.kbytes",\s*"(\d+)"', table)[1])
    files = [*(ROOT / "deploy" / "k8s").rglob("*.yaml"), *(ROOT / "docs").glob("*.md"), ROOT / "README.md"]
    problems = []
    for f in files:
        text = f.read_text()
        if f.suffix == ".yaml" and re.search(r"RSS[^\n]*\d+\s*-\s*\d+\s*MB|\d+\s*MB\s*under", text):
            problems.append(f"{f}: an RSS figure of its own")
        for m in re.finditer(r"(\d+) MiB[^\n]{0,40}\n?[^\n]{0,40}queue\.buffering\.max\.kbytes|"
                             r"queue\.buffering\.max\.kbytes[^\n]{0,20}\(?(\d+) MiB", text):
            mib = int(m[1] or m[2])
            if f.name != "benchmarks.md" and mib * 1024 != kbytes:
                problems.append(f"{f}: {mib} MiB next to queue.buffering.max.kbytes (default {kbytes} KiB)")
    assert not problems, problems
