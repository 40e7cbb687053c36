"""stacked_rnn: what depth does to a recurrent network, measured on IMDB and on generated tasks whose structure
is known, with Lightning, Hydra and TensorBoard."""

import os

from omegaconf import OmegaConf

SWEPT_KEYS_ENV = "STACKED_RNN_SWEPT_KEYS"  # set by `python -m stacked_rnn.train`, inherited by launcher workers
SWEEP_FUNCTIONS = ("range(", "choice(", "glob(", "interval(")


def swept_keys(argv: list[str]) -> list[str]:
    """Keys a command line sweeps over: `key=a,b` or `key=range(...)`/`choice(...)`/`glob(...)`."""
    keys = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and not key.startswith("hydra") and not value.startswith(("[", "{")) and (
            "," in value or value.startswith(SWEEP_FUNCTIONS)
        ):
            keys.append(key.lstrip("+~"))
    return keys


def short_job_name(override_dirname: str, sweeper_params=None) -> str:
    """Sweep folder (and TensorBoard run) name from the swept values only, without group prefixes:
    'model.cell=gru,model.layers=3,data.limit=500' swept over cell and layers -> 'cell=gru,layers=3'."""
    swept = {k for k in os.environ.get(SWEPT_KEYS_ENV, "").split(",") if k} | set(sweeper_params or {})
    items = [item.partition("=") for item in override_dirname.split(",")] if override_dirname else []
    items = [item for item in items if item[0].lstrip("+~") in swept] or items
    return ",".join(f"{key.rsplit('.', 1)[-1]}{sep}{value}" for key, sep, value in items) or "default"


# Registered on import so that every process that runs a job (joblib workers too) can name its folder, and data groups
# can state derived values (data=selective_copy: chance: ${div:1,${.data_tokens}}).
OmegaConf.register_new_resolver("short_job_name", short_job_name, replace=True)
OmegaConf.register_new_resolver("div", lambda a, b: a / b, replace=True)
