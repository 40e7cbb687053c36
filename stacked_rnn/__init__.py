"""stacked_rnn: what depth does to a recurrent network, measured on IMDB with Lightning, Hydra and TensorBoard."""

from omegaconf import OmegaConf


def short_job_name(override_dirname: str) -> str:
    """'model.cell=gru,model.layers=3' -> 'cell=gru,layers=3': readable sweep folder and TensorBoard run names."""
    if not override_dirname:
        return "default"
    items = (item.partition("=") for item in override_dirname.split(","))
    return ",".join(f"{key.rsplit('.', 1)[-1]}{sep}{value}" for key, sep, value in items)


# Registered on import so that every process that runs a job (joblib workers too) can name its folder.
OmegaConf.register_new_resolver("short_job_name", short_job_name, replace=True)
