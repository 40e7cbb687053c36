"""The run's experiment loggers: Lightning's TensorBoard, CSV and MLflow loggers, chosen by the logger/ config group.

Hydra instantiates the loggers; this module fills in what only the run knows (MLflow's local store, experiment and
run name), finds TensorBoard among the loggers for the code that draws figures, and hands the run folder's
results.json and figures to MLflow once they are written.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

from lightning.pytorch.loggers import CSVLogger, Logger, MLFlowLogger, TensorBoardLogger
from omegaconf import DictConfig, open_dict

MLFLOW_INSTALL = 'pip install -e ".[mlflow]"'
SQLITE = "sqlite:///"  # a local MLflow store: one file, no server (MLflow 3's own default kind of store)
SINGLE_RUN_EXPERIMENT = "stacked_rnn"  # MLflow experiment of the runs that are not part of a sweep


def needs_mlflow(node: DictConfig) -> bool:
    return str(node.get("_target_", "")).rsplit(".", 1)[-1] == "MLFlowLogger"


def mlflow_installed() -> bool:
    try:
        import mlflow  # noqa: F401
    except ImportError:
        return False
    return True


def local_store(uri: str, cwd: Path) -> str:
    """A relative sqlite:/// store made absolute against `cwd`, its folder created; any other URI as it is.
    Absolute, so that every process of a sweep (joblib, submitit) writes to the same file."""
    if not uri.startswith(SQLITE):
        return uri
    path = Path(uri[len(SQLITE):]).expanduser()
    path = path if path.is_absolute() else cwd / path
    path.parent.mkdir(parents=True, exist_ok=True)
    return SQLITE + str(path)


def relative(path: Path, cwd: Path) -> str:
    """path as the user sees it from where they ran (outputs/multirun/DATE/TIME), else absolute."""
    try:
        return str(path.resolve().relative_to(cwd.resolve()))
    except ValueError:
        return str(path)


def complete_mlflow(node: DictConfig, output_dir: Path, cwd: Path, sweep_dir: Path | None, resuming: bool) -> None:
    """Fill logger.mlflow's nulls in place (results.json then records the values used): the store and its artifact
    folder, one experiment per sweep (else stacked_rnn), the run folder as run name and tag. The experiment is made
    here, under a lock, because the jobs of a parallel sweep all start by looking for it. A resumed run
    (ckpt_path=last) continues the MLflow run of its run folder."""
    node.tracking_uri = local_store(node.tracking_uri, cwd)
    if node.artifact_location is None and node.tracking_uri.startswith(SQLITE):
        node.artifact_location = (Path(node.tracking_uri[len(SQLITE):]).parent / "mlartifacts").as_uri()
    if node.experiment_name is None:
        node.experiment_name = relative(sweep_dir, cwd) if sweep_dir else SINGLE_RUN_EXPERIMENT
    if node.run_name is None:
        node.run_name = output_dir.name if sweep_dir else relative(output_dir, cwd)
    run_dir = str(output_dir.resolve())
    node.tags = {**node.tags, "run_dir": run_dir, **({"sweep_dir": str(sweep_dir.resolve())} if sweep_dir else {})}
    from mlflow import MlflowClient

    with one_at_a_time(node.tracking_uri):
        client = MlflowClient(node.tracking_uri)  # a new sqlite store: creates its tables
        experiment_id = find_or_create_experiment(client, node.experiment_name, node.artifact_location)
    if resuming and node.get("run_id") is None and "'" not in run_dir:  # (a quote would end the filter's string)
        previous = client.search_runs([experiment_id], f"tags.run_dir = '{run_dir}'", max_results=1,
                                      order_by=["attributes.start_time DESC"])
        if previous:
            with open_dict(node):
                node.run_id = previous[0].info.run_id  # MLFlowLogger(run_id=...) logs on into that run


@contextmanager
def one_at_a_time(uri: str):
    """Parallel sweep jobs on one local sqlite store: one at a time creates its tables and the sweep's experiment
    (together they fail with 'table ... already exists', or both create the experiment)."""
    if not uri.startswith(SQLITE):
        yield
        return
    import fcntl

    with open(uri[len(SQLITE):] + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def find_or_create_experiment(client, name: str, artifact_location: str | None) -> str:
    """The id of MLflow experiment `name`, created when missing; a deleted one is named, not silently reused."""
    found = client.get_experiment_by_name(name)
    if found is None:
        return client.create_experiment(name, artifact_location=artifact_location)
    if found.lifecycle_stage == "deleted":
        raise ValueError(f"MLflow experiment {name!r} is deleted: restore it (mlflow experiments restore "
                         f"--experiment-id {found.experiment_id}) or set logger.mlflow.experiment_name")
    return found.experiment_id


def tensorboard_of(trainer):
    """The SummaryWriter of the trainer's TensorBoard logger, or None when it logs elsewhere (CSV, MLflow)."""
    return next((lg.experiment for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)


def has_tensorboard(run_dir: Path) -> bool:
    """Whether a run folder holds TensorBoard events: the tools that load a run add their figures there only then."""
    return any(Path(run_dir).glob("events.out.tfevents.*"))


def log_run_files(loggers: list[Logger], output_dir: Path) -> None:
    """results.json, the PNG figures and Hydra's .hydra/ record of the config as artifacts of each MLflow run."""
    files = [output_dir / "results.json", *sorted(output_dir.glob("*.png"))]
    for logger in loggers:
        if isinstance(logger, MLFlowLogger):
            for path in files:
                if path.is_file():
                    logger.experiment.log_artifact(logger.run_id, str(path))
            if (output_dir / ".hydra").is_dir():
                logger.experiment.log_artifacts(logger.run_id, str(output_dir / ".hydra"), "hydra")


def where(loggers: list[Logger]) -> list[str]:
    """Where each logger wrote, as the run summary prints it."""
    lines = []
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            lines.append(f"tensorboard --logdir {os.path.normpath(logger.log_dir)}")
        elif isinstance(logger, CSVLogger):
            lines.append(os.path.join(os.path.normpath(logger.log_dir), "metrics.csv"))
        elif isinstance(logger, MLFlowLogger):
            uri = logger.experiment.tracking_uri
            shown = f"mlflow ui --backend-store-uri {uri}" if uri.startswith(SQLITE) else f"MLflow server {uri}"
            lines.append(f"{shown}  (run {logger.run_id})")
        else:
            lines.append(type(logger).__name__)
    return lines
