"""Runs a compiled KFP v2 pipeline spec on this machine, task by task, as KFP's driver and launcher do.

It reads only the spec (`pneumonia compile`'s YAML) and, for each container task in dependency order:
resolves its inputs (runtime parameters with their defaults, constants, upstream artifacts with their
URIs and metadata), builds the ExecutorInput, substitutes KFP's placeholders in the container's own
`command` + `args`, runs them as a subprocess with this virtualenv's Python standing in for the image's,
and reads the ExecutorOutput back to pass artifacts downstream. Ready tasks run in parallel, as Argo
runs them; a task whose cache key matches an earlier successful execution reuses its outputs.

What it follows, in kubeflow/pipelines (backend/src/v2):
- driver/driver.go `provisionOutputs`: output artifact URIs `<root>/<pipeline>/<run id>/<task>/<uuid>/<key>`
  (metadata/client.go `GenerateOutputURI`, `GetPipeline`), output artifact `name` = the output key,
  `outputFile` = `output_metadata.json` in the task root;
- component/launcher_v2.go `addDefaultParams`, `compileCmdAndArgs`, `getPlaceholders` (the placeholders
  and their formatting), `getExecutorOutputFile`, `mergeRuntimeArtifacts` (an ExecutorOutput artifact's
  URI and metadata replace the provisioned ones), `uploadOutputArtifacts` (recorded in metadata with a
  `display_name`);
- metadata/converter.go `toRuntimeArtifact`: a downstream input artifact's `name` is its metadata id,
  its `metadata` the recorded properties;
- cacheutils/cache.go `GenerateCacheKey`, driver/cache.go: the cache key (input artifact names, input
  parameter values, output specs without URIs, image, unsubstituted command + args), used only when
  the task's `cachingOptions.enableCache` is set;
- compiler/argocompiler/dag.go: what open-source KFP refuses (resolver executors).
and TFX's container entrypoint, tensorflow/tfx tfx/orchestration/kubeflow/v2/container/
kubeflow_v2_run_executor.py (+ kubeflow_v2_entrypoint_utils.py), which parses that ExecutorInput.

It refuses, with a one-line reason and before running anything, what it cannot reproduce faithfully:
see `refusal` and kubeflow/README.md.
"""

import concurrent.futures
import copy
import dataclasses
import hashlib
import json
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from typing import Any, Dict, List, Mapping, Optional

import numpy

PLACEHOLDER = re.compile(r"\{\{\$[^}]*\}\}")
EXECUTOR_INPUT_PLACEHOLDER = "{{$}}"
PYTHON_COMMANDS = ("python", "python3")
STORE_DIR = ".local-kfp"  # under the pipeline root: the artifact ids and the cache (KFP keeps them in MLMD)


class SpecNotSupported(ValueError):
    """A spec feature this executor cannot run as KFP would; the message is the one-line reason."""


class TaskFailed(RuntimeError):
    """A task's container exited with an error (the message names the task and its log)."""


@dataclasses.dataclass
class TaskExecution:
    """What one task got and produced: its ExecutorInput, its recorded output artifacts, whether cached."""

    name: str
    executor_input: Dict[str, Any]
    artifacts: Dict[str, Dict[str, Any]]  # output key -> RuntimeArtifact JSON, as downstream tasks get it
    parameters: Dict[str, Any]  # output parameter values
    cached: bool
    log_path: str = ""
    seconds: float = 0.0  # wall time
    cpu_seconds: float = 0.0  # user + system time of the container's process


@dataclasses.dataclass
class Container:
    """How a container task runs here: this interpreter for the image's `python`, the project as its WORKDIR."""

    project_dir: str  # the checkout standing in for the image's copy of it
    image_project_dir: str  # where the image has it (kubeflow/Dockerfile WORKDIR)
    image_tag: str  # the tag of the image the checkout stands in for (its code: kubeflow/image.py)
    python: str = sys.executable

    def stands_in_for(self, image: str) -> bool:
        name, _, tag = image.rpartition(":")
        return bool(name) and "/" not in tag and tag == self.image_tag

    def host_path(self, value: str) -> str:
        """A path the image holds (under its WORKDIR) as found in the checkout; other values unchanged."""
        if value == self.image_project_dir or value.startswith(self.image_project_dir + "/"):
            return self.project_dir + value[len(self.image_project_dir) :]
        return value

    def environment(self) -> Dict[str, str]:
        """The image installs the project editable (`pip install -e .`): its packages import from WORKDIR."""
        paths = [self.project_dir] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        return dict(os.environ, PYTHONPATH=os.pathsep.join(dict.fromkeys(paths)))


def refusal(spec: Dict[str, Any]) -> Optional[str]:
    """Why this executor cannot run the spec as KFP would, or None.

    Refused: importer nodes (KFP's importer launcher registers an external URI in its metadata store;
    there is none here), resolver executors (TFX Resolvers such as the latest blessed model: open-source
    KFP rejects them, compiler/argocompiler/dag.go "resolver executors not implemented"; Vertex AI answers
    them from its own metadata store), conditions (`triggerPolicy`, e.g. dsl.Condition on a blessing),
    loops (`iterator`), nested DAGs and exit handlers, containers that do not run Python, and
    placeholders the launcher does not substitute (pipeline-job and task-status values).
    """
    executors = spec["deploymentSpec"].get("executors", {})
    components = spec.get("components", {})
    for name, task in spec["root"]["dag"].get("tasks", {}).items():
        component = components.get(task.get("componentRef", {}).get("name"), {})
        executor = executors.get(component.get("executorLabel"), {})
        if "dag" in component:
            return f"task {name}: nested DAGs and exit handlers are not supported"
        if "triggerPolicy" in task:
            return f"task {name}: conditions (triggerPolicy, dsl.Condition) are not supported"
        if "iterator" in task or "parameterIterator" in task or "artifactIterator" in task:
            return f"task {name}: loops (ParallelFor iterators) are not supported"
        if "importer" in executor:
            return f"task {name}: importer nodes need KFP's metadata store to register the imported URI"
        if "resolver" in executor:
            return (
                f"task {name}: resolver executors (TFX Resolver) are not run by open-source KFP "
                "(argocompiler: 'resolver executors not implemented'), only by Vertex AI's metadata store"
            )
        if "container" not in executor:
            return f"task {name}: executor kind {sorted(executor) or 'missing'} is not supported"
        container = executor["container"]
        command = container.get("command", [])
        if not command or command[0] not in PYTHON_COMMANDS:
            return f"task {name}: its container runs {command[:1] or 'the image entrypoint'}, not Python"
        for text in command + container.get("args", []):
            for placeholder in PLACEHOLDER.findall(text):
                if not _known_placeholder(placeholder):
                    return f"task {name}: placeholder {placeholder} is not one KFP's launcher substitutes here"
        for key, source in task.get("inputs", {}).get("parameters", {}).items():
            if not {"componentInputParameter", "runtimeValue", "taskOutputParameter"} & set(source):
                return f"task {name}: input parameter {key} comes from {sorted(source)}, which is not supported"
        for key, source in task.get("inputs", {}).get("artifacts", {}).items():
            if "taskOutputArtifact" not in source:
                return f"task {name}: input artifact {key} comes from {sorted(source)}, which is not supported"
    return None


def _known_placeholder(placeholder: str) -> bool:
    return placeholder == EXECUTOR_INPUT_PLACEHOLDER or bool(
        re.fullmatch(
            r"\{\{\$\.(inputs\.parameters\['[^']+'\]|(inputs|outputs)\.artifacts\['[^']+'\]\.(uri|path)"
            r"|outputs\.parameters\['[^']+'\]\.output_file)\}\}",
            placeholder,
        )
    )


def execution_order(tasks: Mapping[str, Dict[str, Any]]) -> List[str]:
    """Task names, each after every task it depends on (dependentTasks and input producers)."""
    upstream = {name: _upstream(task) for name, task in tasks.items()}
    for name, names in upstream.items():
        unknown = names - set(tasks)
        if unknown:
            raise SpecNotSupported(f"task {name} depends on unknown task(s) {sorted(unknown)}")
    order: List[str] = []
    while len(order) < len(tasks):
        ready = sorted(n for n in tasks if n not in order and upstream[n] <= set(order))
        if not ready:
            raise SpecNotSupported(f"tasks {sorted(set(tasks) - set(order))} depend on each other in a cycle")
        order.extend(ready)
    return order


def _upstream(task: Dict[str, Any]) -> set:
    inputs = task.get("inputs", {})
    producers = {
        source[kind]["producerTask"]
        for kinds in ("artifacts", "parameters")
        for source in inputs.get(kinds, {}).values()
        for kind in ("taskOutputArtifact", "taskOutputParameter")
        if kind in source
    }
    return set(task.get("dependentTasks", [])) | producers


def runtime_parameters(spec: Dict[str, Any], given: Mapping[str, Any]) -> Dict[str, Any]:
    """The run's parameters: given values over the spec's defaults, checked against their declared types."""
    declared = spec["root"].get("inputDefinitions", {}).get("parameters", {})
    unknown = set(given) - set(declared)
    if unknown:
        raise ValueError(f"unknown runtime parameter(s) {sorted(unknown)}; the spec has {sorted(declared)}")
    values = {}
    for name, definition in declared.items():
        if name in given:
            values[name] = given[name]
        elif "defaultValue" in definition:
            values[name] = definition["defaultValue"]
        elif not definition.get("isOptional"):
            raise ValueError(f"runtime parameter {name} has no value and no default")
        else:
            continue
        expected = {
            "STRING": str,
            "BOOLEAN": bool,
            "NUMBER_INTEGER": (int, float),
            "NUMBER_DOUBLE": (int, float),
            "LIST": list,
            "STRUCT": dict,
        }.get(definition.get("parameterType"), object)
        if not isinstance(values[name], expected):
            raise ValueError(
                f"runtime parameter {name} must be {definition['parameterType']}, got {type(values[name]).__name__}"
            )
    return values


class _Store:
    """Artifact ids and the cache, kept under the pipeline root (KFP keeps them in MLMD and its database)."""

    def __init__(self, pipeline_root: str, pipeline_name: str):
        self.path = os.path.join(pipeline_root, STORE_DIR, f"{pipeline_name}.json")
        self.lock = threading.Lock()
        if os.path.exists(self.path):
            with open(self.path, encoding="utf-8") as f:
                self.data = json.load(f)
        else:
            self.data = {"last_artifact_id": 0, "cache": {}}

    def new_artifact_id(self) -> str:
        with self.lock:
            self.data["last_artifact_id"] += 1
            return str(self.data["last_artifact_id"])

    def cached(self, fingerprint: str) -> Optional[Dict[str, Any]]:
        with self.lock:
            return copy.deepcopy(self.data["cache"].get(fingerprint))

    def remember(self, fingerprint: str, outputs: Dict[str, Any]) -> None:
        with self.lock:
            self.data["cache"][fingerprint] = outputs
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            with open(self.path + ".tmp", "w", encoding="utf-8") as f:
                json.dump(self.data, f, indent=1, sort_keys=True)
            os.replace(self.path + ".tmp", self.path)


def cache_fingerprint(executor_input: Dict[str, Any], container: Dict[str, Any]) -> str:
    """KFP's cache key (cacheutils/cache.go GenerateCacheKey) hashed: what the task reads and runs."""
    inputs, outputs = executor_input["inputs"], executor_input["outputs"]
    key = {
        "inputArtifactNames": {
            k: {"artifactNames": [a["name"] for a in v["artifacts"]]} for k, v in inputs.get("artifacts", {}).items()
        },
        "inputParameterValues": inputs.get("parameterValues", {}),
        "outputArtifactsSpec": {
            k: {
                f: v["artifacts"][0].get(f)
                for f in ("name", "type", "metadata")
                if v["artifacts"][0].get(f) is not None
            }
            for k, v in outputs.get("artifacts", {}).items()
        },
        "outputParametersSpec": sorted(outputs.get("parameters", {})),
        "containerSpec": {
            "image": container.get("image", ""),
            "cmdArgs": container.get("command", []) + container.get("args", []),
        },
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def substitute(texts: List[str], executor_input: Dict[str, Any]) -> List[str]:
    """launcher_v2.go compileCmdAndArgs: `{{$}}` becomes the ExecutorInput JSON, then each placeholder
    its value (numbers formatted like Go's FormatFloat 'f' -1, lists and dicts as JSON)."""
    inputs, outputs = executor_input["inputs"], executor_input["outputs"]
    values = {
        f"{{{{$.inputs.parameters['{k}']}}}}": _parameter_text(v) for k, v in inputs.get("parameterValues", {}).items()
    }
    for direction, artifacts in (("inputs", inputs.get("artifacts", {})), ("outputs", outputs.get("artifacts", {}))):
        for key, listed in artifacts.items():
            if listed["artifacts"]:
                uri = listed["artifacts"][0]["uri"]
                values[f"{{{{$.{direction}.artifacts['{key}'].uri}}}}"] = uri
                values[f"{{{{$.{direction}.artifacts['{key}'].path}}}}"] = uri  # a local root: the path is the URI
    for key, parameter in outputs.get("parameters", {}).items():
        values[f"{{{{$.outputs.parameters['{key}'].output_file}}}}"] = parameter["outputFile"]
    executor_input_json = json.dumps(executor_input)
    result = []
    for text in texts:
        text = text.replace(EXECUTOR_INPUT_PLACEHOLDER, executor_input_json)
        for placeholder, value in values.items():
            text = text.replace(placeholder, value)
        result.append(text)
    return result


def _parameter_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return numpy.format_float_positional(float(value), trim="-")
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


class LocalPipelineRun:
    """One run of a compiled spec against a local pipeline root."""

    def __init__(
        self,
        spec: Dict[str, Any],
        container: Container,
        pipeline_root: str = "",
        parameters: Optional[Mapping[str, Any]] = None,
        parallelism: int = 2,
        run_id: str = "",
    ):
        reason = refusal(spec)
        if reason:
            raise SpecNotSupported(reason)
        self.spec = spec
        self.container = container
        self.pipeline_root = (pipeline_root or spec.get("defaultPipelineRoot", "")).rstrip("/")
        if not self.pipeline_root or "://" in self.pipeline_root:
            raise SpecNotSupported(f"pipeline root {self.pipeline_root!r}: this executor needs a local directory")
        self.pipeline_name = spec["pipelineInfo"]["name"]
        self.parameters = runtime_parameters(spec, parameters or {})
        self.tasks = spec["root"]["dag"]["tasks"]
        for name in self.tasks:
            image = self._container(name).get("image", "")
            if not container.stands_in_for(image):
                raise SpecNotSupported(
                    f"task {name} runs image {image!r}; this checkout stands in for tag "
                    f"{container.image_tag} only (`pneumonia image-tag`)"
                )
        self.order = execution_order(self.tasks)
        self.parallelism = parallelism
        self.run_id = run_id or uuid.uuid4().hex
        # metadata/client.go GetPipeline: the run's root is <pipeline root>/<pipeline name>/<run id>.
        self.run_root = f"{self.pipeline_root}/{self.pipeline_name}/{self.run_id}"
        self.store = _Store(self.pipeline_root, self.pipeline_name)
        self.executions: Dict[str, TaskExecution] = {}

    def run(self) -> Dict[str, TaskExecution]:
        """Runs every task once its upstream tasks succeeded; stops at the first failure, as KFP does."""
        pending = list(self.order)
        with concurrent.futures.ThreadPoolExecutor(max_workers=self.parallelism) as pool:
            running: Dict[concurrent.futures.Future, str] = {}
            failure: Optional[BaseException] = None
            while (pending and failure is None) or running:
                if failure is None:
                    for name in [n for n in pending if _upstream(self.tasks[n]) <= set(self.executions)]:
                        if len(running) >= self.parallelism:
                            break
                        pending.remove(name)
                        running[pool.submit(self._run_task, name)] = name
                done, _ = concurrent.futures.wait(running, return_when=concurrent.futures.FIRST_COMPLETED)
                for future in done:
                    name = running.pop(future)
                    if future.exception() is not None:
                        failure = failure or future.exception()
                    else:
                        self.executions[name] = future.result()
            if failure is not None:
                raise failure
        return self.executions

    def _component(self, task_name: str) -> Dict[str, Any]:
        return self.spec["components"][self.tasks[task_name]["componentRef"]["name"]]

    def _container(self, task_name: str) -> Dict[str, Any]:
        return self.spec["deploymentSpec"]["executors"][self._component(task_name)["executorLabel"]]["container"]

    def executor_input(self, task_name: str) -> Dict[str, Any]:
        """driver/container.go + driver.go provisionOutputs + launcher_v2.go addDefaultParams."""
        task, component = self.tasks[task_name], self._component(task_name)
        parameter_values = {}
        for key, source in task.get("inputs", {}).get("parameters", {}).items():
            if "componentInputParameter" in source:
                value = self.parameters[source["componentInputParameter"]]
            elif "runtimeValue" in source:
                value = source["runtimeValue"]["constant"]
            else:
                producer = source["taskOutputParameter"]
                value = self.executions[producer["producerTask"]].parameters[producer["outputParameterKey"]]
            parameter_values[key] = self.container.host_path(value) if isinstance(value, str) else value
        for key, definition in component.get("inputDefinitions", {}).get("parameters", {}).items():
            if key not in parameter_values and "defaultValue" in definition:
                parameter_values[key] = definition["defaultValue"]
        artifacts = {}
        for key, source in task.get("inputs", {}).get("artifacts", {}).items():
            producer = source["taskOutputArtifact"]
            artifacts[key] = {
                "artifacts": [self.executions[producer["producerTask"]].artifacts[producer["outputArtifactKey"]]]
            }
        task_root = f"{self.run_root}/{task_name}/{uuid.uuid4()}"
        outputs = component.get("outputDefinitions", {})
        output_artifacts = {
            key: {
                "artifacts": [
                    dict(
                        {"name": key, "type": definition["artifactType"], "uri": f"{task_root}/{key}"},
                        **({"metadata": definition["metadata"]} if "metadata" in definition else {}),
                    )
                ]
            }
            for key, definition in outputs.get("artifacts", {}).items()
        }
        output_parameters = {
            key: {"outputFile": f"{task_root}/parameters/{key}"} for key in outputs.get("parameters", {})
        }
        return {
            "inputs": {"parameterValues": parameter_values, "artifacts": artifacts},
            "outputs": {
                "artifacts": output_artifacts,
                "parameters": output_parameters,
                "outputFile": f"{task_root}/output_metadata.json",
            },
        }

    def _run_task(self, task_name: str) -> TaskExecution:
        executor_input = self.executor_input(task_name)
        container = self._container(task_name)
        fingerprint = cache_fingerprint(executor_input, container)
        if self.tasks[task_name].get("cachingOptions", {}).get("enableCache"):
            cached = self.store.cached(fingerprint)
            if cached is not None:
                return TaskExecution(task_name, executor_input, cached["artifacts"], cached["parameters"], cached=True)
        task_root = os.path.dirname(executor_input["outputs"]["outputFile"])
        os.makedirs(task_root)
        for listed in executor_input["outputs"]["artifacts"].values():  # launcher_v2.go prepareOutputFolders
            os.makedirs(os.path.dirname(listed["artifacts"][0]["uri"]), exist_ok=True)
        command = substitute(container["command"] + container.get("args", []), executor_input)
        command[0] = self.container.python
        log_path = os.path.join(task_root, "executor.log")
        started = time.monotonic()
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                command,
                cwd=self.container.project_dir,
                env=self.container.environment(),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            _, status, usage = os.wait4(process.pid, 0)  # the container's own CPU time, whatever else runs
            process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode != 0:
            raise TaskFailed(
                f"task {task_name} failed (exit code {process.returncode}): {_last_line(log_path)}; log: {log_path}"
            )
        outputs = self._record_outputs(executor_input, _read_executor_output(executor_input["outputs"]["outputFile"]))
        if self.tasks[task_name].get("cachingOptions", {}).get("enableCache"):
            self.store.remember(fingerprint, outputs)
        return TaskExecution(
            task_name,
            executor_input,
            outputs["artifacts"],
            outputs["parameters"],
            cached=False,
            log_path=log_path,
            seconds=time.monotonic() - started,
            cpu_seconds=usage.ru_utime + usage.ru_stime,
        )

    def _record_outputs(self, executor_input: Dict[str, Any], executor_output: Dict[str, Any]) -> Dict[str, Any]:
        """launcher_v2.go mergeRuntimeArtifacts + RecordArtifact, then converter.go toRuntimeArtifact."""
        recorded: Dict[str, Any] = {"artifacts": {}, "parameters": executor_output.get("parameterValues", {})}
        for key, listed in executor_input["outputs"]["artifacts"].items():
            artifact = copy.deepcopy(listed["artifacts"][0])
            produced = executor_output.get("artifacts", {}).get(key, {}).get("artifacts", [])
            if produced:
                artifact["uri"] = produced[0].get("uri") or artifact["uri"]
                artifact["metadata"] = dict(artifact.get("metadata", {}), **produced[0].get("metadata", {}))
            metadata = dict(artifact.get("metadata", {}))
            metadata.setdefault("display_name", key)
            recorded["artifacts"][key] = {
                "name": self.store.new_artifact_id(),
                "type": artifact["type"],
                "uri": artifact["uri"],
                "metadata": metadata,
            }
        return recorded


def _read_executor_output(path: str) -> Dict[str, Any]:
    """launcher_v2.go getExecutorOutputFile: a missing file is an empty ExecutorOutput."""
    if not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _last_line(log_path: str) -> str:
    with open(log_path, "rb") as f:
        lines = [line.strip() for line in f.read().decode(errors="replace").splitlines() if line.strip()]
    return lines[-1] if lines else "no output"
