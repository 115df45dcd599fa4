"""The PrometheusRule's alerts, checked and unit-tested by promtool.

`promtool check rules` reads the rule groups of deploy/k8s/base/prometheusrule.yaml
as they are. `promtool test rules` runs tests/deploy/alerts/*.yaml against a
copy whose annotations are cut down to `summary` (promtool compares every
annotation of a firing alert; the summary, with its templated labels and
value, is the one worth pinning). Every alert has a test where it must fire
and one where it must not, and the relay's and apply's alerts each have a
test where the other's series are present and nothing fires.

The tests are themselves tested: each alert's rule is replaced by one that
never fires and by one that always fires, and promtool must then fail.

    python3 -m pytest -q -p no:cacheprovider tests/deploy/test_alerts.py
"""
import copy
import re
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
RULE = ROOT / "deploy" / "k8s" / "base" / "prometheusrule.yaml"
TESTS = sorted((Path(__file__).parent / "alerts").glob("*.yaml"))
RULES_NAME = "rules.yaml"  # what every test file's rule_files names


def rule_groups():
    return yaml.safe_load(RULE.read_text())["spec"]["groups"]


def alerts(groups=None):
    return [r for g in groups or rule_groups() for r in g["rules"] if "alert" in r]


def unit_test_groups(groups):
    groups = copy.deepcopy(groups)
    for r in alerts(groups):
        r["annotations"] = {"summary": r["annotations"]["summary"]}
    return groups


def run_promtool_tests(promtool, tmp_path, groups):
    (tmp_path / RULES_NAME).write_text(yaml.safe_dump({"groups": unit_test_groups(groups)}, sort_keys=False))
    for t in TESTS:
        (tmp_path / t.name).write_text(t.read_text())
    return subprocess.run([promtool, "test", "rules", *[t.name for t in TESTS]], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)


def test_promtool_check_rules(promtool, tmp_path):
    rules = tmp_path / "outboxd-rules.yaml"
    rules.write_text(yaml.safe_dump({"groups": rule_groups()}, sort_keys=False))
    out = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in out.stdout, out.stdout


def test_promtool_unit_tests_pass(promtool, tmp_path):
    out = run_promtool_tests(promtool, tmp_path, rule_groups())
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count("SUCCESS") == len(TESTS), out.stdout


def test_every_alert_has_a_firing_and_a_silent_case():
    fires, silent, scopes = set(), set(), set()
    for t in TESTS:
        for case in yaml.safe_load(t.read_text())["tests"]:
            for a in case.get("alert_rule_test", []):
                (fires if a.get("exp_alerts") else silent).add(a["alertname"])
            if case.get("name", "").startswith("scope:"):
                scopes.add(t.name)
    names = {r["alert"] for r in alerts()}
    assert names - fires == set(), f"alerts never tested firing: {sorted(names - fires)}"
    assert names - silent == set(), f"alerts never tested silent: {sorted(names - silent)}"
    assert {"relay.yaml", "apply.yaml"} <= scopes, "relay.yaml and apply.yaml each need a scope: test"


def _replace(groups, name, expr):
    groups = copy.deepcopy(groups)
    for r in alerts(groups):
        if r["alert"] == name:
            r["expr"] = expr
            r.pop("for", None)
    return groups


MUTANTS = {"never": "vector(1) == 0", "always": "vector(1)"}


@pytest.fixture(scope="module")
def mutant_results(promtool, tmp_path_factory):
    """One promtool run over every (alert, mutant): the cases of each test
    file that test the alert, naming the mutant's rules file.
    -> {(alert, mutant): every copy passed}"""
    d = tmp_path_factory.mktemp("mutants")
    files = {}
    for r in alerts():
        for kind, expr in MUTANTS.items():
            stem = f"{r['alert']}-{kind}"
            groups = unit_test_groups(_replace(rule_groups(), r["alert"], expr))
            (d / f"{stem}.rules.yaml").write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
            for t in TESTS:
                doc = yaml.safe_load(t.read_text())
                # Only the cases that test this alert, and only its checks: the
                # rest cannot see the mutant, and promtool's time is the suite's.
                cases = []
                for c in doc["tests"]:
                    checks = [a for a in c.get("alert_rule_test", []) if a["alertname"] == r["alert"]]
                    if checks:
                        cases.append(dict(c, alert_rule_test=checks))
                if not cases:
                    continue
                doc["tests"] = cases
                doc["rule_files"] = [f"{stem}.rules.yaml"]
                name = f"{stem}.{t.name}"
                (d / name).write_text(yaml.safe_dump(doc, sort_keys=False))
                files[name] = (r["alert"], kind)
    out = subprocess.run([promtool, "test", "rules", *files], cwd=d, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, timeout=300)
    # promtool prints "Unit Testing:  <file>" then SUCCESS or FAILED per file.
    verdicts = dict(re.findall(r"Unit Testing:\s+(\S+)\s*\n\s*(SUCCESS|FAILED)", out.stdout))
    assert set(verdicts) == set(files), out.stdout[-3000:]
    results = {}
    for name, key in files.items():
        results[key] = results.get(key, True) and verdicts[name] == "SUCCESS"
    return results


@pytest.mark.parametrize("kind", sorted(MUTANTS))
@pytest.mark.parametrize("name", [r["alert"] for r in alerts()])
def test_the_tests_catch_a_broken_rule(mutant_results, name, kind):
    assert not mutant_results[(name, kind)], \
        f"{name} replaced by a rule that {kind} fires ({MUTANTS[kind]}), and every promtool test still passes"
