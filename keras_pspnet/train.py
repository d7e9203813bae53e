"""The training loop: one custom loop for one device, all local GPUs and several machines.

Keras 3's `model.fit` fails under MultiWorkerMirroredStrategy (keras-team/keras#20585), so runs use this
loop (`strategy.run`, gradients summed across replicas by the Keras optimizer) on every strategy. The model
and loss also work with `model.fit` for users who prefer it (see the README and tests).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

import keras
import numpy as np
import tensorflow as tf

from keras_pspnet.config import TrainConfig, load_config, save_config
from keras_pspnet.data import load_source, train_pipeline
from keras_pspnet.data.classes import classes_metadata
from keras_pspnet.data.info import DatasetInfo
from keras_pspnet.evaluate import evaluate
from keras_pspnet.finetune import load_init_model, retarget, transfer_weights
from keras_pspnet.losses import SegmentationCrossEntropy
from keras_pspnet.model import build_pspnet, inference_model, model_mean
from keras_pspnet.presets import from_preset
from keras_pspnet.protocol import TestProtocol

DEFAULT_MODEL = {"preset": "pspnet_resnet50"}


def make_strategy(kind: str) -> tf.distribute.Strategy:
    """none: the default strategy; mirrored: all local GPUs (or all logical CPUs when there is no GPU);
    multi_worker: the cluster in TF_CONFIG; auto: multi_worker with TF_CONFIG, mirrored with 2+ GPUs, else none."""
    if kind == "auto":
        if "TF_CONFIG" in os.environ:
            kind = "multi_worker"
        else:
            kind = "mirrored" if len(tf.config.list_logical_devices("GPU")) > 1 else "none"
    if kind == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if kind == "mirrored":
        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([d.name for d in devices])
    return tf.distribute.get_strategy()


def build_model(config: TrainConfig, info: DatasetInfo, sync_batchnorm: bool,
                init: keras.Model | None = None) -> keras.Model:
    """The training model (with the auxiliary head unless aux_weight is 0) from the config's `model`, or with
    `model` unset and an `init` model (init_from), that model's architecture with classifiers for `info`."""
    metadata = {"classes": classes_metadata(info)}  # saved with the model: export and predict name the classes
    if config.model is None and init is not None:
        return retarget(init, info.num_classes, aux_head=config.aux_weight > 0, sync_batchnorm=sync_batchnorm,
                        metadata=metadata)
    options = dict(config.model or DEFAULT_MODEL)
    preset = options.pop("preset", None)
    options.update(num_classes=info.num_classes, aux_head=config.aux_weight > 0, sync_batchnorm=sync_batchnorm,
                   backbone_weights=config.backbone_weights, metadata=metadata)
    try:
        return from_preset(preset, **options) if preset else build_pspnet(**options)
    except TypeError as error:  # an unknown model key reaches a builder's signature
        raise ValueError(f"model: {error}") from None


def make_optimizer(config: TrainConfig) -> keras.optimizers.Optimizer:
    """SGD with momentum and weight decay (or Adam), poly learning rate to 0 over the run."""
    schedule = keras.optimizers.schedules.PolynomialDecay(config.learning_rate, config.steps, 0.0,
                                                          power=config.lr_power)
    if config.optimizer == "sgd":
        optimizer = keras.optimizers.SGD(schedule, momentum=config.momentum, weight_decay=config.weight_decay or None)
    else:
        optimizer = keras.optimizers.Adam(schedule, weight_decay=config.weight_decay or None)
    if config.mixed_precision == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def training_loss(config: TrainConfig, ignore_label: int):
    """logits loss + aux_weight * aux loss, each averaged over the labelled pixels of the global batch."""
    loss = SegmentationCrossEntropy(ignore_label)

    def total(masks, outputs):
        if not isinstance(outputs, dict):
            return loss(masks, outputs)
        return loss(masks, outputs["logits"]) + config.aux_weight * loss(masks, outputs["aux"])

    return total


def make_train_step(model, optimizer, loss_fn, strategy):
    """A compiled step: forward, loss, gradients, update on every replica; returns the global mean loss."""

    def replica_step(images, masks):
        with tf.GradientTape() as tape:
            loss = loss_fn(masks, model(images, training=True))
            scaled = optimizer.scale_loss(loss)
        gradients = tape.gradient(scaled, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables))
        return loss

    @tf.function
    def step(iterator):
        images, masks = next(iterator)
        per_replica = strategy.run(replica_step, args=(images, masks))
        # Each replica's loss is its share of the global mean (see SegmentationCrossEntropy).
        return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

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
        return os.path.exists(self("final.keras"))


def check_run_directory(run_dir: str, config: TrainConfig, resume: bool) -> None:
    """Refuses a finished run unless resuming, and a different config in an unfinished one."""
    saved_path = os.path.join(run_dir, "config.yaml")
    if os.path.exists(os.path.join(run_dir, "final.keras")) and not resume:
        raise FileExistsError(f"{run_dir}: holds a finished run (final.keras); pass --resume to continue it "
                              "(e.g. with more steps) or choose another output directory.")
    if os.path.exists(saved_path) and not resume:
        saved = load_config(saved_path).to_dict()
        changed = sorted(k for k, v in config.to_dict().items() if saved.get(k) != v)
        if changed:
            raise ValueError(f"{run_dir}: holds an unfinished run with a different config ({', '.join(changed)} "
                             "differ); rerun the same command to resume it, pass --resume to continue it with the "
                             "new config, or choose another output directory.")


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
    strategy = make_strategy(config.distribute)
    out = RunDirectory(run_dir, strategy)
    if out.chief:
        save_config(config, out("config.yaml"))
    train_source, info = load_source(config.dataset, config.train_split, data_dir=config.data_dir,
                                     num_classes=config.num_classes, context_scenes=config.context_scenes,
                                     context_size=config.context_size)
    val_source = None
    if config.val_split:
        val_source, _ = load_source(config.dataset, config.val_split, data_dir=config.data_dir,
                                    num_classes=info.num_classes, context_size=config.context_size)
    replicas = strategy.num_replicas_in_sync
    if config.batch_size % replicas:
        raise ValueError(f"batch_size {config.batch_size} is not divisible by the {replicas} replicas.")

    manager_dir = out("checkpoints")
    resuming = tf.train.latest_checkpoint(manager_dir) is not None
    # init_from's weights matter only for a fresh run; its architecture also when `model` is unset.
    init = load_init_model(config.init_from) if config.init_from and (not resuming or config.model is None) else None
    with strategy.scope():
        model = build_model(config, info, sync_batchnorm=replicas > 1, init=init)
        optimizer = make_optimizer(config)
        optimizer.build(model.trainable_variables)
    if init is not None and not resuming:
        _initialize(model, init, config.init_from, verbose and out.chief)
    best = tf.Variable(-1.0, trainable=False, dtype=tf.float32)
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, best_miou=best)
    manager = tf.train.CheckpointManager(checkpoint, manager_dir, max_to_keep=2)
    if manager.latest_checkpoint:
        checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
    start = int(optimizer.iterations.numpy())
    if start and verbose and out.chief:
        print(f"resuming {run_dir} from step {start} ({manager.latest_checkpoint})")
    if start >= config.steps and out.finished:
        return {"step": start, "metrics": _read_metrics(out("metrics.json")), "final_model": out("final.keras")}

    augment = dataclasses.replace(info.augment, **{k: tuple(v) if isinstance(v, list) else v
                                                   for k, v in config.augment.items()})
    mean = model_mean(model).tolist()
    dataset = train_pipeline(train_source, info.name, config.crop_size, config.batch_size, augment, mean,
                             seed=config.seed, start=start, cache=config.cache)
    iterator = iter(strategy.experimental_distribute_dataset(dataset))
    step_fn = make_train_step(model, optimizer, training_loss(config, info.ignore_label), strategy)
    writer = tf.summary.create_file_writer(out("logs")) if out.chief else tf.summary.create_noop_writer()
    progress = keras.utils.Progbar(config.steps, stateful_metrics=["loss", "lr"],
                                   verbose=1 if verbose and out.chief else 0)
    metrics = _read_metrics(out("metrics.json"))
    started = time.perf_counter()

    def evaluate_now(step: int) -> None:
        if val_source is None or not out.chief:
            return
        protocol = TestProtocol(mode=config.eval_mode, crop=config.crop_size)
        results = evaluate(model, val_source, info, protocol, progress=verbose)
        record = {"step": step, **{k: v for k, v in results.items() if k != "confusion"}}
        metrics.append(record)
        with writer.as_default():
            tf.summary.scalar("val/mIoU", results["mIoU"] or 0.0, step=step)
        with open(out("metrics.json"), "w") as f:
            json.dump(metrics, f, indent=1)
        if (results["mIoU"] or 0.0) > float(best.numpy()):
            best.assign(results["mIoU"])
            inference_model(model).save(out("best.keras"))
        if verbose:
            print(f"\nstep {step}: val mIoU {100 * (results['mIoU'] or 0):.2f} (best {100 * float(best.numpy()):.2f})")

    for step in range(start + 1, config.steps + 1):
        loss = float(step_fn(iterator))
        if not np.isfinite(loss):
            raise FloatingPointError(f"step {step}: the loss is {loss}; lower learning_rate or check the labels.")
        if step % config.log_every == 0 or step == config.steps:
            rate = float(optimizer.learning_rate)
            with writer.as_default():
                tf.summary.scalar("train/loss", loss, step=step)
                tf.summary.scalar("train/learning_rate", rate, step=step)
            progress.update(step, [("loss", loss), ("lr", rate)])
        if config.eval_every and step % config.eval_every == 0 and step != config.steps:
            evaluate_now(step)
        if step % config.checkpoint_every == 0 or step == config.steps:
            manager.save(checkpoint_number=step)
    evaluate_now(config.steps)
    inference_model(model).save(out("final.keras"))  # every worker (identical weights); non-chiefs in worker-<i>/
    seconds = time.perf_counter() - started
    if verbose and out.chief:
        images = (config.steps - start) * config.batch_size
        print(f"trained {config.steps - start} steps in {seconds:.0f} s ({images / seconds:.1f} images/s); "
              f"outputs in {run_dir}")
    return {"step": config.steps, "metrics": metrics, "final_model": out("final.keras")}


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


def _read_metrics(path: str) -> list:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return json.load(f)
