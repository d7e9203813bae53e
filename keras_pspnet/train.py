"""The training loop: one custom loop for one device, all local GPUs and several machines.

Keras 3's `model.fit` fails under MultiWorkerMirroredStrategy (keras-team/keras#20585), so runs use this
loop (`strategy.run`, gradients summed across replicas by the Keras optimizer) on every strategy. The model
and loss also work with `model.fit` for users who prefer it (see the README and tests).
"""

from __future__ import annotations

import json
import os
import sys
import time

import keras
import numpy as np
import tensorflow as tf

from keras_pspnet.cluster import PEER_ERRORS, lost_worker, multi_worker_strategy
from keras_pspnet.config import TrainConfig, load_config, save_config
from keras_pspnet.console import Progress, one_line
from keras_pspnet.data import TrainingOrder, load_source, train_pipeline
from keras_pspnet.data.classes import classes_metadata
from keras_pspnet.data.folder import undecodable_images
from keras_pspnet.data.info import AugmentConfig, DatasetInfo, augment_config
from keras_pspnet.evaluate import evaluate
from keras_pspnet.files import read_text, remove_stale_partials, write_text
from keras_pspnet.finetune import retarget, transfer_weights
from keras_pspnet.losses import SegmentationCrossEntropy
from keras_pspnet.model import (
    build_pspnet,
    head_lr_multipliers,
    is_complete_model,
    load_model,
    model_mean,
    portable_model,
    save_model,
)
from keras_pspnet.optimizers import SGD
from keras_pspnet.presets import from_preset
from keras_pspnet.protocol import TestProtocol, reference_protocol

DEFAULT_MODEL = {"preset": "pspnet_resnet50"}
CACHED_SHUFFLE = 1 << 16  # a cached dataset is shuffled whole (it is small, and in memory)


_STRATEGIES: dict[str, tf.distribute.Strategy] = {}


def make_strategy(kind: str, cluster_timeout: float = 300.0) -> tf.distribute.Strategy:
    """none: the default strategy; mirrored: all local GPUs (or all logical CPUs when there is no GPU);
    multi_worker: the cluster in TF_CONFIG, once every worker has joined (within `cluster_timeout` seconds; see
    `keras_pspnet.cluster`); auto: multi_worker with TF_CONFIG, mirrored with 2+ GPUs, else none.

    One strategy of each kind per process: a second MirroredStrategy numbers its collective ops from the start
    again, and the first run's ops of those numbers make the second's synchronised batch norms fail ("Shape
    mismatch in the collective instance"), e.g. when a process trains two models (the demo on a multi-GPU machine).
    """
    if kind == "auto":
        if "TF_CONFIG" in os.environ:
            kind = "multi_worker"
        else:
            kind = "mirrored" if len(tf.config.list_logical_devices("GPU")) > 1 else "none"
    if kind == "none":
        return tf.distribute.get_strategy()
    if kind not in _STRATEGIES:
        if kind == "multi_worker":
            _STRATEGIES[kind] = multi_worker_strategy(cluster_timeout)
        else:
            devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
            _STRATEGIES[kind] = tf.distribute.MirroredStrategy([d.name for d in devices])
    return _STRATEGIES[kind]


def build_model(config: TrainConfig, info: DatasetInfo, sync_batchnorm: bool,
                init: keras.Model | None = None, announce: bool = False) -> keras.Model:
    """The training model (with the auxiliary head unless aux_weight is 0) from the config's `model`, or with
    `model` unset and an `init` model (init_from), that model's architecture with classifiers for `info`
    (`announce`: say so when a new auxiliary head is added)."""
    metadata = {"classes": classes_metadata(info)}  # saved with the model: export and predict name the classes
    if config.model is None and init is not None:
        return retarget(init, info.num_classes, aux_head=config.aux_weight > 0, sync_batchnorm=sync_batchnorm,
                        metadata=metadata, name=f"init_from {config.init_from}" if announce else None)
    options = dict(config.model or DEFAULT_MODEL)
    preset = options.pop("preset", None)
    options.update(num_classes=info.num_classes, aux_head=config.aux_weight > 0, sync_batchnorm=sync_batchnorm,
                   backbone_weights=config.backbone_weights, metadata=metadata)
    try:
        return from_preset(preset, **options) if preset else build_pspnet(**options)
    except TypeError as error:  # an unknown model key reaches a builder's signature
        raise ValueError(f"model: {error}") from None


def _describe_strategy(strategy: tf.distribute.Strategy, batch_size: int) -> str:
    """What `distribute` chose, said before training: the strategy, replicas, workers and batch per replica."""
    replicas = strategy.num_replicas_in_sync
    name, where = type(strategy).__name__, f"{replicas} replica{'s' if replicas > 1 else ''}"
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):  # its class is CollectiveAllReduceStrategy
        spec = strategy.cluster_resolver.cluster_spec()
        workers = sum(spec.num_tasks(job) for job in ("chief", "worker") if job in spec.jobs)
        name, where = "MultiWorkerMirroredStrategy", f"{where} on {workers} workers"
    elif replicas == 1:
        return f"training on one device, batch {batch_size}"
    return (f"{name}: {where}, global batch {batch_size} ({batch_size // replicas} per replica)"
            + (", synchronised BatchNormalization" if replicas > 1 else ""))


def learning_rate_schedule(config: TrainConfig) -> keras.optimizers.schedules.LearningRateSchedule:
    """Poly from learning_rate to min_learning_rate; the rate of step k (from 1) is the schedule at k - 1, as
    both references set it (the authors after each step for the next, mmengine before each step)."""
    decay_steps = config.steps - 1 if config.lr_schedule == "poly_mmengine" else config.steps
    return keras.optimizers.schedules.PolynomialDecay(config.learning_rate, decay_steps, config.min_learning_rate,
                                                      power=config.lr_power)


def make_optimizer(config: TrainConfig, model: keras.Model, step: tf.Variable | None = None,
                   ) -> keras.optimizers.Optimizer:
    """PyTorch's SGD (or Adam) with the poly schedule from learning_rate to min_learning_rate over the run.

    The schedule reads `step` (the run's step counter) when given, else the optimizer's own count, which
    under mixed_float16 skips the steps whose loss-scaled gradients overflowed (the references' schedulers
    count every iteration).
    """
    schedule = learning_rate_schedule(config)
    rate = schedule if step is None else (lambda: schedule(step))
    if config.optimizer == "sgd":
        optimizer = SGD(rate, config.momentum, config.weight_decay, config.weight_decay_mode or "coupled",
                        head_lr_multipliers(model, config.head_lr_mult))
    else:
        optimizer = keras.optimizers.Adam(rate, weight_decay=config.weight_decay or None)
    if config.mixed_precision == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def training_loss(config: TrainConfig, ignore_label: int):
    """logits loss + aux_weight * aux loss, each averaged over the labelled pixels of the global batch."""
    loss = SegmentationCrossEntropy(ignore_label, config.avg_non_ignore)

    def total(masks, outputs):
        if not isinstance(outputs, dict):
            return loss(masks, outputs)
        return loss(masks, outputs["logits"]) + config.aux_weight * loss(masks, outputs["aux"])

    return total


def make_train_step(model, optimizer, loss_fn, strategy, counter: tf.Variable | None = None):
    """A compiled step on a (distributed) batch: forward, loss, gradients, update on every replica, then
    `counter` + 1; returns the global mean loss."""

    def replica_step(images, masks):
        with tf.GradientTape() as tape:
            loss = loss_fn(masks, model(images, training=True))
            scaled = optimizer.scale_loss(loss)
        gradients = tape.gradient(scaled, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables))
        return loss

    @tf.function
    def step(images, masks):
        per_replica = strategy.run(replica_step, args=(images, masks))
        # Each replica's loss is its share of the global mean (see SegmentationCrossEntropy).
        loss = strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)
        if counter is not None:
            with tf.control_dependencies([loss]):
                counter.assign_add(1)
        return loss

    return step


class RunDirectory:
    """The outputs of a run: config.yaml, checkpoints/, logs/, metrics.json, best.keras, final.keras.

    Under MultiWorkerMirroredStrategy every worker must write its checkpoints (saving is collective);
    workers other than the chief write into worker-<index>/ so that they never clobber the chief's files.
    """

    def __init__(self, path: str, strategy: tf.distribute.Strategy):
        resolver = getattr(strategy, "cluster_resolver", None)
        self.chief = resolver is None or not resolver.task_type or resolver.task_type == "chief" or (
            resolver.task_type == "worker" and resolver.task_id == 0)
        self.root = path if self.chief else os.path.join(path, f"worker-{resolver.task_id}")
        os.makedirs(self.root, exist_ok=True)

    def __call__(self, *names: str) -> str:
        return os.path.join(self.root, *names)

    @property
    def finished(self) -> bool:
        return is_complete_model(self("final.keras"))  # a final.keras cut short (keras-pspnet <= 0.4) is not


def check_run_directory(run_dir: str, config: TrainConfig, resume: bool) -> None:
    """Refuses a finished run unless resuming, and a different config in an unfinished one."""
    saved_path = os.path.join(run_dir, "config.yaml")
    if is_complete_model(os.path.join(run_dir, "final.keras")) and not resume:
        raise FileExistsError(f"{run_dir}: holds a finished run (final.keras); pass --resume to continue it "
                              "(e.g. with more steps), or a new --out.")
    if os.path.exists(saved_path) and not resume:
        saved = load_config(saved_path).to_dict()
        changed = sorted(k for k, v in config.to_dict().items() if saved.get(k) != v)
        if changed:
            raise ValueError(f"{run_dir}: holds an unfinished run with a different config ({', '.join(changed)} "
                             "differ); rerun the same command to resume it, pass --resume to continue it with the "
                             "new config, or a new --out.")


def train(config: TrainConfig, run_dir: str, *, resume: bool = False, verbose: bool = True) -> dict:
    """Trains (or resumes) the run in `run_dir`; returns {"step", "metrics", "final_model"}."""
    previous = keras.config.dtype_policy()
    if config.mixed_precision:  # Keras' policy is global: set it for this run only
        keras.config.set_dtype_policy(config.mixed_precision)
    try:
        return _train(config, run_dir, resume, verbose)
    finally:
        keras.config.set_dtype_policy(previous)


def _train(config: TrainConfig, run_dir: str, resume: bool, verbose: bool) -> dict:
    check_run_directory(run_dir, config, resume)
    strategy = make_strategy(config.distribute, config.cluster_timeout)
    multi_worker = isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
    out = RunDirectory(run_dir, strategy)
    remove_stale_partials(out.root)  # models and files of a killed run, half written
    _, info = _load_source(config, config.train_split, num_classes=config.num_classes)
    val_source = None
    if config.val_split:
        val_source, _ = _load_source(config, config.val_split, num_classes=info.num_classes)
    protocol = TestProtocol(mode=config.eval_mode, crop=config.crop_size)
    if config.eval_protocol:
        protocol = reference_protocol(config.eval_protocol, info.num_classes)
        if protocol is None:
            raise ValueError(f"eval_protocol {config.eval_protocol}: {config.dataset} is none of the reference "
                             "datasets (ADE20K, Cityscapes, VOC: 150, 19 or 21 classes); set eval_protocol: null "
                             "(validation with eval_mode) for other data")
    replicas = strategy.num_replicas_in_sync
    if config.batch_size % replicas:
        raise ValueError(f"batch_size {config.batch_size} is not divisible by the {replicas} replicas.")

    manager_dir = out("checkpoints")
    resuming = tf.train.latest_checkpoint(manager_dir) is not None
    # init_from's weights matter only for a fresh run; its architecture also when `model` is unset.
    init = load_model(config.init_from) if config.init_from and (not resuming or config.model is None) else None
    with strategy.scope():
        model = build_model(config, info, sync_batchnorm=replicas > 1, init=init,
                            announce=verbose and out.chief and not resuming)
        counter = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
        optimizer = make_optimizer(config, model, counter)
        optimizer.build(model.trainable_variables)
    augment = augment_config(info.augment, config.augment)
    if init is not None and not resuming:
        _initialize(model, init, config.init_from, verbose and out.chief)
    best = tf.Variable(-1.0, trainable=False, dtype=tf.float32)
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, best_miou=best, step=counter)
    manager = tf.train.CheckpointManager(checkpoint, manager_dir, max_to_keep=2)
    if manager.latest_checkpoint:
        _restore(checkpoint, manager.latest_checkpoint, resume)
    metrics = _read_metrics(out("metrics.json"))
    if out.chief:  # only once the config has proved valid and the run restored: a refused or failed --resume must
        save_config(config, out("config.yaml"))  # leave the run's config, so that its own command still resumes it
    start = int(counter.numpy())
    if verbose and out.chief:
        print(_describe_strategy(strategy, config.batch_size))
    if start and verbose and out.chief:
        print(f"resuming {run_dir} from step {start} ({manager.latest_checkpoint})")
    if start >= config.steps and out.finished:
        return {"step": start, "metrics": metrics, "final_model": out("final.keras")}

    mean = model_mean(model).tolist()

    iterator = iter(strategy.distribute_datasets_from_function(
        lambda context: worker_dataset(config, info, augment, mean, start, replicas, context)))
    step_fn = make_train_step(model, optimizer, training_loss(config, info.ignore_label), strategy, counter)
    writer = tf.summary.create_file_writer(out("logs")) if out.chief else tf.summary.create_noop_writer()
    # a bar on a terminal, else a plain line every 10% (or 30 s): logs hold no carriage returns nor escape codes
    progress = Progress(config.steps, "training", "step", enabled=verbose and out.chief, stream=sys.stdout)
    progress.update(start)
    started = time.perf_counter()

    def evaluate_now(step: int) -> None:
        if val_source is None or not out.chief:
            return
        results = evaluate(model, val_source, info, protocol, progress=verbose, max_side=config.eval_max_side)
        record = {"step": step, **{k: v for k, v in results.items() if k != "confusion"}}
        metrics.append(record)
        with writer.as_default():
            tf.summary.scalar("val/mIoU", results["mIoU"] or 0.0, step=step)
        write_text(out("metrics.json"), json.dumps(metrics, indent=1))
        if (results["mIoU"] or 0.0) > float(best.numpy()):
            best.assign(results["mIoU"])
            save_model(portable_model(model), out("best.keras"))  # the previous best stays until this one is whole
        if verbose:
            progress.write(f"step {step}: val mIoU {100 * (results['mIoU'] or 0):.2f} "
                           f"(best {100 * float(best.numpy()):.2f})")

    step = start
    try:
        for step in range(start + 1, config.steps + 1):
            try:  # the batch is fetched apart from the step: an error here is the input's, never the model's
                images, masks = next(iterator)
            except tf.errors.OpError as error:  # a file that decodes badly, say
                if not multi_worker and step - 1 > start and (step - 1) % config.checkpoint_every:  # (collective)
                    manager.save(checkpoint_number=step - 1)  # the state after the last complete step, to resume from
                raise _input_error(config, error) from None
            logged = step % config.log_every == 0 or step == config.steps
            rate = float(optimizer.learning_rate) if logged else None  # this step's rate (read before it counts)
            loss = float(step_fn(images, masks))
            if not np.isfinite(loss):
                raise FloatingPointError(f"step {step}: the loss is {loss}; lower learning_rate or check the labels.")
            if logged:
                with writer.as_default():
                    tf.summary.scalar("train/loss", loss, step=step)
                    tf.summary.scalar("train/learning_rate", rate, step=step)
                progress.update(step, loss=loss, lr=rate)
            if config.eval_every and step % config.eval_every == 0 and step != config.steps:
                evaluate_now(step)
            if step % config.checkpoint_every == 0 or step == config.steps:
                manager.save(checkpoint_number=step)
        evaluate_now(config.steps)
        save_model(portable_model(model), out("final.keras"))  # every worker (same weights); non-chiefs: worker-<i>/
    except PEER_ERRORS as error:  # a step, a checkpoint (saving is collective), the final model's
        if not multi_worker:
            raise
        raise lost_worker(error, step, manager.latest_checkpoint) from None  # its peers' collectives abort
    progress.close()
    seconds = time.perf_counter() - started
    if verbose and out.chief:
        images = (config.steps - start) * config.batch_size
        print(f"trained {config.steps - start} steps in {seconds:.0f} s ({images / seconds:.1f} images/s); "
              f"outputs in {run_dir}")
    return {"step": config.steps, "metrics": metrics, "final_model": out("final.keras")}


def worker_dataset(config: TrainConfig, info: DatasetInfo, augment: AugmentConfig, mean: list[float], start: int,
                   replicas: int, context: tf.distribute.InputContext) -> tf.data.Dataset:
    """One worker's batches (of the per-replica size): its shard of every epoch, from where step `start` left off."""
    batch = context.get_per_replica_batch_size(config.batch_size)
    done = start * batch * replicas // context.num_input_pipelines  # the examples this worker has read already
    order = TrainingOrder(config.seed, context.num_input_pipelines, context.input_pipeline_id, done)
    # cache: a small dataset kept decoded in memory, this worker's share of it, reshuffled whole each epoch
    source, _ = _load_source(config, config.train_split, num_classes=info.num_classes, validate=False,
                             order=None if config.cache else order)
    if config.cache:
        source = source.shard(order.num_shards, order.shard)
    return train_pipeline(source, info.name, config.crop_size, batch, augment, mean, seed=config.seed + order.shard,
                          offset=done, shuffle_buffer=CACHED_SHUFFLE if config.cache else 0, cache=config.cache)


def _load_source(config: TrainConfig, split: str, **options):
    """`load_source` for `split` of the config's dataset, with the config's source settings."""
    return load_source(config.dataset, split, data_dir=config.data_dir, context_scenes=config.context_scenes,
                       context_size=config.context_size, **options)


def _initialize(model: keras.Model, init: keras.Model, name: str, verbose: bool) -> None:
    """init_from: copies every weight whose layer name and shapes match; says what was loaded and skipped."""
    loaded, skipped = transfer_weights(init, model)
    if len(loaded) < len(skipped):  # a backbone that does not match: the run would start from random weights
        raise ValueError(f"init_from {name}: only {len(loaded)} of {len(loaded) + len(skipped)} layers with weights "
                         "match its layers (names and shapes): `model` describes another architecture; leave `model` "
                         "unset to fine-tune its own.")
    if verbose:
        print(f"init_from {name}: loaded {len(loaded)} of {len(loaded) + len(skipped)} layers with weights"
              + (f"; re-initialised: {', '.join(skipped)}" if skipped else ""))


def _restore(checkpoint: tf.train.Checkpoint, path: str, resume: bool) -> None:
    """Restores the run's latest checkpoint; a config whose model or optimizer no longer fits it is one line."""
    if not any(name.startswith("step/") for name, _ in tf.train.list_variables(path)):
        raise ValueError(f"{path}: written by keras-pspnet 0.2, whose optimizer kept another state (Keras' SGD); it "
                         "cannot be resumed: start a new run directory (init_from its best.keras or final.keras keeps "
                         "the weights)")
    try:
        checkpoint.restore(path).assert_existing_objects_matched()
    except (AssertionError, ValueError, tf.errors.OpError) as error:
        hint = "the config changed the model or optimizer: " if resume else ""
        raise ValueError(f"{path}: does not fit this run's model ({hint}{one_line(error)[:200]}); the run and its "
                         "config.yaml are unchanged") from None


def _read_metrics(path: str) -> list:
    """The evaluations recorded so far (metrics.json), [] for a new run; one line naming a damaged file."""
    if not os.path.exists(path):
        return []
    try:
        metrics = json.loads(read_text(path, "metrics"))
    except ValueError as error:
        raise ValueError(f"{path}: damaged ({one_line(error)[:120]}); move it away to resume (its record of the "
                         "evaluations so far is then lost)") from None
    if not isinstance(metrics, list):
        raise ValueError(f"{path}: damaged (not a list of evaluations); move it away to resume")
    return metrics


def _input_error(config: TrainConfig, error: tf.errors.OpError) -> Exception:
    """One line for a training input that failed mid-run: the undecodable file of a folder dataset when one
    is found (the up-front check reads headers only), else the first line of TensorFlow's message."""
    if os.path.isdir(config.dataset):
        bad = undecodable_images(config.dataset, config.train_split)
        if bad:
            others = ", ".join(bad[1:4]) + (", ..." if len(bad) > 4 else "")
            more = f" (and {len(bad) - 1} more: {others})" if others else ""
            return ValueError(f"{bad[0]}: TensorFlow cannot decode this image{more}; fix or remove it and rerun the "
                              "same command to resume from the last checkpoint")
    return ValueError(f"{config.dataset}: the training input failed: {error.message.splitlines()[0]}")
