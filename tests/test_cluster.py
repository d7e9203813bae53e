"""Several machines: TF_CONFIG checked, the workers' meeting bounded and answering signals, a lost worker named;
worker processes on 127.0.0.1 train to identical weights."""

import json
import os
import re
import signal
import socket
import subprocess
import threading
import time

import keras
import numpy as np
import pytest

from keras_pspnet.cluster import ClusterError, rendezvous, tf_config
from tests.test_train import ENV, TINY, latest_step, pspnet


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_tf_config_that_is_not_json_or_names_no_task_is_named(monkeypatch):
    for text, message in [("{cluster: [", "TF_CONFIG is not JSON"),
                          ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "chief", "index": 0}}',
                           'TF_CONFIG: "task" must name a job of the cluster'),
                          ('{"cluster": {"worker": ["nohost"]}, "task": {"type": "worker", "index": 0}}',
                           'TF_CONFIG: "cluster" must map jobs to lists of "host:port"')]:
        monkeypatch.setenv("TF_CONFIG", text)
        with pytest.raises(ValueError, match=message):
            tf_config()


def test_a_waiting_worker_keeps_answering_however_often_it_is_probed():
    """Every worker probes the others twice a second while it waits: one that never accepted stopped answering once
    its accept queue filled (after ~65 probes), and a cluster of three started a minute apart never formed."""
    own, other = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    config = {"cluster": {"worker": [own, other]}, "task": {"type": "worker", "index": 0}}
    outcome = {}

    def wait():
        try:
            rendezvous(config, timeout=60, verbose=False)
            outcome["joined"] = True
        except ClusterError as error:
            outcome["error"] = str(error)

    waiting = threading.Thread(target=wait, daemon=True)
    waiting.start()
    host, port = own.split(":")
    answered = 0
    deadline = time.time() + 30
    while answered < 200 and time.time() < deadline:  # what the other workers' probes look like
        with socket.socket() as probe:
            probe.settimeout(2)
            answered += probe.connect_ex((host, int(port))) == 0
    assert answered == 200
    with socket.socket() as late:  # the other worker comes up: the wait ends
        late.bind(("127.0.0.1", int(other.split(":")[1])))
        late.listen(8)
        waiting.join(timeout=30)
    assert outcome == {"joined": True}


def test_a_silent_worker_is_named_after_the_timeout():
    own, other = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    config = {"cluster": {"worker": [own, other]}, "task": {"type": "worker", "index": 0}}
    with pytest.raises(ClusterError, match=rf"TF_CONFIG: worker 1 \({other}\) did not answer within 1 s"):
        rendezvous(config, timeout=1, verbose=False)


def worker(index, workers, run_dir, *settings, **popen):
    """`pspnet train` as worker `index` of a TF_CONFIG cluster of `workers`, started in the background."""
    tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
    overrides = [a for s in TINY + list(settings) for a in ("--set", s)]
    return subprocess.Popen(pspnet("train", "--out", run_dir, *overrides), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**ENV, "TF_CONFIG": json.dumps(tf_config)}, **popen)


def test_unreachable_workers_are_named_and_signals_are_honoured(tmp_path):
    """TensorFlow waited for an unreachable worker silently, forever, ignoring SIGTERM and SIGINT."""
    workers = [f"127.0.0.1:{free_port()}" for _ in range(2)]
    own = f"127.0.0.1:{free_port()}"
    started = time.time()
    alone = worker(0, workers, str(tmp_path / "a"), "cluster_timeout=3")
    waiting = worker(0, [own, workers[1]], str(tmp_path / "b"), "cluster_timeout=600")
    _, err = alone.communicate(timeout=120)
    assert alone.returncode == 2 and time.time() - started < 60
    assert err == f"pspnet: error: TF_CONFIG: worker 1 ({workers[1]}) did not answer within 3 s (cluster_timeout); " \
        "start every worker with its TF_CONFIG index, or correct the address, and run the same command again\n"
    host, port = own.split(":")
    while True:  # it waits for worker 1, listening on its own port so that worker 1 would see it
        assert waiting.poll() is None and time.time() - started < 120
        with socket.socket() as probe:
            if probe.connect_ex((host, int(port))) == 0:
                break
        time.sleep(0.2)
    waiting.send_signal(signal.SIGTERM)
    _, err = waiting.communicate(timeout=30)
    assert waiting.returncode == 130 and err.strip().splitlines()[-1] == (
        "pspnet: interrupted by SIGTERM (a run resumes from its last checkpoint when the same command runs again)")


def test_a_lost_worker_is_named_and_the_run_resumes(tmp_path):
    """The survivor of a killed worker says which one went and how to resume, in one line, within seconds."""
    workers = [f"127.0.0.1:{free_port()}" for _ in range(2)]
    run_dir = str(tmp_path / "run")
    processes = [worker(i, workers, run_dir, "steps=10000", "checkpoint_every=2", "log_every=10000") for i in (0, 1)]
    deadline = time.time() + 300
    while latest_step(os.path.join(run_dir, "checkpoints")) < 2:
        assert all(p.poll() is None for p in processes) and time.time() < deadline, processes[0].stderr.read()
        time.sleep(0.2)
    processes[1].kill()
    killed = time.time()
    _, err = processes[0].communicate(timeout=120)
    assert processes[0].returncode == 2 and time.time() - killed < 60
    assert re.fullmatch(rf"pspnet: error: worker 1 \({workers[1]}\) stopped answering at step \d+ "
                        r"\((Unavailable|DeadlineExceeded|Aborted|Cancelled)Error\); restart every worker with the "
                        r"same command: the run resumes from its last checkpoint \(ckpt-\d+\)\n", err), err
    processes[1].communicate()


def test_two_workers_finish_with_identical_weights(tmp_path):
    workers = [f"127.0.0.1:{free_port()}" for _ in range(2)]
    run_dir = str(tmp_path / "run")
    processes = [worker(index, workers, run_dir, "steps=3", "checkpoint_every=2") for index in range(2)]
    outputs = [p.communicate(timeout=600) for p in processes]
    assert [p.returncode for p in processes] == [0, 0], str(outputs)[-4000:]
    # the chief says what `distribute: auto` chose: the global batch of 4 over one replica per worker
    assert "MultiWorkerMirroredStrategy: 2 replicas on 2 workers, global batch 4 (2 per replica)" in outputs[0][0]
    assert "MultiWorkerMirroredStrategy" not in outputs[1][0]  # the other workers print nothing
    chief = keras.saving.load_model(os.path.join(run_dir, "final.keras")).get_weights()
    other = keras.saving.load_model(os.path.join(run_dir, "worker-1", "final.keras")).get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(chief, other))
    assert os.path.exists(os.path.join(run_dir, "checkpoints", "ckpt-2.index"))
