"""kubeflow/Dockerfile, read statically (docker cannot run here): the Makefile's pinned install, Python 3.10,
the project where compiled paths point, a non-root user, and no secrets."""

import os
import re
import shlex

from kubeflow.parameters import IMAGE_PROJECT_DIR

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read(*path: str) -> str:
    with open(os.path.join(REPO, *path), encoding="utf-8") as f:
        return f.read()


def instructions(dockerfile: str):
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines = [line for line in dockerfile.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    return [tuple(line.strip().split(None, 1)) for line in joined.splitlines() if line.strip()]


def pip_installs(commands) -> list:
    """Each `pip install` as its sorted arguments, without -q and the venv prefix."""
    installs = []
    for command in commands:
        for part in command.split("&&"):
            words = [w for w in shlex.split(part.replace("$(VENV)/bin/", "")) if w != "-q"]
            if words[:2] == ["pip", "install"]:
                installs.append(sorted(words[2:]))
    return installs


def test_installs_exactly_as_the_makefile_does():
    makefile_installs = pip_installs(line for line in read("Makefile").splitlines() if "pip install" in line)
    docker = instructions(read("kubeflow", "Dockerfile"))
    docker_installs = pip_installs(arguments for name, arguments in docker if name == "RUN")
    assert any("requirements.txt" in install for install in makefile_installs)
    assert docker_installs == makefile_installs
    copied = " ".join(arguments for name, arguments in docker if name == "COPY")
    assert "requirements.txt" in copied and "constraints.txt" in copied


def test_python_310_project_dir_and_non_root_user():
    docker = instructions(read("kubeflow", "Dockerfile"))
    (base,) = [arguments for name, arguments in docker if name == "FROM"]
    assert base.startswith("python:3.10")
    assert ("WORKDIR", IMAGE_PROJECT_DIR) in docker
    users = [arguments.split(":")[0] for name, arguments in docker if name == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert [name for name, _ in docker].index("USER") > max(i for i, (name, _) in enumerate(docker) if name == "RUN")


def test_no_secrets_baked_in():
    docker = instructions(read("kubeflow", "Dockerfile"))
    settings = " ".join(arguments for name, arguments in docker if name in ("ENV", "ARG"))
    assert not re.search(r"(TOKEN|SECRET|PASSWORD|CREDENTIAL|API_KEY|ACCESS_KEY)", settings, re.IGNORECASE)
    ignored = read("kubeflow", "Dockerfile.dockerignore").splitlines()
    assert {".git", ".venv", "**/.env"} <= set(ignored)
