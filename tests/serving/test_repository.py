"""The model repository contract: names, versions, atomic publishing, the lock."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from serving.repository import (
    LOCK_FILE,
    METADATA_FILE,
    ModelMetadata,
    ModelNotFoundError,
    ModelRepository,
    RepositoryError,
    publish_lock,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


def _metadata(**overrides) -> ModelMetadata:
    fields = dict(
        name="m", version=0, arch="psp", layers=18, dataset="synthetic", classes=["a", "b"],
        palette=[[0, 0, 0], [255, 0, 0]], crop_h=65, crop_w=65, mean=[1.0, 2.0, 3.0], std=[1.0, 1.0, 1.0],
    )
    fields.update(overrides)
    return ModelMetadata(**fields)


def _populate(staging):
    (staging / "model.onnx").write_bytes(b"onnx")
    return _metadata()


def test_publish_numbers_versions_and_never_overwrites(tmp_path):
    repo = ModelRepository(tmp_path)
    assert repo.publish_version("seg", _populate, {"labels.txt": "a\nb\n"})[0] == 1
    assert repo.publish_version("seg", _populate)[0] == 2
    assert repo.list_versions("seg") == [1, 2]
    assert repo.list_models() == ["seg"]
    assert (tmp_path / "seg" / "labels.txt").read_text() == "a\nb\n"
    with pytest.raises(RepositoryError, match="already exists"):
        repo.publish_version("seg", _populate, version=2)
    assert repo.publish_version("seg", _populate, version=7)[0] == 7
    assert repo.publish_version("seg", _populate)[0] == 8
    meta = repo.read_metadata("seg")
    assert (meta.name, meta.version) == ("seg", 8)


def test_failed_populate_leaves_nothing_visible(tmp_path):
    repo = ModelRepository(tmp_path)
    repo.publish_version("seg", _populate)

    def broken(staging):
        (staging / "model.onnx").write_bytes(b"half")
        raise RuntimeError("exporter died")

    with pytest.raises(RuntimeError, match="exporter died"):
        repo.publish_version("seg", broken)
    assert repo.list_versions("seg") == [1]
    assert sorted(p.name for p in (tmp_path / "seg").iterdir()) == [LOCK_FILE, "1"]  # no staging left


@pytest.mark.parametrize("change", [{"precision": "fp16"}, {"crop_h": 97}, {"max_batch_size": 4},
                                    {"output_hw": [9, 9]}, {"classes": ["a", "b", "c"], "palette": [[0, 0, 0]] * 3}])
def test_a_version_that_changes_the_shared_tensor_contract_is_refused(tmp_path, change):
    """Triton reads one config.pbtxt for all versions: they must share tensor names, shapes and types."""
    repo = ModelRepository(tmp_path)
    repo.publish_version("seg", _populate, {"config.pbtxt": "v1 config\n"})

    def different(staging):
        (staging / "model.onnx").write_bytes(b"onnx")
        return _metadata(**change)

    with pytest.raises(RepositoryError, match=f"changes the tensor contract.*{next(iter(change))}"):
        repo.publish_version("seg", different, {"config.pbtxt": "v2 config\n"})
    assert repo.list_versions("seg") == [1]
    assert (tmp_path / "seg" / "config.pbtxt").read_text() == "v1 config\n"  # untouched
    assert repo.publish_version("seg_variant", different)[0] == 1  # fine as a model of its own
    # Everything else (weights, metrics, scales, checkpoint) may change between versions.
    assert repo.publish_version("seg", lambda st: _populate(st) and _metadata(test_scales=[0.5, 1.0],
                                                                               metrics={"mIoU": 0.5}))[0] == 2


def test_invalid_metadata_is_refused(tmp_path):
    repo = ModelRepository(tmp_path)
    with pytest.raises(RepositoryError, match="palette has 1 colours for 2 classes"):
        repo.publish_version("seg", lambda s: _metadata(palette=[[0, 0, 0]]))
    assert repo.list_versions("seg") == []


def test_incomplete_version_directory_is_not_a_version(tmp_path):
    repo = ModelRepository(tmp_path)
    repo.publish_version("seg", _populate)
    (tmp_path / "seg" / "2").mkdir()  # e.g. copied by hand, no metadata
    assert repo.list_versions("seg") == [1]
    assert repo.served_version("seg") == 1
    assert repo.next_version("seg") == 3  # the number is still taken


@pytest.mark.parametrize("name", ["../x", "a/b", ".hidden", "", "x" * 200, "a..b", "/etc", "a b"])
def test_unsafe_names_are_refused(tmp_path, name):
    with pytest.raises(RepositoryError, match="invalid model name"):
        ModelRepository(tmp_path).model_dir(name)


def test_pinned_version_wins_until_unpinned(tmp_path):
    repo = ModelRepository(tmp_path)
    for _ in range(3):
        repo.publish_version("seg", _populate)
    repo.set_pinned_version("seg", 2)
    assert repo.served_version("seg") == 2
    with pytest.raises(ModelNotFoundError):
        repo.set_pinned_version("seg", 9)
    repo.set_pinned_version("seg", None)
    assert repo.served_version("seg") == 3


def test_repository_path_that_is_a_file(tmp_path):
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(RepositoryError, match="is a file"):
        ModelRepository(path).publish_version("seg", _populate)


def test_metadata_round_trip_and_missing_fields(tmp_path):
    repo = ModelRepository(tmp_path)
    repo.publish_version("seg", _populate)
    data = json.loads((tmp_path / "seg" / "1" / METADATA_FILE).read_text())
    assert ModelMetadata.from_dict(data).to_dict() == data
    del data["classes"]
    with pytest.raises(RepositoryError, match="missing required field.*classes"):
        ModelMetadata.from_dict(data)


def _publish_many(root, count, out):
    repo = ModelRepository(root)
    out.put([repo.publish_version("seg", _populate)[0] for _ in range(count)])


def test_concurrent_publishers_never_share_a_version(tmp_path):
    queue = mp.get_context("fork").Queue()
    procs = [mp.get_context("fork").Process(target=_publish_many, args=(tmp_path, 5, queue)) for _ in range(3)]
    for proc in procs:
        proc.start()
    numbers = sum((queue.get(timeout=60) for _ in procs), [])
    for proc in procs:
        proc.join(timeout=60)
    assert sorted(numbers) == list(range(1, 16))
    assert ModelRepository(tmp_path).list_versions("seg") == list(range(1, 16))


HOLD_LOCK = """
import sys, time
from pathlib import Path
from serving.repository import ModelRepository
repo = ModelRepository(sys.argv[1])
with repo.publish_lock("seg"):
    Path(sys.argv[2]).write_text("held")
    time.sleep(600)
"""


def _hold_lock_in_a_process(root, tmp_path) -> subprocess.Popen:
    """A real process that takes the publish lock of `seg` and holds it until it is killed."""
    marker = tmp_path / "held"
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    process = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(root), str(marker)], cwd=REPO_ROOT, env=env,
                               stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not marker.exists():
        assert process.poll() is None, process.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "the lock holder never took the lock"
        time.sleep(0.05)
    return process


def test_a_publisher_killed_by_sigkill_never_blocks_the_next_one(tmp_path):
    repo = ModelRepository(tmp_path / "repo")
    repo.publish_version("seg", _populate)
    holder = _hold_lock_in_a_process(repo.root, tmp_path)
    try:
        # Held: publishing and pinning wait, then fail naming the lock.
        with pytest.raises(RepositoryError, match="could not take the publish lock"):
            repo.publish_version("seg", _populate, lock_timeout=0.5)
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=30)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    assert holder.returncode == -signal.SIGKILL
    assert (repo.root / "seg" / LOCK_FILE).exists()  # the file stays; the kernel dropped the lock
    started = time.monotonic()
    assert repo.publish_version("seg", _populate, lock_timeout=5)[0] == 2
    assert time.monotonic() - started < 2


def test_a_lock_file_left_by_another_host_means_nothing(tmp_path):
    """Compose gives each run a new host name: what a killed publisher on another host left is no lock."""
    repo = ModelRepository(tmp_path)
    repo.publish_version("seg", _populate)
    (tmp_path / "seg" / LOCK_FILE).write_text(f"container-4f2a 1 {time.time():.3f}\n")
    started = time.monotonic()
    assert repo.publish_version("seg", _populate, lock_timeout=5)[0] == 2
    assert time.monotonic() - started < 2


def test_a_held_lock_times_out_with_a_clear_error_and_is_reentrant_in_its_thread(tmp_path):
    lock = tmp_path / LOCK_FILE
    with publish_lock(lock, timeout=1):
        with publish_lock(lock, timeout=1):  # the same thread again: set_pinned_version inside a publish
            pass
        failures = []

        def other_thread():
            try:
                with publish_lock(lock, timeout=0.3):
                    failures.append("taken twice")
            except RepositoryError as exc:
                failures.append(str(exc))

        thread = threading.Thread(target=other_thread)
        thread.start()
        thread.join(10)
        assert len(failures) == 1 and "could not take the publish lock" in failures[0]
    with publish_lock(lock, timeout=1):  # released
        pass


def test_removing_a_pin_waits_for_the_lock(tmp_path):
    """A rollback pin is written and removed under the publish lock, never beside a running publish."""
    repo = ModelRepository(tmp_path / "repo")
    for _ in range(2):
        repo.publish_version("seg", _populate)
    repo.set_pinned_version("seg", 1)
    holder = _hold_lock_in_a_process(repo.root, tmp_path)
    try:
        with pytest.raises(RepositoryError, match="could not take the publish lock"):
            repo.set_pinned_version("seg", None, lock_timeout=0.5)
        with pytest.raises(RepositoryError, match="could not take the publish lock"):
            repo.set_pinned_version("seg", 2, lock_timeout=0.5)
        assert repo.pinned_version("seg") == 1
    finally:
        holder.kill()
        holder.wait()
    repo.set_pinned_version("seg", None, lock_timeout=5)
    assert repo.pinned_version("seg") is None and repo.served_version("seg") == 2


def test_publishing_removes_a_rollback_pin_in_the_same_hold_of_the_lock(tmp_path):
    repo = ModelRepository(tmp_path)
    for _ in range(2):
        repo.publish_version("seg", _populate)
    repo.set_pinned_version("seg", 1)
    assert repo.served_version("seg") == 1
    assert repo.publish_version("seg", _populate)[0] == 3
    assert repo.pinned_version("seg") is None and repo.served_version("seg") == 3
    repo.set_pinned_version("seg", 2)
    assert repo.publish_version("seg", _populate, unpin=False)[0] == 4
    assert repo.served_version("seg") == 2
