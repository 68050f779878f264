"""serving/k8s/ holds together without kubectl: every manifest parses as YAML and the dashboard as JSON, Prometheus
scrapes the server where its monitoring config serves the metrics, every metric an alert or a panel reads is one
the server or the monitor exports, and the CronJob's command line parses as `pneumonia monitor`."""

import json
import pathlib
import re

import yaml
from google.protobuf import text_format

from pneumonia.cli import build_parser, monitor_commands
from pneumonia.monitoring import monitor, settings, windows
from serving import metrics
from serving.tf_serving_protos import MonitoringConfig

K8S = pathlib.Path(__file__).resolve().parents[1] / "serving" / "k8s"
METRIC = re.compile(r":(?:tensorflow|pneumonia):[a-z_:]+")


def documents(name: str):
    return [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]


def by_kind(kind: str):
    return next(
        d for path in sorted(K8S.rglob("*.yaml")) for d in documents(path.relative_to(K8S)) if d["kind"] == kind
    )


def test_every_manifest_parses_and_every_kustomization_lists_files_that_exist():
    paths = sorted(K8S.rglob("*.yaml"))
    assert len(paths) >= 7
    for path in paths:
        for document in documents(path.relative_to(K8S)):
            assert document["apiVersion"] and document["kind"], path
            if document["kind"] == "Kustomization":
                listed = document.get("resources", []) + [
                    name for generator in document.get("configMapGenerator", []) for name in generator["files"]
                ]
                assert listed and all((path.parent / name).exists() for name in listed), path
    json.loads((K8S / "monitoring" / "grafana-dashboard.json").read_text())


def test_prometheus_scrapes_the_server_where_its_monitoring_config_serves_the_metrics():
    template = by_kind("Deployment")["spec"]["template"]
    annotations = template["metadata"]["annotations"]
    container = template["spec"]["containers"][0]
    assert annotations["prometheus.io/scrape"] == "true"
    port = next(p for p in container["ports"] if p["name"] == "http")["containerPort"]
    assert annotations["prometheus.io/port"] == str(port)
    assert "--monitoring_config_file=/config/monitoring.config" in container["args"]
    monitoring = text_format.Parse(by_kind("ConfigMap")["data"]["monitoring.config"], MonitoringConfig())
    assert (
        monitoring.prometheus_config.enable and monitoring.prometheus_config.path == annotations["prometheus.io/path"]
    )


def exported() -> set:
    names = set()
    for family in metrics.REGISTRY.collect():
        suffixes = ("_bucket", "_sum", "_count") if family.type == "histogram" else ("",)
        names.update(family.name + suffix for suffix in suffixes)
    last = windows.Window("w", 0, 0, 0, 0, None, {})
    return names | {f":pneumonia:monitor:{name}" for name in monitor.gauges(last, None)}


def test_every_metric_an_alert_or_a_panel_reads_is_exported():
    rules = [rule for group in by_kind("PrometheusRule")["spec"]["groups"] for rule in group["rules"]]
    dashboard = json.loads((K8S / "monitoring" / "grafana-dashboard.json").read_text())
    expressions = [rule["expr"] for rule in rules]
    expressions += [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    expressions += [variable["query"] for variable in dashboard["templating"]["list"] if variable["type"] == "query"]
    read = {name for expression in expressions for name in METRIC.findall(expression)}
    assert len(read) >= 15 and read <= exported(), sorted(read - exported())


def test_the_cronjob_runs_pneumonia_monitor_and_fails_without_retry_on_alerts():
    job = by_kind("CronJob")["spec"]["jobTemplate"]["spec"]
    container = job["template"]["spec"]["containers"][0]
    assert container["args"][0] == "pneumonia"
    args = build_parser().parse_args(container["args"][1:])
    assert args.func is monitor_commands.cmd_monitor and args.window == "hour" and args.pushgateway
    (rule,) = job["podFailurePolicy"]["rules"]
    assert rule["action"] == "FailJob" and rule["onExitCodes"]["values"] == [settings.EXIT_ALERTS]
    assert job["template"]["spec"]["restartPolicy"] == "Never"
