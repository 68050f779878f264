"""`schedule` against a local server speaking the KFP v2beta1 REST calls kfp.Client makes; cron, parameters
and errors are checked before any request."""

import email.parser
import http.server
import itertools
import json
import socket
import threading
import urllib.parse

import pytest

from kubeflow.schedule import (
    ScheduleError,
    ScheduleRequest,
    make_plan,
    pipeline_parameters,
    recurring_run_body,
    schedule,
    validate_cron,
)
from pipeline.config import RunConfig
from pneumonia.cli import main

API = "/apis/v2beta1"
TRAINER_DEFAULTS = RunConfig().trainer_config()
SPEC = {
    "pipelineInfo": {"name": "pneumonia"},
    "defaultPipelineRoot": "gs://bucket/tfx/pneumonia",
    "root": {
        "inputDefinitions": {
            "parameters": {
                "data_root": {"parameterType": "STRING", "defaultValue": "gs://bucket/data"},
                "trainer_config": {"parameterType": "STRING", "defaultValue": json.dumps(TRAINER_DEFAULTS)},
            }
        }
    },
}


class FakeKfp(http.server.ThreadingHTTPServer):
    """The pipeline, version, experiment and recurring-run endpoints, in memory, recording every request."""

    def __init__(self, experiments=("pneumonia",)):
        super().__init__(("127.0.0.1", 0), FakeKfpHandler)
        self.ids = (f"id-{n}" for n in itertools.count(1))
        self.requests = []
        self.pipelines = {}  # id -> {"display_name", "versions": [{"pipeline_version_id", "display_name"}]}
        self.experiments = {next(self.ids): name for name in experiments}
        self.uploads = []  # (query, file bytes)
        self.recurring_runs = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def answer(self, method, path, query, body, content_type):
        """(status, JSON) for one request."""
        one = {key: values[0] for key, values in query.items()}
        if method == "GET" and path == f"{API}/healthz":
            return 200, {"multi_user": False}
        if method == "GET" and path == f"{API}/experiments":
            wanted = json.loads(one["filter"])["predicates"][0]["stringValue"]
            return 200, {
                "experiments": [
                    {"experiment_id": i, "display_name": n} for i, n in self.experiments.items() if n == wanted
                ]
            }
        if method == "POST" and path == f"{API}/experiments":
            experiment_id = next(self.ids)
            self.experiments[experiment_id] = json.loads(body)["display_name"]
            return 200, {"experiment_id": experiment_id, "display_name": self.experiments[experiment_id]}
        if method == "GET" and path == f"{API}/pipelines":
            wanted = json.loads(one["filter"])["predicates"][0]["stringValue"]
            return 200, {
                "pipelines": [
                    {"pipeline_id": i, "display_name": p["display_name"]}
                    for i, p in self.pipelines.items()
                    if p["display_name"] == wanted
                ]
            }
        if method == "POST" and path == f"{API}/pipelines":
            pipeline_id = next(self.ids)
            self.pipelines[pipeline_id] = {"display_name": json.loads(body)["display_name"], "versions": []}
            return 200, {"pipeline_id": pipeline_id, "display_name": self.pipelines[pipeline_id]["display_name"]}
        if method == "POST" and path == f"{API}/pipelines/upload_version":
            self.uploads.append((one, uploaded_file(body, content_type)))
            version = {
                "pipeline_id": one["pipelineid"],
                "pipeline_version_id": next(self.ids),
                "display_name": one["name"],
            }
            self.pipelines[one["pipelineid"]]["versions"].append(version)
            return 200, version
        if method == "GET" and path.startswith(f"{API}/pipelines/") and path.endswith("/versions"):
            versions = self.pipelines[path.split("/")[-2]]["versions"]
            if "filter" in one:
                wanted = json.loads(one["filter"])["predicates"][0]["stringValue"]
                versions = [v for v in versions if v["display_name"] == wanted]
            return 200, {"pipeline_versions": versions}
        if method == "POST" and path == f"{API}/recurringruns":
            run = {**json.loads(body), "recurring_run_id": next(self.ids)}
            self.recurring_runs.append(json.loads(body))
            return 200, run
        return 404, {"error": f"no route {method} {path}"}


class FakeKfpHandler(http.server.BaseHTTPRequestHandler):
    def _serve(self, method):
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query)
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.requests.append((method, url.path, query))
        status, answer = self.server.answer(method, url.path, query, body, self.headers.get("Content-Type", ""))
        payload = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def do_GET(self):
        self._serve("GET")

    def do_POST(self):
        self._serve("POST")

    def log_message(self, *args):
        pass


def uploaded_file(body: bytes, content_type: str) -> bytes:
    message = email.parser.BytesParser().parsebytes(b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body)
    (part,) = [p for p in message.get_payload() if p.get_param("name", header="content-disposition") == "uploadfile"]
    return part.get_payload(decode=True)


@pytest.fixture
def kfp_server():
    servers = []

    def start(**kwargs) -> FakeKfp:
        server = FakeKfp(**kwargs)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def package(tmp_path):
    import yaml

    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(SPEC))
    return path


def request_for(server_url, package, **overrides) -> ScheduleRequest:
    values = dict(
        host=server_url,
        package=str(package),
        cron="0 0 3 * * *",
        experiment="pneumonia",
        job_name="nightly",
        assignments=["epochs=10", "architecture=densenet121", "data_root=gs://new/data"],
    )
    values.update(overrides)
    return ScheduleRequest(**values)


def test_uploads_then_creates_the_recurring_run(kfp_server, package):
    server = kfp_server()
    plan = schedule(request_for(server.url, package), out=lambda line: None)
    ((pipeline_id, pipeline),) = server.pipelines.items()
    assert pipeline["display_name"] == "pneumonia"
    ((query, uploaded),) = server.uploads
    assert query == {"name": plan.version_name, "pipelineid": pipeline_id} and uploaded == package.read_bytes()
    (run,) = server.recurring_runs
    assert run["trigger"] == {"cron_schedule": {"cron": "0 0 3 * * *"}}
    assert int(run["max_concurrency"]) == 1
    parameters = run["runtime_config"]["parameters"]
    assert parameters["data_root"] == "gs://new/data"
    assert json.loads(parameters["trainer_config"]) == {**TRAINER_DEFAULTS, "epochs": 10, "architecture": "densenet121"}
    assert run["runtime_config"]["pipeline_root"] == "gs://bucket/tfx/pneumonia"
    experiment_id = next(iter(server.experiments))
    # The dry run prints this same body, with the ids the server assigned.
    assert run == recurring_run_body(plan, experiment_id, pipeline_id, pipeline["versions"][0]["pipeline_version_id"])


def test_same_package_reuses_its_version_and_a_new_one_is_uploaded_as_a_version(kfp_server, package):
    server = kfp_server()
    schedule(request_for(server.url, package), out=lambda line: None)
    schedule(request_for(server.url, package, job_name="weekly", cron="0 30 4 * * SUN"), out=lambda line: None)
    assert len(server.uploads) == 1
    package.write_text(package.read_text() + "sdkVersion: changed\n")
    schedule(request_for(server.url, package), out=lambda line: None)
    assert len(server.uploads) == 2 and server.uploads[1][0]["pipelineid"] == next(iter(server.pipelines))
    (pipeline,) = server.pipelines.values()
    version_ids = [v["pipeline_version_id"] for v in pipeline["versions"]]
    assert [r["pipeline_version_reference"]["pipeline_version_id"] for r in server.recurring_runs] == [
        version_ids[0],
        version_ids[0],
        version_ids[1],
    ]


def test_unknown_experiment_is_an_error_before_any_upload(kfp_server, package):
    server = kfp_server(experiments=())
    with pytest.raises(ScheduleError, match="no experiment named 'pneumonia'.*--create-experiment"):
        schedule(request_for(server.url, package), out=lambda line: None)
    assert not server.uploads and not server.recurring_runs
    schedule(request_for(server.url, package, create_experiment=True), out=lambda line: None)
    assert list(server.experiments.values()) == ["pneumonia"]
    assert server.recurring_runs[0]["experiment_id"] == next(iter(server.experiments))


def test_invalid_cron_and_parameters_send_nothing(kfp_server, package):
    server = kfp_server()
    with pytest.raises(ScheduleError, match="needs 6 fields"):
        schedule(request_for(server.url, package, cron="0 3 * * *"))
    with pytest.raises(ScheduleError, match="--param epoch: unknown parameter"):
        schedule(request_for(server.url, package, assignments=["epoch=3"]))
    assert server.requests == []


def test_dry_run_prints_the_requests_and_sends_nothing(kfp_server, package):
    server = kfp_server()
    lines = []
    schedule(request_for(server.url, package), dry_run=True, out=lines.append)
    assert server.requests == []
    assert f"POST {server.url}{API}/recurringruns" in lines
    assert any(f"POST {server.url}{API}/pipelines/upload_version?name=pneumonia-" in line for line in lines)
    printed = json.loads(lines[-1])
    assert printed == recurring_run_body(
        make_plan(request_for(server.url, package)), "<experiment_id>", "<pipeline_id>", "<version_id>"
    )


def test_unreachable_host_is_named(package):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}"
    with pytest.raises(SystemExit, match=f"error: cannot reach Kubeflow Pipelines at {url}: .*refused"):
        main(["schedule", "--host", url, "--cron", "0 0 3 * * *", "--package", str(package)])


def test_schedule_command(kfp_server, package, capsys):
    server = kfp_server()
    main(
        [
            "schedule",
            "--host",
            server.url,
            "--cron",
            "0 0 3 * * *",
            "--package",
            str(package),
            "--name",
            "nightly",
            "--param",
            "epochs=7",
            "--max-concurrency",
            "2",
        ]
    )
    assert "recurring run id-" in capsys.readouterr().out
    (run,) = server.recurring_runs
    assert (
        int(run["max_concurrency"]) == 2
        and json.loads(run["runtime_config"]["parameters"]["trainer_config"])["epochs"] == 7
    )
    with pytest.raises(SystemExit, match="error: invalid cron expression '@often'"):
        main(["schedule", "--host", server.url, "--cron", "@often", "--package", str(package)])


@pytest.mark.parametrize(
    "expression", ["0 0 3 * * *", "0 0/10 * * * ?", "0 0 9 ? * MON-FRI", "*/30 * * 1,15 JAN-JUN *", "@daily"]
)
def test_valid_cron(expression):
    assert validate_cron(expression) == expression


@pytest.mark.parametrize(
    "expression, problem",
    [
        ("0 3 * * *", "got 5"),
        ("0 60 * * * *", "'60' is outside 0-59"),
        ("0 0 0 0 * *", "'0' is outside 1-31"),
        ("0 0 3 ? * *x", "cannot parse"),
        ("? 0 3 * * *", "'?' is only allowed"),
        ("0 0 5-2 * * *", "runs backwards"),
        ("0 */0 * * * *", "step must be at least 1"),
        ("0 0 3 * FOO *", "'FOO' is outside 1-12"),
    ],
)
def test_invalid_cron_names_the_problem(expression, problem):
    with pytest.raises(ScheduleError, match=f"invalid cron expression.*{problem}"):
        validate_cron(expression)


def test_parameters_are_typed_like_their_defaults():
    assert pipeline_parameters(SPEC, []) == {}
    edited = pipeline_parameters(SPEC, ["learning_rate=1", "augment=false"])
    assert json.loads(edited["trainer_config"]) == {**TRAINER_DEFAULTS, "learning_rate": 1.0, "augment": False}
    with pytest.raises(ScheduleError, match="epochs=ten: expected int"):
        pipeline_parameters(SPEC, ["epochs=ten"])
    with pytest.raises(ScheduleError, match="expected KEY=VALUE"):
        pipeline_parameters(SPEC, ["epochs"])


@pytest.mark.parametrize(
    "assignment, problem",
    [
        ("architecture=resnet50", "unknown architecture 'resnet50'; choose one of: cnn"),
        ("threshold_policy=f1", "unknown threshold policy 'f1'"),
        ("batch_size=0", "trainer setting batch_size=0: must be at least 1"),
        ('model_config={"depth": 3}', "cnn: unknown model_config setting"),
        ('trainer_config={"architecture": "cnn"}', "missing trainer setting"),
    ],
)
def test_trainer_settings_the_trainer_would_refuse_fail_before_any_request(kfp_server, package, assignment, problem):
    server = kfp_server()
    with pytest.raises(ScheduleError, match=f"--param trainer_config: {problem}"):
        schedule(request_for(server.url, package, assignments=[assignment]), out=lambda line: None)
    assert server.requests == []
