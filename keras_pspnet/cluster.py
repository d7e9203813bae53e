"""Several machines: TF_CONFIG read and checked, the wait for the other workers bounded and interruptible, a lost
worker named.

TensorFlow's MultiWorkerMirroredStrategy waits for every worker of TF_CONFIG without a limit, inside C++ that holds
Python's lock (no signal handler, no other thread runs), and its coordination service takes SIGTERM for itself: a
worker naming an unreachable peer waited silently and could only be killed with SIGKILL. So the workers meet
first, in Python: each listens on its own TF_CONFIG port and waits, answering SIGINT and SIGTERM and saying whom
it waits for, until every other one answers on its port, or a deadline passes. Only then is the strategy made (its
server takes over the port), which no longer waits long.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import sys
import threading
import time

import tensorflow as tf

from keras_pspnet.files import short_repr

WAIT_NOTICE_SECONDS = 10  # after this long without the cluster, say whom we wait for (once)
# How collective ops fail when a peer goes: TensorFlow aborts them (Unavailable), or they time out, are aborted or
# cancelled.
PEER_ERRORS = (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.AbortedError,
               tf.errors.CancelledError)


class ClusterError(ConnectionError):
    """The cluster could not start or lost a worker. A thread of TensorFlow may still be blocked in C++: the
    command line exits at once after saying so (`exit_now`), as an interpreter shutdown could wait on it forever."""

    exit_now = True


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGINT while waiting for or training with the cluster."""

    exit_now = True


def tf_config() -> dict:
    """TF_CONFIG as JSON, checked: {"cluster": {job: ["host:port", ...]}, "task": {"type": job, "index": i}}; a
    one-line ValueError naming TF_CONFIG otherwise."""
    text = os.environ.get("TF_CONFIG", "")
    try:
        config = json.loads(text)
    except ValueError as error:
        raise ValueError(f"TF_CONFIG is not JSON ({error}): {short_repr(text)}") from None
    cluster, task = (config.get("cluster"), config.get("task")) if isinstance(config, dict) else (None, None)
    if not isinstance(cluster, dict) or not cluster or not all(
            isinstance(addresses, list) and addresses and all(isinstance(a, str) and ":" in a for a in addresses)
            for addresses in cluster.values()):
        raise ValueError(f'TF_CONFIG: "cluster" must map jobs to lists of "host:port", got {short_repr(cluster)}')
    if not isinstance(task, dict) or task.get("type") not in cluster or not isinstance(task.get("index"), int) or \
            not 0 <= task["index"] < len(cluster[task["type"]]):
        raise ValueError(f'TF_CONFIG: "task" must name a job of the cluster and an index in it, got {short_repr(task)}')
    return config


def peers(config: dict) -> dict[str, str]:
    """{"worker 1": "host:port", ...}: the other tasks of the cluster."""
    task = config["task"]
    return {f"{job} {index}": address for job, addresses in config["cluster"].items()
            for index, address in enumerate(addresses) if (job, index) != (task["type"], task["index"])}


def _answers(address: str, timeout: float = 1.0) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


def _raise_interrupted(number, _frame):
    raise Interrupted(signal.Signals(number).name)


def claim_signals() -> None:
    """SIGTERM and SIGINT raise `Interrupted` in the main thread (TensorFlow's coordination service installs a
    SIGTERM handler of its own, which kept the process alive)."""
    if threading.current_thread() is threading.main_thread():
        for number in (signal.SIGTERM, signal.SIGINT):
            signal.signal(number, _raise_interrupted)


def multi_worker_strategy(timeout: float, verbose: bool = True) -> tf.distribute.MultiWorkerMirroredStrategy:
    """MultiWorkerMirroredStrategy for TF_CONFIG, once every worker answers (`rendezvous`)."""
    config = tf_config()
    rendezvous(config, timeout, verbose)
    try:
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    except (tf.errors.OpError, RuntimeError, ValueError) as error:
        detail = str(error).strip().splitlines()[0][:200] if str(error).strip() else ""
        raise ClusterError(f"TF_CONFIG: the cluster did not start ({type(error).__name__}: {detail})") from None
    claim_signals()  # after the strategy: its coordination service has installed its SIGTERM handler by now
    return strategy


def rendezvous(config: dict, timeout: float, verbose: bool = True) -> None:
    """Waits until every other task of `config` answers on its port, listening on this task's port meanwhile (so
    that they see it), answering SIGINT and SIGTERM with `Interrupted`; ClusterError naming the silent ones after
    `timeout` seconds. The others' probes are accepted and closed as they come (a full accept queue would make this
    worker look silent to the ones that keep probing)."""
    task = config["task"]
    own = config["cluster"][task["type"]][task["index"]]
    others = peers(config)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        try:
            listener.bind(("", int(own.rpartition(":")[2])))
        except (OSError, ValueError) as error:
            raise ClusterError(f"TF_CONFIG: this worker's address {own} cannot be used ({error})") from None
        listener.listen(64)
        listener.setblocking(False)
        claim_signals()
        started, told = time.monotonic(), False
        while True:
            _close_pending(listener)
            silent = {name: address for name, address in others.items() if not _answers(address)}
            waited = time.monotonic() - started
            if not silent:
                return
            names = ", ".join(f"{name} ({address})" for name, address in silent.items())
            if waited > timeout:
                raise ClusterError(f"TF_CONFIG: {names} did not answer within {timeout:.0f} s (cluster_timeout); "
                                   "start every worker with its TF_CONFIG index, or correct the address, and run the "
                                   "same command again")
            if verbose and not told and waited > WAIT_NOTICE_SECONDS:
                print(f"waiting for {names} to join (up to {timeout:.0f} s)", file=sys.stderr, flush=True)
                told = True
            time.sleep(0.5)
    finally:
        listener.close()


def _close_pending(listener: socket.socket) -> None:
    while True:
        try:
            connection, _ = listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        connection.close()


def lost_worker(error: tf.errors.OpError, step: int, checkpoint: str | None) -> ClusterError:
    """A collective op that failed because a worker went away, as one line naming it and how to resume."""
    config = tf_config()
    match = re.search(r"/job:(\w+)/replica:\d+/task:(\d+)", error.message or "")
    name = f"{match[1]} {match[2]}" if match else None
    address = peers(config).get(name) if name else None
    who = f"{name} ({address})" if address else "a worker"
    since = f" from its last checkpoint ({os.path.basename(checkpoint)})" if checkpoint else " from the start"
    return ClusterError(f"{who} stopped answering at step {step} ({type(error).__name__}); restart every worker "
                        f"with the same command: the run resumes{since}")
