"""Layer-wise probes: what does each layer hold, and at what scale? `python -m stacked_rnn.probe ckpt=RUN`.

The claim under test: lower layers hold word cues, higher layers the meaning of the document; the scale a layer
knows best grows with its depth. Layers are numbered from the input: layer 0 is the word embeddings, layer k the
k-th recurrent layer (PyTorch's weight_*_l{k-1}).

- Scale probes (probe_scales.json, probe_scales.png): at a few sampled real steps t of each review, a linear probe
  reads layer k's state h_t and predicts each target at step t (ridge regression, R^2), and the review's label
  (logistic regression, accuracy: the "doc" column, how much of the verdict the layer holds at step t). The targets
  (probe_targets.StepTargets): a task's own exact ones where it states them (data=synthetic_reviews: the polarity
  of the word, of the phrase, of the sentence so far and the document tally), else IMDB's mean word polarity of
  the tokens t-w+1..t at each scale w. A bidirectional layer is read in its forward direction only: the backward
  half at step t has read the words after t.
- Final-state probe (probe.json, probe.png): the label from each layer's final state, and from the mean of the
  word embeddings (a bag of words) in place of the embeddings' "final state".

Every probe is fit on training reviews and scored on test reviews, its penalty chosen by cross-validation within
the training reviews (folds grouped by review). Every probe is run again on the untrained model the run started
from (the control: same shape, same seed): a score means something only as far as it beats the control's.
`sweep=DIR` probes every job of a sweep that lacks probe_scales.json and averages the heatmaps over seeds.
A character language model's run (task=lm, data=text_lm) is handed to stacked_rnn.probe_lm (probe_lm.json/png).
"""

from __future__ import annotations

import fnmatch
import json
import sys
from pathlib import Path

import numpy as np
import torch

from stacked_rnn.checkpoint import (CheckpointError, RunParser, UsageError, at_least, find_checkpoint, load,
                                    read_results, run_folder)
from stacked_rnn.diagnostics import layer_outputs
from stacked_rnn.loggers import has_tensorboard
from stacked_rnn.model import StackedRNNClassifier
from stacked_rnn.probe_plots import plot_final, plot_scales
from stacked_rnn.probe_targets import DEFAULT_SCALES, StepTargets, lexicon_summary
from stacked_rnn.tasks.batches import ReviewDataset, collate

ALPHAS = (1e-1, 1e0, 1e1, 1e2, 1e3, 1e4, 1e5)  # ridge
CS = (1e-4, 1e-3, 1e-2, 1e-1, 1e0)  # logistic, inverse (larger C: slow on separable states, no gain)
FOLDS = 5  # cross-validation folds within the training reviews, grouped by review



class Sample:
    """The probed reviews of one split and the steps sampled in them: the same for every layer, target and model.
    targets_of(i) gives review i's targets at every step (T_i, S)."""

    def __init__(self, dataset: ReviewDataset, targets_of, max_reviews: int, steps_per_review: int,
                 rng: np.random.Generator):
        n = len(dataset)
        self.reviews = np.sort(rng.permutation(n)[:max_reviews])  # a seeded random subset, not the shortest reviews
        self.ids = [np.asarray(dataset.sequences[i], dtype=np.int64) for i in self.reviews]
        self.labels = np.asarray(dataset.labels)[self.reviews].astype(np.int64)  # (R,)
        lengths = np.asarray([len(s) for s in self.ids])
        picks = [np.sort(rng.choice(n_real, size=min(steps_per_review, n_real), replace=False)) for n_real in lengths]
        self.review = np.repeat(np.arange(len(self.ids)), [len(p) for p in picks])  # (N,): which review
        self.step = np.concatenate(picks)  # (N,): its step t, always a real one
        self.targets = np.stack([targets_of(int(self.reviews[r]))[t] for r, t in zip(self.review, self.step)])  # (N, S)


# ----------------------------------------------------------------------------------------------
# Features


@torch.no_grad()
def layer_sequences(model, ids: torch.Tensor, lengths: torch.Tensor) -> list[torch.Tensor]:
    """Every layer's states in eval mode: the word embeddings (B, T, E), then each recurrent layer's (B, T, D*H)."""
    return [model.embedding(ids)] + layer_outputs(model, ids, lengths)


@torch.no_grad()
def extract(model, sample: Sample, layers: list[int], batch_size: int = 256):
    """Per chosen layer: its states at the sampled steps (N, F), a bidirectional layer's forward half only, and its
    final state (R, F') (the embeddings' mean over the review for layer 0)."""
    units, forward_only = model.hparams.units, model.hparams.bidirectional
    steps, finals = [None] * len(layers), [None] * len(layers)  # per layer: (N, F) and (R, F')
    order = np.argsort([len(ids) for ids in sample.ids], kind="stable")  # similar lengths together: less padding
    position = np.empty(len(sample.ids), dtype=np.int64)  # a review's row in its batch
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        position[rows] = np.arange(len(rows))
        ids, lengths, _ = collate([(sample.ids[r], 0) for r in rows])  # (B, T), (B,)
        sequences = layer_sequences(model, ids, lengths)  # layers x (B, T, F)
        chosen = np.flatnonzero(np.isin(sample.review, rows))  # the sampled steps of these reviews
        at = (torch.from_numpy(position[sample.review[chosen]]), torch.from_numpy(sample.step[chosen]))
        for j, k in enumerate(layers):
            seq = sequences[k]  # (B, T, F)
            if k == 0:
                real = (torch.arange(ids.shape[1])[None, :] < lengths[:, None])[..., None]  # (B, T, 1)
                final = (seq * real).sum(1) / lengths[:, None]  # (B, E): the mean word embedding
            else:
                final = model.last_state(seq, lengths)  # (B, D*H), both directions
                seq = seq[..., :units] if forward_only else seq  # (B, T, H): the backward half has read the future
            if steps[j] is None:
                steps[j] = np.empty((len(sample.review), seq.shape[-1]), dtype=np.float32)
                finals[j] = np.empty((len(sample.ids), final.shape[-1]), dtype=np.float32)
            steps[j][chosen] = seq[at].numpy()
            finals[j][rows] = final.numpy()
    return steps, finals


def initial_model(hparams: dict, seed: int) -> StackedRNNClassifier:
    """The untrained model a run with this seed started from, in eval mode: stacked_rnn.train.run seeds torch with
    cfg.seed right before it builds the model, so the same seed and hyperparameters give the same weights
    (tests/test_probe.py compares them with a run's weights at on_fit_start). torch's global generator is left
    as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return StackedRNNClassifier(**hparams).eval()


# ----------------------------------------------------------------------------------------------
# Probes


def grouped_folds(groups: np.ndarray, labels: np.ndarray, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Cross-validation folds within the training samples: all steps of a review fall in the same fold."""
    from sklearn.model_selection import StratifiedGroupKFold

    per_class = [len(np.unique(groups[labels == c])) for c in (0, 1)]  # reviews of each label
    n_splits = min(FOLDS, *per_class)
    if n_splits < 2:
        raise UsageError(f"too few training reviews to cross-validate: {per_class[0]} negative and {per_class[1]} "
                         "positive; probe more reviews (max_reviews=)")
    folds = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    return list(folds.split(np.zeros((len(labels), 1)), labels, groups))


def ridge_probe(x_train, y_train, x_test, y_test, folds) -> tuple[np.ndarray, np.ndarray]:
    """Test R^2 (S,) of ridge regressions on standardised features for S targets (N, S) at once, and each target's
    penalty alpha (S,), chosen by the mean R^2 over the grouped folds of the training samples."""
    from sklearn.linear_model import Ridge
    from sklearn.metrics import r2_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    cv = np.zeros((len(ALPHAS), y_train.shape[1]))  # (alphas, S): summed validation R^2
    for fit_rows, val_rows in folds:
        scaler = StandardScaler().fit(x_train[fit_rows])
        x_fit, x_val = scaler.transform(x_train[fit_rows]), scaler.transform(x_train[val_rows])
        for a, alpha in enumerate(ALPHAS):
            predicted = Ridge(alpha=alpha).fit(x_fit, y_train[fit_rows]).predict(x_val)
            cv[a] += r2_score(y_train[val_rows], predicted, multioutput="raw_values")
    alphas = np.asarray(ALPHAS)[cv.argmax(0)]  # (S,)
    probe = make_pipeline(StandardScaler(), Ridge(alpha=alphas)).fit(x_train, y_train)  # one alpha per target
    return r2_score(y_test, probe.predict(x_test), multioutput="raw_values"), alphas


def logistic_probe(x_train, y_train, x_test, y_test, folds) -> tuple[float, float]:
    """Test accuracy of a logistic regression on standardised features, and its C, chosen by the mean log loss over
    the grouped folds of the training samples."""
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    search = LogisticRegressionCV(Cs=list(CS), cv=folds, scoring="neg_log_loss", max_iter=2000, l1_ratios=(0.0,),
                                  use_legacy_attributes=False)
    probe = make_pipeline(StandardScaler(), search).fit(x_train, y_train)
    return float((probe.predict(x_test) == y_test).mean()), float(search.C_)


def probe_features(train, test, train_sample: Sample, test_sample: Sample, seed: int) -> dict:
    """Scores and chosen penalties of every probe on one model's features (extract's output for each split):
    (layers, scales + 1) matrices for the scale probes (the last column: the label) and (layers,) for the final
    state."""
    (train_steps, train_finals), (test_steps, test_finals) = train, test
    y_doc_train, y_doc_test = train_sample.labels[train_sample.review], test_sample.labels[test_sample.review]
    step_folds = grouped_folds(train_sample.review, y_doc_train, seed)
    review_folds = grouped_folds(np.arange(len(train_sample.labels)), train_sample.labels, seed)
    scores, penalties, final, final_penalty = [], [], [], []
    for x_train, x_test in zip(train_steps, test_steps):
        r2, alphas = ridge_probe(x_train, train_sample.targets, x_test, test_sample.targets, step_folds)
        accuracy, c = logistic_probe(x_train, y_doc_train, x_test, y_doc_test, step_folds)
        scores.append([*r2.tolist(), accuracy])
        penalties.append([*alphas.tolist(), c])
    for x_train, x_test in zip(train_finals, test_finals):
        accuracy, c = logistic_probe(x_train, train_sample.labels, x_test, test_sample.labels, review_folds)
        final.append(accuracy)
        final_penalty.append(c)
    return {"scores": scores, "penalties": penalties, "final": final, "final_penalties": final_penalty}


def best_layers(layers: list[str], columns: list[str], matrix) -> dict[str, str]:
    """For each column, the layer with the highest value."""
    values = np.asarray(matrix, dtype=float)  # (layers, columns)
    return {col: layers[int(np.nanargmax(values[:, c]))] for c, col in enumerate(columns)}


def layer_names(layers: list[int]) -> list[str]:
    return ["embeddings" if k == 0 else f"layer {k}" for k in layers]


def probe_model(model, control, train: ReviewDataset, test: ReviewDataset, targets: StepTargets,
                steps_per_review: int = 8, max_reviews: int = 2000, layers: list[int] | None = None,
                seed: int = 0) -> tuple[dict, dict]:
    """Probe the trained model and its control on the same sampled reviews and steps. Returns the scale probes'
    result (probe_scales.json) and the final-state probe's (probe.json)."""
    layers = list(range(model.hparams.layers + 1)) if layers is None else sorted(layers)
    rng = np.random.default_rng(seed)
    train_sample = Sample(train, targets.of["train"], max_reviews, steps_per_review, rng)
    test_sample = Sample(test, targets.of["test"], max_reviews, steps_per_review, rng)
    runs = {name: probe_features(extract(m, train_sample, layers), extract(m, test_sample, layers), train_sample,
                                 test_sample, seed) for name, m in (("trained", model), ("control", control))}
    trained, control_scores = np.asarray(runs["trained"]["scores"]), np.asarray(runs["control"]["scores"])
    names, columns = layer_names(layers), targets.columns + ["doc"]
    n_targets = len(targets.columns)
    difference = (trained - control_scores).tolist()
    y_test = test_sample.labels[test_sample.review]
    scales_result = {
        "layers": names, "layer_index": layers,
        "layer_note": "layer 0 = the word embeddings, layer k = the k-th recurrent layer (weight_*_l{k-1}); "
                      + ("forward direction only (the backward half at step t has read the future)"
                         if model.hparams.bidirectional else "unidirectional"),
        "targets": targets.source, "axis": targets.axis, "columns": columns,
        "metric": ["r2"] * n_targets + ["accuracy"],
        "trained": trained.tolist(), "control": control_scores.tolist(), "difference": difference,
        "best_layer": {"by_difference": best_layers(names, columns, difference),
                       "by_trained": best_layers(names, columns, trained)},
        "doc_chance": float(max(y_test.mean(), 1 - y_test.mean())),
        "penalty": {"kind": ["ridge alpha"] * n_targets + ["logistic C"],
                    "trained": runs["trained"]["penalties"], "control": runs["control"]["penalties"]},
        "train_reviews": len(train_sample.ids), "test_reviews": len(test_sample.ids),
        "train_steps": len(train_sample.step), "test_steps": len(test_sample.step),
        "settings": {"columns": targets.columns, "steps_per_review": steps_per_review, "max_reviews": max_reviews,
                     "layers": layers, "sample_seed": seed},
        "cv": {"folds": FOLDS, "grouped_by": "review", "alphas": list(ALPHAS), "Cs": list(CS),
               "chosen_by": "mean validation R^2 (ridge, per scale) or log loss (logistic) over folds of the "
                            "training reviews"},
    }
    final_result = {"train_reviews": len(train_sample.ids), "test_reviews": len(test_sample.ids),
                    "layers": ["embeddings (mean)" if k == 0 else f"layer {k}" for k in layers],
                    "accuracy": runs["trained"]["final"], "control": runs["control"]["final"],
                    "difference": [a - b for a, b in zip(runs["trained"]["final"], runs["control"]["final"])],
                    "C": {"trained": runs["trained"]["final_penalties"], "control": runs["control"]["final_penalties"]}}
    return scales_result, final_result




# ----------------------------------------------------------------------------------------------
# Figures






# ----------------------------------------------------------------------------------------------
# One run


def check_layers(layers: list[int] | None, depth: int) -> list[int]:
    """The chosen layers, every one of them in this model (0 = embeddings .. depth = top recurrent layer)."""
    if layers is None:
        return list(range(depth + 1))
    wrong = [k for k in layers if not 0 <= k <= depth]
    if wrong:
        raise UsageError(f"layers={','.join(map(str, layers))}: this model has no layer {wrong[0]}: expected layers "
                         f"0 (the embeddings) to {depth} (its top recurrent layer)")
    return layers


MOVED_TARGETS = {"stacked_rnn.data.IMDBDataModule": "stacked_rnn.tasks.imdb.IMDBDataModule"}  # runs from before tasks/


def run_probe(ckpt: str, max_reviews: int = 2000, out: str | None = None, scales=DEFAULT_SCALES,
              steps_per_review: int = 8, layers: list[int] | None = None, sample_seed: int = 0,
              **data_overrides) -> tuple[dict, dict]:
    """Probe a run's checkpoint and its untrained control; writes probe_scales.json/png and probe.json/png into the
    run folder (or out) and the figures to the run's TensorBoard. Returns both results (scale probes, final state).
    `scales` are IMDB's window sizes; a task that states its own targets ignores them. A task=lm run is handed to
    stacked_rnn.probe_lm.run_lm_probe (default sizes, these layers and seed) and its one result dict returned."""
    from hydra.utils import instantiate

    path = find_checkpoint(ckpt)
    model, data_state = load(path)
    if model.hparams.task == "lm":  # a character language model: its own probes (stacked_rnn.probe_lm), one dict
        from stacked_rnn.probe_lm import run_lm_probe

        return run_lm_probe(str(path), out=out, layers=layers, sample_seed=sample_seed, **data_overrides)
    run_dir = run_folder(path)
    results = read_results(run_dir)
    config = results["config"]
    if model.hparams.input_dim or model.hparams.task != "classify" or not data_state.get("vocab"):
        raise CheckpointError(f"{path} is not a text classifier (task={model.hparams.task}, input_dim="
                              f"{model.hparams.input_dim}): the probes read token-level targets and document labels")
    layers = check_layers(layers, model.hparams.layers)
    data_cfg = dict(config["data"])  # the probe rebuilds the run's training data
    data_cfg["_target_"] = MOVED_TARGETS.get(data_cfg["_target_"], data_cfg["_target_"])
    data_cfg.update({k: v for k, v in data_overrides.items() if v is not None})
    datamodule = instantiate(data_cfg)
    datamodule.setup("fit")
    if datamodule.vocab != data_state["vocab"]:
        raise CheckpointError("the rebuilt data has a different vocabulary from the checkpoint's: give the "
                              "archive/root and cache_dir the run was trained with")
    control = initial_model(dict(model.hparams), config["seed"])
    targets = StepTargets.for_task(datamodule, scales)
    scales_result, final_result = probe_model(model, control, datamodule.datasets["train"],
                                              datamodule.datasets["test"], targets, steps_per_review,
                                              max_reviews, layers, sample_seed)
    hp = model.hparams
    about = {"checkpoint": str(path), "run_seed": config["seed"], "run_test_acc": results.get("test_acc"),
             "model": {k: hp[k] for k in ("cell", "layers", "units", "embed_dim", "bidirectional", "residual")},
             "control_model": f"StackedRNNClassifier(**hparams) after torch.manual_seed({config['seed']}): the "
                              "untrained start of the run"}
    if targets.lexicon is not None:  # IMDB: where the word polarities came from
        scales_result |= {"scales": list(scales), "lexicon": lexicon_summary(targets.lexicon,
                                                                             datamodule.datasets["train"],
                                                                             datamodule.vocab)}
    scales_result = about | scales_result
    final_result = about | final_result
    name = f"{hp.cell} x {hp.layers}{' bidirectional' if hp.bidirectional else ''}"
    figures = {
        "probe": plot_final(final_result, f"{name}: logistic probe on each layer's final state"),
        "probe_scales": plot_scales(scales_result["layers"], scales_result["columns"], scales_result["trained"],
                                    scales_result["control"], scales_result["difference"],
                                    f"{name}: linear probes at {steps_per_review} steps of "
                                    f"{scales_result['test_reviews']} test reviews; text: trained score, untrained "
                                    "control", axis=targets.axis),
    }
    out_dir = Path(out) if out else run_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "probe.json").write_text(json.dumps(final_result, indent=2))
    (out_dir / "probe_scales.json").write_text(json.dumps(scales_result, indent=2))
    for file, fig in figures.items():
        fig.savefig(out_dir / f"{file}.png", dpi=120)
    if has_tensorboard(run_dir):  # the run logged to TensorBoard (logger=tensorboard, the default)
        from torch.utils.tensorboard import SummaryWriter

        with SummaryWriter(str(run_dir)) as writer:
            for file, fig in figures.items():
                writer.add_figure("probe/accuracy_by_layer" if file == "probe" else "probe/scales", fig, close=False)
    import matplotlib.pyplot as plt

    for fig in figures.values():
        plt.close(fig)
    return scales_result, final_result


# ----------------------------------------------------------------------------------------------
# A sweep: probe its jobs, then the mean and 95% CI of every cell over seeds


def probe_sweep(sweep_dir: str, jobs: str = "*", **probe_args) -> dict:
    """Probe every finished IMDB job of a sweep (folders matching the glob `jobs`, or any of several globs joined by
    '|', e.g. each configuration at its tuned learning rate) that lacks probe_scales.json, then
    group the jobs that differ only in seed and write probe_scales_summary.json and probe_scales_<config>.png into
    the sweep folder: per configuration and cell, the mean and 95% CI (Student t) of trained, control and
    difference."""
    from stacked_rnn.report import swept_values
    from stacked_rnn.report_stats import config_name, summarise

    sweep = Path(sweep_dir).expanduser()
    if not sweep.is_dir():
        raise CheckpointError(f"sweep={sweep_dir} is not a folder")
    globs = jobs.split("|")
    folders = [d for d in sorted(sweep.iterdir()) if d.is_dir() and any(fnmatch.fnmatch(d.name, g) for g in globs)
               and (d / "results.json").is_file()]
    results = {d: json.loads((d / "results.json").read_text()) for d in folders}
    done = [d for d, r in results.items() if r.get("status", "ok") == "ok" and r.get("metric", "acc") == "acc"]
    if not done:
        raise CheckpointError(f"sweep={sweep_dir} jobs={jobs}: no finished text-classification job folder (with "
                              "results.json) matches")
    for job in done:
        if not (job / "probe_scales.json").is_file():
            print(f"probing {job.name}", file=sys.stderr)
            run_probe(str(job), **probe_args)
    groups: dict[str, list[tuple[str, dict]]] = {}
    for job in done:
        groups.setdefault(config_name(swept_values(job.name)), []).append(
            (job.name, json.loads((job / "probe_scales.json").read_text())))
    configs = []
    for name, members in groups.items():
        first_job, first = members[0]
        for job, result in members[1:]:
            if (result["layers"], result["columns"]) != (first["layers"], first["columns"]):
                raise CheckpointError(f"jobs {first_job} and {job} were probed at different layers or scales: delete "
                                      "their probe_scales.json to probe them again with the same settings")
        entry = {"config": name, "jobs": [job for job, _ in members], "n": len(members), "layers": first["layers"],
                 "columns": first["columns"], "metric": first["metric"], "axis": first.get("axis")}
        for what in ("trained", "control", "difference"):
            stacked = np.asarray([result[what] for _, result in members], dtype=float)  # (n, layers, columns)
            cells = [[summarise(stacked[:, r, c].tolist()) for c in range(stacked.shape[2])]
                     for r in range(stacked.shape[1])]
            entry[what] = {stat: [[cell[stat] for cell in row] for row in cells] for stat in ("mean", "sd", "ci95")}
        entry["best_layer"] = {"by_difference": best_layers(entry["layers"], entry["columns"],
                                                            entry["difference"]["mean"]),
                               "by_trained": best_layers(entry["layers"], entry["columns"], entry["trained"]["mean"])}
        configs.append(entry)
    summary = {"sweep": str(sweep), "jobs": jobs, "configs": configs}
    (sweep / "probe_scales_summary.json").write_text(json.dumps(summary, indent=2))
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(sweep / "report")) as writer:
        for entry in configs:
            ci = [[np.nan if v is None else v for v in row] for row in entry["difference"]["ci95"]]
            fig = plot_scales(entry["layers"], entry["columns"], entry["trained"]["mean"], entry["control"]["mean"],
                              entry["difference"]["mean"], f"{entry['config']}: mean of {entry['n']} seeds; text: "
                              "trained, control, ±95% CI of the difference", spread=ci, axis=entry.get("axis"))
            fig.savefig(sweep / f"probe_scales_{entry['config'].replace('/', '_')}.png", dpi=120)
            writer.add_figure(f"probe/scales/{entry['config']}", fig)
    return summary


# ----------------------------------------------------------------------------------------------
# Command line


def int_list(low: int):
    """An argparse type: comma-separated distinct integers >= low, returned sorted."""
    import argparse

    def parse(value: str) -> list[int]:
        items = value.split(",")
        if not all(i.isdigit() and int(i) >= low for i in items) or len(set(map(int, items))) < len(items):
            raise argparse.ArgumentTypeError(f"{value!r} is not allowed: expected distinct integers >= {low}, "
                                             "comma-separated")
        return sorted(int(i) for i in items)

    return parse


USAGE = ("%(prog)s ckpt=RUN_OR_CKPT | sweep=SWEEP_DIR [jobs=GLOB] [scales=1,4,16,64] [steps_per_review=8]\n"
         "       [max_reviews=2000] [layers=0,1,...] [sample_seed=0] [out=DIR] [archive=PATH | root=DIR]\n"
         "       [cache_dir=DIR]")
EXAMPLES = """\
  python -m stacked_rnn.probe ckpt=outputs/2026-11-24/15-13-02
  python -m stacked_rnn.probe ckpt=RUN scales=1,4,16,64 steps_per_review=8 max_reviews=2000
  python -m stacked_rnn.probe sweep=outputs/multirun/2026-11-24/15-13-02 jobs='cell=gru,*'"""


def build_parser() -> RunParser:
    parser = RunParser("python -m stacked_rnn.probe", USAGE, "Linear probes on every layer (0 = the embeddings, k = "
                       "the k-th recurrent layer), trained model against\nits untrained start: at sampled steps, the "
                       "mean word polarity of the last w tokens (R^2) and the\nreview's label (accuracy) -> "
                       "probe_scales.json/png; from each layer's final state, the label ->\nprobe.json/png. sweep= "
                       "probes every job of a sweep that lacks probe_scales.json and writes\n"
                       "probe_scales_summary.json and one heatmap per configuration (mean over seeds). A task=lm run\n"
                       "gets the language-model probes: python -m stacked_rnn.probe_lm --help.", EXAMPLES,
                       require_ckpt=False)
    parser.add_key("sweep", "a sweep folder instead of ckpt=: probe its jobs and average over seeds", metavar="DIR")
    parser.add_key("jobs", "with sweep=: the job folders to include, a glob or globs joined by | (default: "
                   "%(default)s)", default="*",
                   metavar="GLOB")
    parser.add_key("scales", "window sizes w in tokens (default: 1,4,16,64)", type=int_list(1),
                   default=list(DEFAULT_SCALES), metavar="W,W,...")
    parser.add_key("steps_per_review", "steps sampled in each review (default: %(default)s)", type=at_least(1),
                   default=8, metavar="N")
    parser.add_key("max_reviews", "reviews of each split to probe (default: %(default)s)", type=at_least(10),
                   default=2000, metavar="N")
    parser.add_key("layers", "the layers to probe (default: all; 0 = the embeddings)", type=int_list(0),
                   metavar="K,K,...")
    parser.add_key("sample_seed", "seed of the sampled reviews and steps (default: %(default)s)", type=at_least(0),
                   default=0, metavar="N")
    parser.add_key("out", "folder for the probe files (default: the run folder)", metavar="DIR")
    parser.add_key("archive", "the IMDB archive, when not where the run read it (data.archive)", metavar="PATH")
    parser.add_key("root", "an extracted aclImdb/ folder instead (data.root)", metavar="DIR")
    parser.add_key("cache_dir", "the token cache, when not the run's (data.cache_dir)", metavar="DIR")
    return parser


def print_run(result: dict, final: dict | None = None) -> None:
    print(f"probes on {result['train_reviews']} training and {result['test_reviews']} test reviews, "
          f"{result['settings']['steps_per_review']} steps each; trained (control) [difference]\n")
    print("| layer | " + " | ".join(result["columns"]) + " |\n|---|" + "---|" * len(result["columns"]))
    for r, name in enumerate(result["layers"]):
        cells = [f"{t:.3f} ({c:.3f}) [{d:+.3f}]" for t, c, d in
                 zip(result["trained"][r], result["control"][r], result["difference"][r])]
        print(f"| {name} | " + " | ".join(cells) + " |")
    best = result["best_layer"]
    print("\nbest layer by difference: " + ", ".join(f"{c}: {v}" for c, v in best["by_difference"].items()))
    print("best layer by trained score: " + ", ".join(f"{c}: {v}" for c, v in best["by_trained"].items()))
    if final:
        print("\n| final state | test accuracy | control |\n|---|---|---|")
        for name, acc, ctl in zip(final["layers"], final["accuracy"], final["control"]):
            print(f"| {name} | {acc:.4f} | {ctl:.4f} |")


def main(argv: list[str] | None = None) -> int:
    from stacked_rnn import probe_lm

    argv = sys.argv[1:] if argv is None else list(argv)
    if probe_lm.names_lm_run(argv):  # ckpt= names a task=lm run: the language-model probes and their options
        return probe_lm.main(argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if (args.ckpt is None) == (args.sweep is None):
            parser.error("give ckpt=RUN_OR_CKPT (one run) or sweep=SWEEP_DIR (every job of a sweep), not "
                         + ("both" if args.ckpt else "neither"))
        probe_args = dict(max_reviews=args.max_reviews, out=args.out, scales=tuple(args.scales),
                          steps_per_review=args.steps_per_review, layers=args.layers, sample_seed=args.sample_seed,
                          archive=args.archive, root=args.root, cache_dir=args.cache_dir)
        if args.sweep is not None:
            if args.out is not None:
                parser.error("out= goes with ckpt= only: a sweep's probes are written into each job's folder")
            summary = probe_sweep(args.sweep, args.jobs, **probe_args)
        else:
            result, final = run_probe(args.ckpt, **probe_args)
    except (UsageError, CheckpointError) as err:
        return parser.fail(err)
    if args.sweep is None:
        print_run(result, final)
        return 0
    for entry in summary["configs"]:
        best = entry["best_layer"]
        print(f"{entry['config']} (n={entry['n']}): best layer by mean difference: "
              + ", ".join(f"{c}: {v}" for c, v in best["by_difference"].items())
              + "; by mean trained score: " + ", ".join(f"{c}: {v}" for c, v in best["by_trained"].items()))
    print(f"\nwrote probe_scales_summary.json and probe_scales_<config>.png into {args.sweep}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
