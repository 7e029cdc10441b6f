#!/usr/bin/env python3
"""Offline checks of the deployment files, run by `make ops-check` (and so by
`make test`) in the virtualenv the Makefile builds from requirements.txt.

    ops_check.py chart       helm/relay: lint and render with the default
                             values and every helm/relay/ci/*.yaml; every
                             rendered object validates (strict) against the
                             Kubernetes schemas; the settings, probes, drain
                             and selectors are what docs/operations.md says.
    ops_check.py manifests   deploy/k8s/*.yaml: the same validation and checks.
    ops_check.py dashboard   deploy/grafana/*.json: well-formed for import,
                             and every query parses (promtool check rules).

No cluster and no helm binary: helm-python-sdk renders and lints the chart,
kubernetes-validate holds the Kubernetes schemas, and the Prometheus Operator
kinds are checked against monitoring.coreos.com-v1.schema.json beside this
file. Exits non-zero with one line per problem.
"""

import copy
import functools
import json
import pathlib
import re
import subprocess
import sys
import tempfile

import jsonschema
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "relay"
K8S_DIR = ROOT / "deploy" / "k8s"
RULES = ROOT / "deploy" / "prometheus" / "relay-rules.yml"
DASHBOARDS = ROOT / "deploy" / "grafana"
CONFIG_RS = ROOT / "relay" / "src" / "config.rs"
CRD_SCHEMAS = pathlib.Path(__file__).resolve().parent / "monitoring.coreos.com-v1.schema.json"

# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the
# newest kubernetes-validate knows.
KUBE_VERSIONS = ["1.27.0", "1.37.0"]

problems = []


def problem(where, what):
    problems.append(f"{where}: {what}")


def finish(what):
    if problems:
        print(f"ops-check {what}: {len(problems)} problem(s)", file=sys.stderr)
        for p in problems:
            print(f"  {p}", file=sys.stderr)
        sys.exit(1)
    print(f"ops-check {what}: ok")


# ---------------------------------------------------------------- validation


def kubernetes_validate():
    import kubernetes_validate.utils as kv

    # The schemas are large JSON files read on every call: read each once.
    if not hasattr(kv.schema_contents, "cache_info"):
        kv.schema_contents = functools.lru_cache(maxsize=None)(kv.schema_contents)
    return kv


@functools.lru_cache(maxsize=None)
def crd_schemas():
    return json.loads(CRD_SCHEMAS.read_text())


def validate_object(where, obj):
    """Strict schema validation of one object, for every supported version."""
    kind = obj.get("kind", "?")
    name = obj.get("metadata", {}).get("name", "?")
    where = f"{where} {kind}/{name}"
    if obj.get("apiVersion") == "monitoring.coreos.com/v1":
        schema = crd_schemas().get(kind)
        if schema is None:
            problem(where, "no schema for this Prometheus Operator kind")
            return
        for err in jsonschema.Draft7Validator(schema).iter_errors(obj):
            path = ".".join(str(p) for p in err.absolute_path)
            problem(where, f"{path}: {err.message}")
        return
    kv = kubernetes_validate()
    # The validator takes the object as Kubernetes would after defaulting
    # nothing: a deep copy, so a check cannot change what later checks see.
    for version in KUBE_VERSIONS:
        try:
            kv.validate(copy.deepcopy(obj), version, strict=True)
        except kv.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            problem(where, f"Kubernetes {version}: {path}: {e.message}")
        except kv.SchemaNotFoundError as e:
            problem(where, e.message)


def load_docs(where, text):
    try:
        return [d for d in yaml.safe_load_all(text) if d]
    except yaml.YAMLError as e:
        problem(where, f"not YAML: {e}")
        return []


# ---------------------------------------------------------------- semantics


def relay_settings():
    """Every RELAY_* variable the relay reads, from its settings."""
    names = re.findall(r'env\s*=\s*"(RELAY_[A-Z_]+)"', CONFIG_RS.read_text())
    if len(names) < 20:
        problem(str(CONFIG_RS), f"found only {len(names)} RELAY_* settings; has the file moved?")
    return names


def seconds(duration):
    m = re.fullmatch(r"\s*(\d+)\s*(ms|s|m)\s*", duration)
    if not m:
        return None
    n, unit = int(m.group(1)), m.group(2)
    return {"ms": n / 1000, "s": n, "m": n * 60}[unit]


def check_relay_deployment(where, dep, services):
    """The relay's Deployment and Services do what docs/operations.md promises."""
    spec = dep["spec"]
    pod = spec["template"]["spec"]
    containers = [c for c in pod["containers"] if c["name"] == "relay"]
    if len(containers) != 1:
        problem(where, "no container named relay")
        return
    c = containers[0]
    env = {}
    for e in c.get("env", []):
        if e["name"] in env:
            problem(where, f"{e['name']} is set twice")
        env[e["name"]] = e
    for name in relay_settings():
        if name not in env:
            problem(where, f"{name} (relay/src/config.rs) is not set")
    node_id = env.get("RELAY_NODE_ID", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
    if node_id != "metadata.name":
        problem(where, "RELAY_NODE_ID must come from the pod's name (fieldRef metadata.name)")
    ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
    admin = env.get("RELAY_ADMIN_LISTEN", {}).get("value", "")
    listen = env.get("RELAY_LISTEN", {}).get("value", "")
    if not admin.endswith(f":{ports.get('admin')}"):
        problem(where, f"RELAY_ADMIN_LISTEN {admin!r} is not the admin port {ports.get('admin')}")
    if not listen.endswith(f":{ports.get('http')}"):
        problem(where, f"RELAY_LISTEN {listen!r} is not the http port {ports.get('http')}")
    for probe, path in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")]:
        get = c.get(probe, {}).get("httpGet", {})
        if get.get("path") != path or get.get("port") not in ("admin", ports.get("admin")):
            problem(where, f"{probe} must GET {path} on the admin port, not {get}")
    pre_stop = c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    sleep = int(pre_stop[1]) if len(pre_stop) == 2 and pre_stop[0] == "sleep" else None
    if sleep is None:
        problem(where, f"preStop must be [sleep, N], not {pre_stop}")
        sleep = 0
    drain = seconds(env.get("RELAY_DRAIN_TIMEOUT", {}).get("value", ""))
    grace = pod.get("terminationGracePeriodSeconds", 30)
    if drain is None:
        problem(where, "RELAY_DRAIN_TIMEOUT is not a plain duration")
    elif not grace > sleep + drain:
        problem(where, f"terminationGracePeriodSeconds {grace} must exceed preStop {sleep} s + drain {drain} s")
    strategy = spec.get("strategy", {})
    if strategy.get("type") == "RollingUpdate":
        if str(strategy.get("rollingUpdate", {}).get("maxUnavailable")) not in ("0", "0%"):
            problem(where, "a rolling update must not remove a pod before its replacement is ready (maxUnavailable 0)")
    sel = spec["selector"]["matchLabels"]
    labels = spec["template"]["metadata"]["labels"]
    if any(labels.get(k) != v for k, v in sel.items()):
        problem(where, "the pod template does not carry the selector's labels")
    sec = c.get("securityContext", {})
    if not (pod.get("securityContext", {}).get("runAsNonRoot") or sec.get("runAsNonRoot")):
        problem(where, "the relay must run as non-root")
    if "limits" not in c.get("resources", {}) or "requests" not in c.get("resources", {}):
        problem(where, "the relay needs resource requests and limits")

    clients = [s for s in services if s["spec"].get("selector") and
               all(labels.get(k) == v for k, v in s["spec"]["selector"].items())]
    if not clients:
        problem(where, "no Service selects the relay's pods")
    for s in clients:
        if s["spec"].get("sessionAffinity", "None") != "None":
            problem(where, f"Service {s['metadata']['name']} must not be sticky (sessionAffinity None)")
        targets = {p.get("targetPort") for p in s["spec"]["ports"]}
        if not targets & {"http", "admin", ports.get("http"), ports.get("admin")}:
            problem(where, f"Service {s['metadata']['name']} targets no port of the relay")
    return c, env, labels


def check_not_selected(where, objs, relay_labels):
    """The relay's selectors pick only the relay's pods (not the dev Redis)."""
    for o in objs:
        if o["kind"] != "Deployment":
            continue
        labels = o["spec"]["template"]["metadata"]["labels"]
        if labels == relay_labels:
            continue
        for s in objs:
            sel = None
            if s["kind"] == "Service":
                sel = s["spec"].get("selector")
            elif s["kind"] in ("PodDisruptionBudget",):
                sel = s["spec"]["selector"].get("matchLabels")
            if sel and all(relay_labels.get(k) == v for k, v in sel.items()) and \
                    all(labels.get(k) == v for k, v in sel.items()):
                problem(where, f"{s['kind']}/{s['metadata']['name']} selects the relay's pods and "
                               f"Deployment/{o['metadata']['name']}'s")


# ---------------------------------------------------------------- chart


def chart():
    import helm_python as helm

    values_files = [None] + sorted(CHART.glob("ci/*.yaml"))
    # The chart's copies of the rules and the dashboard are the real files.
    for copy_, source in [(CHART / "files" / "relay-rules.yml", RULES),
                          (CHART / "files" / "relay-dashboard.json", DASHBOARDS / "relay-dashboard.json")]:
        if not copy_.exists() or copy_.read_bytes() != source.read_bytes():
            problem(str(copy_.relative_to(ROOT)),
                    f"differs from {source.relative_to(ROOT)}: cp {source.relative_to(ROOT)} {copy_.relative_to(ROOT)}")

    seen_kinds = set()
    with helm.Chart.load(str(CHART)) as ch:
        for vf in values_files:
            label = "default values" if vf is None else str(vf.relative_to(ROOT))
            values = None if vf is None else yaml.safe_load(vf.read_text())
            report = helm.lint(str(CHART), values, strict=True, namespace="relay")
            for m in report.get("messages", []):
                if m.get("severity", 0) >= 2:
                    problem(f"helm lint ({label})", f"{m.get('path')}: {m.get('error')}")
            for e in report.get("errors", []):
                problem(f"helm lint ({label})", e)
            try:
                rendered = ch.render(values, name="relay", namespace="relay", is_install=True)
            except Exception as e:  # noqa: BLE001 - any render error is a problem to report
                problem(f"render ({label})", str(e))
                continue
            objs = []
            for path, text in sorted(rendered.items()):
                if not path.endswith((".yaml", ".yml")):
                    continue
                for obj in load_docs(f"{label}: {path}", text):
                    validate_object(f"{label}: {path}", obj)
                    objs.append(obj)
            kinds = sorted(o["kind"] for o in objs)
            seen_kinds.update(kinds)
            check_chart_objects(label, values or {}, objs)
            print(f"  chart, {label}: {len(objs)} objects ({', '.join(kinds)}) valid for Kubernetes "
                  f"{' and '.join(KUBE_VERSIONS)}")

        # Values the schema (values.schema.json) or the templates must refuse.
        for bad, why in [
            ({"relay": {"codeTTL": "5m"}}, "a misspelt setting"),
            ({"relay": {"drainTimeout": "30"}}, "a drain timeout without a unit"),
            ({"relay": {"logFormat": "xml"}}, "an unknown log format"),
            ({"redis": {"url": "localhost:6379"}}, "a Redis URL without a scheme"),
            ({"redis": {"dev": {"enabled": False}}}, "no Redis at all"),
            ({"terminationGracePeriodSeconds": 20}, "a grace period shorter than the drain"),
            ({"relay": {"allowedOrigins": "app.example.com"}}, "an allowed origin without a scheme"),
            ({"tls": {"secret": "relay-tls", "cert": "tls.crt"}}, "a misspelt TLS setting"),
            ({"ingress": {"enabled": True}, "relay": {"trustForwardedFor": False, "maxConnectionsPerAddr": 256}},
             "an Ingress whose address every client would share against maxConnectionsPerAddr"),
        ]:
            try:
                ch.render(merge(ch.values, bad), name="relay", namespace="relay", is_install=True)
            except Exception:  # noqa: BLE001 - refusing is the point
                continue
            problem("chart", f"renders with {why}: {bad}")

    for kind in ["Deployment", "Service", "ServiceAccount", "PodDisruptionBudget", "HorizontalPodAutoscaler",
                 "Ingress", "ServiceMonitor", "PrometheusRule", "ConfigMap"]:
        if kind not in seen_kinds:
            problem("chart", f"no values file renders a {kind}")
    finish("chart")


def merge(base, over):
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def check_chart_objects(label, values, objs):
    by_kind = {}
    for o in objs:
        by_kind.setdefault(o["kind"], []).append(o)
    services = by_kind.get("Service", [])
    relay = [d for d in by_kind.get("Deployment", [])
             if d["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/component") == "relay"]
    if len(relay) != 1:
        problem(label, f"expected one relay Deployment, got {len(relay)}")
        return
    dep = relay[0]
    result = check_relay_deployment(label, dep, services)
    if not result:
        return
    container, env, labels = result
    check_not_selected(label, objs, labels)

    hpa = by_kind.get("HorizontalPodAutoscaler", [])
    if hpa and "replicas" in dep["spec"]:
        problem(label, "with autoscaling on, the Deployment must not set replicas (Helm would fight the HPA)")
    if not hpa and "replicas" not in dep["spec"]:
        problem(label, "without autoscaling the Deployment must set replicas")
    for h in hpa:
        if h["spec"]["scaleTargetRef"]["name"] != dep["metadata"]["name"]:
            problem(label, "the HPA does not scale the relay Deployment")
    for pdb in by_kind.get("PodDisruptionBudget", []):
        if pdb["spec"]["selector"]["matchLabels"] != dep["spec"]["selector"]["matchLabels"]:
            problem(label, "the PodDisruptionBudget does not select the relay's pods")
    for ing in by_kind.get("Ingress", []):
        ann = ing["metadata"].get("annotations", {})
        for key in ["nginx.ingress.kubernetes.io/proxy-read-timeout", "nginx.ingress.kubernetes.io/proxy-send-timeout"]:
            if int(ann.get(key, "0")) < 3600:
                problem(label, f"Ingress {key} must keep WebSockets open for an hour")
        names = {p["backend"]["service"]["name"] for r in ing["spec"]["rules"] for p in r["http"]["paths"]}
        relay_svc = {s["metadata"]["name"] for s in services
                     if s["spec"].get("selector") == dep["spec"]["selector"]["matchLabels"]
                     and any(p["targetPort"] == "http" for p in s["spec"]["ports"])}
        if not names <= relay_svc:
            problem(label, f"the Ingress routes to {names}, not to the relay's client Service {relay_svc}")
    for sm in by_kind.get("ServiceMonitor", []):
        sel = sm["spec"]["selector"]["matchLabels"]
        targets = [s for s in services if all(s["metadata"].get("labels", {}).get(k) == v for k, v in sel.items())]
        if len(targets) != 1 or [p["name"] for p in targets[0]["spec"]["ports"]] != [sm["spec"]["endpoints"][0]["port"]]:
            problem(label, "the ServiceMonitor must select exactly the metrics Service and its admin port")
        elif targets[0]["metadata"]["labels"].get(sm["spec"]["jobLabel"]) != "relay":
            problem(label, "the ServiceMonitor's job label must be \"relay\" (the rules select job=\"relay\")")
    for pr in by_kind.get("PrometheusRule", []):
        want = yaml.safe_load(RULES.read_text())["groups"]
        if pr["spec"]["groups"] != want:
            problem(label, "the PrometheusRule's groups differ from deploy/prometheus/relay-rules.yml")
    for cm in by_kind.get("ConfigMap", []):
        if "relay-dashboard.json" in cm.get("data", {}):
            if json.loads(cm["data"]["relay-dashboard.json"]) != json.loads((DASHBOARDS / "relay-dashboard.json").read_text()):
                problem(label, "the dashboard ConfigMap differs from deploy/grafana/relay-dashboard.json")

    # Every setting in the values reaches the container as the same string.
    merged = merge(chart_defaults(), values)
    for key, value in merged["relay"].items():
        var = {"port": "RELAY_LISTEN", "adminPort": "RELAY_ADMIN_LISTEN"}.get(
            key, "RELAY_" + re.sub(r"(?<!^)([A-Z])", r"_\1", key).upper())
        want = str(value).lower() if isinstance(value, bool) else str(value)
        got = env.get(var, {}).get("value")
        if var in ("RELAY_LISTEN", "RELAY_ADMIN_LISTEN"):
            want = f"0.0.0.0:{value}"
        if got != want:
            problem(label, f"relay.{key}={value!r} but {var}={got!r}")

    # tls.secret: that Secret mounted read-only, RELAY_TLS_CERT and
    # RELAY_TLS_KEY naming its tls.crt and tls.key, and the Ingress speaking
    # HTTPS to the pods; without it both settings are empty (plain ws://).
    secret = merged.get("tls", {}).get("secret", "")
    cert = env.get("RELAY_TLS_CERT", {}).get("value")
    key = env.get("RELAY_TLS_KEY", {}).get("value")
    if not secret:
        if (cert, key) != ("", ""):
            problem(label, f"no tls.secret but RELAY_TLS_CERT={cert!r} and RELAY_TLS_KEY={key!r}; want both \"\"")
    else:
        volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"].get("volumes", [])}
        mounts = [m for m in container.get("volumeMounts", [])
                  if volumes.get(m["name"], {}).get("secret", {}).get("secretName") == secret]
        if len(mounts) != 1 or not mounts[0].get("readOnly"):
            problem(label, f"tls.secret {secret!r} must be mounted once, read-only, in the relay container")
        else:
            path = mounts[0]["mountPath"].rstrip("/")
            if (cert, key) != (f"{path}/tls.crt", f"{path}/tls.key"):
                problem(label, f"RELAY_TLS_CERT={cert!r} and RELAY_TLS_KEY={key!r} must be tls.crt and tls.key "
                               f"of the Secret {secret!r} mounted at {path}")
        for ing in by_kind.get("Ingress", []):
            protocol = ing["metadata"].get("annotations", {}).get("nginx.ingress.kubernetes.io/backend-protocol")
            if protocol != "HTTPS":
                problem(label, f"with tls.secret the pods speak TLS, but the Ingress's backend-protocol is {protocol!r}")


@functools.lru_cache(maxsize=None)
def _chart_defaults():
    return json.dumps(yaml.safe_load((CHART / "values.yaml").read_text()))


def chart_defaults():
    return json.loads(_chart_defaults())


# ---------------------------------------------------------------- manifests


def manifests():
    objs = []
    files = sorted(K8S_DIR.glob("*.yaml"))
    if not files:
        problem(str(K8S_DIR), "no manifests")
    for f in files:
        where = str(f.relative_to(ROOT))
        for obj in load_docs(where, f.read_text()):
            validate_object(where, obj)
            objs.append(obj)
    relay = [o for o in objs if o["kind"] == "Deployment"
             and o["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/component") == "relay"]
    if len(relay) != 1:
        problem("deploy/k8s", f"expected one relay Deployment, got {len(relay)}")
    else:
        result = check_relay_deployment("deploy/k8s", relay[0], [o for o in objs if o["kind"] == "Service"])
        if result:
            check_not_selected("deploy/k8s", objs, result[2])
    kinds = sorted(o["kind"] for o in objs)
    for kind in ["Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler"]:
        if kind not in kinds:
            problem("deploy/k8s", f"no {kind}")
    print(f"  manifests: {len(objs)} objects ({', '.join(kinds)}) valid for Kubernetes {' and '.join(KUBE_VERSIONS)}")
    finish("manifests")


# ---------------------------------------------------------------- dashboard


def dashboard():
    files = sorted(DASHBOARDS.glob("*.json"))
    if not files:
        problem(str(DASHBOARDS), "no dashboard")
    exprs = []
    for f in files:
        where = str(f.relative_to(ROOT))
        try:
            d = json.loads(f.read_text())
        except json.JSONDecodeError as e:
            problem(where, f"not JSON: {e}")
            continue
        # Importable as is: no numeric id, no __inputs to fill in, a stable uid,
        # and every panel on the data source variable.
        if d.get("id") is not None:
            problem(where, "id must be null so Grafana assigns one on import")
        if "__inputs" in d:
            problem(where, "__inputs makes the import ask questions; use the datasource variable")
        if not d.get("uid"):
            problem(where, "no uid")
        variables = {v["name"]: v for v in d.get("templating", {}).get("list", [])}
        if variables.get("datasource", {}).get("type") != "datasource":
            problem(where, "no datasource variable")
        ids = set()
        panels = []
        for p in d.get("panels", []):
            panels.append(p)
            panels.extend(p.get("panels", []))
        for p in panels:
            title = p.get("title", "?")
            if p.get("id") in ids:
                problem(where, f"panel id {p.get('id')} is used twice")
            ids.add(p.get("id"))
            if p.get("type") == "row":
                continue
            if p.get("datasource", {}).get("uid") != "${datasource}":
                problem(where, f"panel {title!r} does not use the datasource variable")
            if not p.get("targets"):
                problem(where, f"panel {title!r} has no query")
            for t in p.get("targets", []):
                if t.get("datasource", {}).get("uid") != "${datasource}":
                    problem(where, f"panel {title!r} query {t.get('refId')} does not use the datasource variable")
                expr = t.get("expr", "")
                for var in re.findall(r"\$\{?(\w+)", expr):
                    if var not in variables and not var.startswith("__"):
                        problem(where, f"panel {title!r} uses the unknown variable ${var}")
                exprs.append((f"{where}: {title}", expr))
        for name, v in variables.items():
            if v.get("type") == "query":
                q = v.get("query", {})
                q = q.get("query") if isinstance(q, dict) else q
                m = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", q or "")
                if not m:
                    problem(where, f"variable {name}: only label_values(selector, label) is checked end to end")
                else:
                    exprs.append((f"{where}: variable {name}", m.group(1)))

    # promtool parses every query: each becomes a recording rule of a
    # throw-away rules file, with Grafana's variables filled in.
    rules = {"groups": [{"name": "dashboard", "rules": []}]}
    for i, (_, expr) in enumerate(exprs):
        e = expr.replace("$__rate_interval", "1m").replace("$__interval", "1m").replace("$__range", "1h")
        e = re.sub(r"\$\{?(\w+)\}?", ".*", e)
        rules["groups"][0]["rules"].append({"record": f"dashboard:query_{i}", "expr": e})
    with tempfile.NamedTemporaryFile("w", suffix=".yml") as tmp:
        yaml.safe_dump(rules, tmp)
        tmp.flush()
        out = subprocess.run(["promtool", "check", "rules", tmp.name], capture_output=True, text=True)
        if out.returncode != 0:
            problem("dashboard queries", (out.stdout + out.stderr).strip())
    print(f"  dashboard: {len(files)} file(s), {len(exprs)} queries parse")
    finish("dashboard")


if __name__ == "__main__":
    commands = {"chart": chart, "manifests": manifests, "dashboard": dashboard}
    if len(sys.argv) != 2 or sys.argv[1] not in commands:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    commands[sys.argv[1]]()
