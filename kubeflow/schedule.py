"""Uploads a compiled pipeline to Kubeflow Pipelines and creates a recurring run with `kfp.Client`.

Everything that can be checked without the server (cron expression, parameters, package) is checked
before the first request. The package's version name is derived from its bytes, so scheduling the same
package again reuses its version instead of failing on a duplicate name.
"""

import dataclasses
import hashlib
import json
import re
import warnings
from typing import Any, Callable, Dict, List, Optional, Tuple

import kfp
import kfp_server_api
import urllib3
import yaml

from kubeflow.parameters import TRAINER_CONFIG_PARAMETER
from trainer.config import TrainerConfig

API = "/apis/v2beta1"
# KFP's cron has a seconds field first (robfig/cron): second minute hour day-of-month month day-of-week.
CRON_FIELDS = (
    ("second", 0, 59),
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day-of-month", 1, 31),
    ("month", 1, 12),
    ("day-of-week", 0, 6),
)
CRON_NAMES = {
    "month": {
        name: number
        for number, name in enumerate(
            ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"], start=1
        )
    },
    "day-of-week": {name: number for number, name in enumerate(["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"])},
}
CRON_DESCRIPTORS = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
CRON_ITEM = re.compile(r"^(?P<range>\*|\?|[A-Za-z0-9]+(?:-[A-Za-z0-9]+)?)(?:/(?P<step>\d+))?$")


class ScheduleError(Exception):
    """A problem with the request or the server, said in one line."""


def validate_cron(expression: str) -> str:
    """Returns the expression if Kubeflow Pipelines' scheduler accepts it, else raises ScheduleError."""
    text = expression.strip()
    if text in CRON_DESCRIPTORS:
        return text
    fields = text.split()
    example = "e.g. '0 0 3 * * *' for 03:00 every day"
    if len(fields) != len(CRON_FIELDS):
        raise ScheduleError(
            f"invalid cron expression {expression!r}: Kubeflow Pipelines needs 6 fields (second minute hour "
            f"day-of-month month day-of-week), got {len(fields)}; {example}"
        )
    for value, (name, low, high) in zip(fields, CRON_FIELDS):
        for item in value.split(","):
            problem = _cron_item_problem(item, name, low, high)
            if problem:
                raise ScheduleError(
                    f"invalid cron expression {expression!r}: {name} field {value!r}: {problem}; {example}"
                )
    return text


def _cron_item_problem(item: str, name: str, low: int, high: int) -> Optional[str]:
    match = CRON_ITEM.match(item)
    if not match:
        return f"cannot parse {item!r}"
    if match["step"] is not None and int(match["step"]) == 0:
        return "a step must be at least 1"
    if match["range"] == "?":
        allowed = name in ("day-of-month", "day-of-week")
        return None if allowed else "'?' is only allowed for day-of-month or day-of-week"
    if match["range"] == "*":
        return None
    names = CRON_NAMES.get(name, {})
    bounds = []
    for part in match["range"].split("-"):
        number = names.get(part.upper()) if not part.isdigit() else int(part)
        if number is None or not low <= number <= high:
            return f"{part!r} is outside {low}-{high}"
        bounds.append(number)
    if len(bounds) == 2 and bounds[0] > bounds[1]:
        return f"range {match['range']!r} runs backwards"
    return None


def read_package(path: str) -> Dict[str, Any]:
    """The compiled pipeline spec (YAML), refused unless it is one."""
    try:
        with open(path, encoding="utf-8") as f:
            spec = yaml.safe_load(f)
    except OSError as error:
        raise ScheduleError(
            f"cannot read pipeline package {path}: {error.strerror}; write one with `pneumonia compile --out PATH`"
        )
    except yaml.YAMLError as error:
        raise ScheduleError(f"pipeline package {path} is not YAML: {error}")
    if not isinstance(spec, dict) or "root" not in spec or "pipelineInfo" not in spec:
        raise ScheduleError(
            f"{path} is not a Kubeflow pipeline spec (no root/pipelineInfo); "
            "write one with `pneumonia compile --out PATH`"
        )
    return spec


def pipeline_parameters(spec: Dict[str, Any], assignments: List[str]) -> Dict[str, Any]:
    """KEY=VALUE pairs as run parameters; a key of the trainer config edits that key inside `trainer_config`.

    Only given parameters are returned; the others keep the package's defaults.
    """
    known = spec["root"].get("inputDefinitions", {}).get("parameters", {})
    trainer_defaults = (
        json.loads(known[TRAINER_CONFIG_PARAMETER]["defaultValue"]) if TRAINER_CONFIG_PARAMETER in known else {}
    )
    parameters: Dict[str, Any] = {}
    trainer_edits: Dict[str, Any] = {}
    for assignment in assignments:
        key, separator, value = assignment.partition("=")
        if not separator or not key:
            raise ScheduleError(f"--param {assignment!r}: expected KEY=VALUE")
        if key in known:
            parameters[key] = value
        elif key in trainer_defaults:
            trainer_edits[key] = _typed_like(key, value, trainer_defaults[key])
        else:
            raise ScheduleError(
                f"--param {key}: unknown parameter; the package takes {', '.join(sorted(known))}"
                + (
                    f" and the {TRAINER_CONFIG_PARAMETER} keys {', '.join(sorted(trainer_defaults))}"
                    if trainer_defaults
                    else ""
                )
            )
    if trainer_edits:
        base = _trainer_config(parameters.get(TRAINER_CONFIG_PARAMETER, json.dumps(trainer_defaults)))
        parameters[TRAINER_CONFIG_PARAMETER] = json.dumps({**base, **trainer_edits}, sort_keys=True)
    if TRAINER_CONFIG_PARAMETER in parameters:
        check_trainer_config(_trainer_config(parameters[TRAINER_CONFIG_PARAMETER]))
    return parameters


def _trainer_config(text: str) -> Dict[str, Any]:
    try:
        config = json.loads(text)
    except json.JSONDecodeError as error:
        raise ScheduleError(f"--param {TRAINER_CONFIG_PARAMETER}: not JSON ({error})")
    if not isinstance(config, dict):
        raise ScheduleError(f"--param {TRAINER_CONFIG_PARAMETER}: expected a JSON object of trainer settings")
    return config


def check_trainer_config(config: Dict[str, Any]) -> None:
    """The Trainer's own check (architecture registry, settings and their values), before anything is uploaded:
    a bad value would otherwise fail every scheduled run."""
    try:
        TrainerConfig.from_dict(config)
    except ValueError as error:
        raise ScheduleError(f"--param {TRAINER_CONFIG_PARAMETER}: {error}")


def _typed_like(key: str, text: str, default: Any) -> Any:
    """`text` read as YAML, accepted only with the default's type (an int also fills a float)."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = text
    expected = type(default)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if expected is str and not isinstance(value, str):
        value = text
    if type(value) is not expected:
        raise ScheduleError(f"--param {key}={text}: expected {expected.__name__} like the default {default!r}")
    return value


@dataclasses.dataclass
class ScheduleRequest:
    """One `pneumonia schedule` invocation, as given."""

    host: str
    package: str
    cron: str
    experiment: str
    job_name: str
    pipeline_name: str = ""  # default: the package's pipeline name
    assignments: List[str] = dataclasses.field(default_factory=list)
    max_concurrency: int = 1
    create_experiment: bool = False
    namespace: Optional[str] = None

    def package_digest(self) -> str:
        with open(self.package, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()


@dataclasses.dataclass
class Plan:
    """What a schedule sends, all checked before the first request."""

    request: ScheduleRequest
    cron: str
    pipeline_name: str
    version_name: str
    parameters: Dict[str, Any]
    pipeline_root: Optional[str]


def make_plan(request: ScheduleRequest) -> Plan:
    """Checks everything checkable without the server; raises ScheduleError on the first problem."""
    cron = validate_cron(request.cron)
    if request.max_concurrency < 1:
        raise ScheduleError(f"--max-concurrency {request.max_concurrency}: must be at least 1")
    spec = read_package(request.package)
    pipeline_name = request.pipeline_name or spec["pipelineInfo"]["name"]
    return Plan(
        request,
        cron,
        pipeline_name,
        f"{pipeline_name}-{request.package_digest()[:12]}",
        pipeline_parameters(spec, request.assignments),
        spec.get("defaultPipelineRoot"),
    )


def name_filter(name: str) -> str:
    """The filter kfp.Client sends to look a resource up by display name."""
    return json.dumps({"predicates": [{"operation": "EQUALS", "key": "display_name", "stringValue": name}]})


def recurring_run_body(plan: Plan, experiment_id: str, pipeline_id: str, version_id: str) -> Dict[str, Any]:
    """The JSON body of POST /recurringruns, as kfp.Client.create_recurring_run serialises it."""
    request = plan.request
    body = kfp_server_api.V2beta1RecurringRun(
        experiment_id=experiment_id,
        mode=kfp_server_api.RecurringRunMode.ENABLE,
        pipeline_version_reference=kfp_server_api.V2beta1PipelineVersionReference(
            pipeline_id=pipeline_id, pipeline_version_id=version_id
        ),
        runtime_config=kfp_server_api.V2beta1RuntimeConfig(
            pipeline_root=plan.pipeline_root, parameters=plan.parameters
        ),
        display_name=request.job_name,
        no_catchup=True,
        trigger=kfp_server_api.V2beta1Trigger(cron_schedule=kfp_server_api.V2beta1CronSchedule(cron=plan.cron)),
        max_concurrency=request.max_concurrency,
    )
    return kfp_server_api.ApiClient().sanitize_for_serialization(body)


def dry_run_lines(plan: Plan) -> List[str]:
    """The requests `schedule` would send; ids the server assigns are shown as <pipeline_id> etc."""
    request, host = plan.request, plan.request.host.rstrip("/")
    package = f"multipart uploadfile={request.package} (sha256 {request.package_digest()})"
    experiment_query = f"filter={name_filter(request.experiment)}"
    if request.namespace:
        experiment_query += f"&namespace={request.namespace}"
    lines = [] if request.namespace else [f"GET  {host}{API}/healthz"]  # kfp.Client's check, skipped with a namespace
    lines.append(f"GET  {host}{API}/experiments?{experiment_query}")
    if request.create_experiment:
        lines.append(
            f"  experiment absent: POST {host}{API}/experiments  "
            + json.dumps({"display_name": request.experiment, "namespace": request.namespace})
        )
    lines += [
        f"GET  {host}{API}/pipelines?filter={name_filter(plan.pipeline_name)}",
        f"  pipeline absent: POST {host}{API}/pipelines  " + json.dumps({"display_name": plan.pipeline_name}),
        f"GET  {host}{API}/pipelines/<pipeline_id>/versions?filter={name_filter(plan.version_name)}",
        f"  version absent: POST {host}{API}/pipelines/upload_version?name={plan.version_name}"
        f"&pipelineid=<pipeline_id>  {package}",
    ]
    lines.append(f"POST {host}{API}/recurringruns")
    lines.append(
        json.dumps(
            recurring_run_body(plan, "<experiment_id>", "<pipeline_id>", "<version_id>"), indent=2, sort_keys=True
        )
    )
    return lines


def connect(host: str, namespace: Optional[str]):
    """A kfp.Client for `host`; its constructor already calls the server (health check)."""
    with warnings.catch_warnings():  # "This client only works with Kubeflow Pipeline v2.0.0-beta.2 and later"
        warnings.simplefilter("ignore", FutureWarning)
        return _call(host, lambda: kfp.Client(host=host, namespace=namespace or "kubeflow"))


def _call(host: str, action: Callable[[], Any]) -> Any:
    """Runs one client call, turning transport and API failures into one-line ScheduleErrors."""
    try:
        return action()
    except urllib3.exceptions.HTTPError as error:
        reason = str(getattr(error, "reason", None) or error)
        raise ScheduleError(f"cannot reach Kubeflow Pipelines at {host}: {reason.split('>: ', 1)[-1]}")
    except TimeoutError as error:
        raise ScheduleError(f"Kubeflow Pipelines at {host} does not answer its health check: {error}")
    except kfp_server_api.ApiException as error:
        raise ScheduleError(
            f"Kubeflow Pipelines at {host} refused {error.status} {error.reason}: {(error.body or '').strip()[:300]}"
        )


def upload(client, plan: Plan) -> Tuple[str, str]:
    """(pipeline_id, version_id): the package as a version named after its content, reused when present.

    A missing pipeline is created empty first, so every package, the first included, is a named version.
    """
    host, package = plan.request.host, plan.request.package
    pipeline_id = _call(host, lambda: client.get_pipeline_id(plan.pipeline_name))
    if pipeline_id is None:
        pipeline_id = _call(
            host,
            lambda: client.pipelines.create_pipeline(
                body=kfp_server_api.V2beta1Pipeline(display_name=plan.pipeline_name)
            ),
        ).pipeline_id
    existing = _call(
        host, lambda: client.list_pipeline_versions(pipeline_id, filter=name_filter(plan.version_name))
    ).pipeline_versions
    if existing:
        return pipeline_id, existing[0].pipeline_version_id
    version = _call(host, lambda: client.upload_pipeline_version(package, plan.version_name, pipeline_id=pipeline_id))
    return pipeline_id, version.pipeline_version_id


def find_experiment(client, plan: Plan) -> str:
    """The experiment's id; created only when asked, so a typo in its name is an error, not a new one."""
    request = plan.request
    try:
        return _call(
            request.host, lambda: client.get_experiment(experiment_name=request.experiment, namespace=request.namespace)
        ).experiment_id
    except ValueError as error:
        if not str(error).startswith("No experiment is found"):
            raise ScheduleError(f"experiment {request.experiment!r}: {error}")
    if not request.create_experiment:
        raise ScheduleError(
            f"no experiment named {request.experiment!r} on {request.host}; create it in the "
            "Kubeflow UI or pass --create-experiment"
        )
    return _call(
        request.host, lambda: client.create_experiment(request.experiment, namespace=request.namespace)
    ).experiment_id


def schedule(request: ScheduleRequest, dry_run: bool = False, out: Callable[[str], None] = print) -> Plan:
    """Uploads the package and creates the recurring run; with `dry_run`, prints the requests instead."""
    plan = make_plan(request)
    if dry_run:
        for line in dry_run_lines(plan):
            out(line)
        return plan
    client = connect(request.host, request.namespace)
    experiment = find_experiment(client, plan)  # first: an unknown experiment uploads nothing
    pipeline_id, version_id = upload(client, plan)
    run = _call(
        request.host,
        lambda: client.create_recurring_run(
            experiment_id=experiment,
            job_name=request.job_name,
            cron_expression=plan.cron,
            max_concurrency=request.max_concurrency,
            no_catchup=True,
            params=plan.parameters,
            pipeline_id=pipeline_id,
            version_id=version_id,
            pipeline_root=plan.pipeline_root,
            enabled=True,
        ),
    )
    out(
        f"recurring run {run.recurring_run_id} ({request.job_name!r}, cron {plan.cron!r}) of pipeline "
        f"{plan.pipeline_name!r} version {version_id} in experiment {request.experiment!r}"
    )
    return plan
