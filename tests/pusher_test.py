"""What the Pusher publishes (serving/repository.py): TF Serving layout, atomic versions, no second push of the
same model."""

import os

from serving import repository


def make_model(folder, content=b"graph"):
    os.makedirs(os.path.join(folder, "variables"))
    with open(os.path.join(folder, "saved_model.pb"), "wb") as f:
        f.write(content)
    with open(os.path.join(folder, "variables", "variables.index"), "wb") as f:
        f.write(b"index")
    return folder


def test_push_writes_a_complete_numbered_version(tmp_path):
    model = make_model(str(tmp_path / "model"))
    base = str(tmp_path / "serving" / "pneumonia")
    fingerprint = repository.model_fingerprint(model)
    version = repository.push_atomically(model, base, fingerprint, model)
    assert os.listdir(base) == [version]  # no staging folder left behind
    assert sorted(os.listdir(os.path.join(base, version))) == ["assets.extra", "saved_model.pb", "variables"]
    assert repository.latest_fingerprint(base) == fingerprint


def test_versions_increase_and_fingerprint_tracks_content(tmp_path):
    first = make_model(str(tmp_path / "a"))
    same = make_model(str(tmp_path / "b"))
    other = make_model(str(tmp_path / "c"), b"another graph")
    assert repository.model_fingerprint(first) == repository.model_fingerprint(same)
    assert repository.model_fingerprint(first) != repository.model_fingerprint(other)
    base = str(tmp_path / "serving")
    v1 = repository.push_atomically(first, base, repository.model_fingerprint(first), first)
    v2 = repository.push_atomically(other, base, repository.model_fingerprint(other), other)
    assert int(v2) > int(v1)
    assert repository.servable_versions(base) == [int(v1), int(v2)]
    assert repository.latest_fingerprint(base) == repository.model_fingerprint(other)
