"""Rollback and Triton's version_policy: a rollback to a version Triton would not load widens the policy."""

from __future__ import annotations

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from retraining.cli import rollback_main
from retraining.versions import roll_back, set_specific_versions, triton_loaded_versions
from serving.repository import CONFIG_FILE, ModelMetadata, ModelRepository, RepositoryError

CONFIG = 'name: "seg"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 4\n{policy}\ndynamic_batching {{ }}\n'


def _publish(repo: ModelRepository, count: int, policy: str) -> None:
    def populate(staging):
        (staging / "model.onnx").write_bytes(b"x")
        return ModelMetadata(name="seg", version=0, arch="psp", layers=18, dataset="synthetic", classes=["a", "b"],
                             palette=[[0, 0, 0], [9, 9, 9]], crop_h=33, crop_w=33, mean=[0, 0, 0], std=[1, 1, 1])

    for _ in range(count):
        repo.publish_version("seg", populate, {CONFIG_FILE: CONFIG.format(policy=policy)})


def parse(text: str) -> model_config_pb2.ModelConfig:
    return text_format.Parse(text, model_config_pb2.ModelConfig())


@pytest.mark.parametrize(("policy", "loaded"), [
    ("version_policy: { latest: { num_versions: 2 } }", [3, 4]),
    ("version_policy { latest { num_versions: 1 } }", [4]),
    ("version_policy: { all: { } }", [1, 2, 3, 4]),
    ("version_policy: { specific: { versions: [ 1, 3 ] } }", [1, 3]),
    ("version_policy { specific { versions: 2 versions: 4 } }", [2, 4]),
    ("", [4]),  # Triton's default: the newest only
])
def test_which_versions_triton_loads(policy, loaded):
    text = CONFIG.format(policy=policy)
    if policy:
        parse(text)  # the forms are Triton's own
    assert triton_loaded_versions(text, [1, 2, 3, 4]) == loaded


def test_a_policy_that_cannot_be_read_is_an_error_not_a_guess():
    with pytest.raises(RepositoryError, match="cannot read its version_policy"):
        triton_loaded_versions("version_policy: { newest: { n: 2 } }", [1, 2])


def test_specific_versions_are_valid_for_triton():
    text = set_specific_versions(CONFIG.format(policy="version_policy: { latest: { num_versions: 2 } }"), [4, 1])
    assert list(parse(text).version_policy.specific.versions) == [1, 4]
    assert text.count("version_policy") == 1 and "dynamic_batching" in text


def test_rollback_outside_the_policy_widens_it_and_inside_leaves_it(tmp_path):
    repo = ModelRepository(tmp_path)
    _publish(repo, 4, "version_policy: { latest: { num_versions: 2 } }")
    config = tmp_path / "seg" / CONFIG_FILE
    before = config.read_text()
    assert roll_back(repo, "seg").widened_policy is None  # to 3: Triton has it loaded already
    assert config.read_text() == before and repo.served_version("seg") == 3
    done = roll_back(repo, "seg", to=1)
    assert (done.version, done.widened_policy) == (1, [1, 3, 4])
    assert list(parse(config.read_text()).version_policy.specific.versions) == [1, 3, 4]
    assert repo.served_version("seg") == 1
    # The next publish writes export's policy again and removes the pin.
    _publish(repo, 1, "version_policy: { latest: { num_versions: 2 } }")
    assert parse(config.read_text()).version_policy.latest.num_versions == 2
    assert repo.served_version("seg") == 5 and repo.pinned_version("seg") is None


def test_rollback_counts_version_directories_as_triton_does(tmp_path):
    """A broken version directory is not a version for the gateway, but Triton counts it in `latest`."""
    repo = ModelRepository(tmp_path)
    _publish(repo, 3, "version_policy: { latest: { num_versions: 2 } }")
    (tmp_path / "seg" / "4").mkdir()  # half-written: Triton would try to load 3 and 4
    assert roll_back(repo, "seg", to=2).widened_policy == [2, 3, 4]


def test_rollback_command_says_it_widened_the_policy(tmp_path, capsys):
    repo = ModelRepository(tmp_path)
    _publish(repo, 3, "version_policy: { latest: { num_versions: 1 } }")
    assert rollback_main(["--name", "seg", "--to", "1", "--repository", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "now serving version 1" in out and "it now loads versions [1, 3]" in out
    assert rollback_main(["--name", "seg", "--to", "7", "--repository", str(tmp_path)]) == 1
    assert "has no version 7" in capsys.readouterr().err
