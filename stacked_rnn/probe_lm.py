"""Layer-wise probes of a character language model (task=lm, data=text_lm): what does each layer hold about the
text behind step t? `python -m stacked_rnn.probe ckpt=LM_RUN` (or `python -m stacked_rnn.probe_lm ckpt=LM_RUN`).

The questions: does a higher layer remember further back, and where do characters become words? Layers are
numbered as in stacked_rnn.probe: layer 0 is the character embeddings (model.inputs), layer k the k-th recurrent
layer. Every column is a multinomial logistic regression from one layer's state h_t to one target, scored by test
accuracy beside the majority-class baseline:

- "t-k" (k in lags, default 1, 2, 4, 8, 16, 32): the character k steps back. k = 0 (the character at t) is allowed
  but trivial for the embeddings; k >= 1 is the memory question.
- "word pos": the position of the character at t inside its word (0 = the first letter), capped: class `cap`
  means "cap or later". A word is a maximal run of letters and apostrophes that holds a letter; steps outside a
  word (spaces, punctuation, digits, <unk>) are not probed.
- "word": at the last character of a word, which of the `top_words` most frequent words of the training split it
  is (lower-cased); the ends of other words are not probed. "Has the state at the word's end become the word?"

Windows of `window` characters are read from a fresh state at seeded random starts of the training split (the
probes are fit there) and of the test split (they are scored there); in each window `steps_per_window` steps
t >= max(lags) are sampled per family (any step for t-k; steps inside a word for word pos; ends of top words whose
first letter lies in the window for word). Every probe's C is chosen by cross-validated accuracy within the
training steps (folds grouped by window) and the whole thing is run again on the untrained control
(stacked_rnn.probe.initial_model: same shape, same seed). Writes probe_lm.json and probe_lm.png (colour:
trained - control) into the run folder (or out=), and the figure to its TensorBoard as probe/lm.
"""

from __future__ import annotations

import json
import re
import sys
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from stacked_rnn.checkpoint import (CheckpointError, RunParser, UsageError, at_least, find_checkpoint, load,
                                    read_results, run_folder)
from stacked_rnn.diagnostics import layer_outputs
from stacked_rnn.loggers import has_tensorboard
from stacked_rnn.probe import best_layers, check_layers, initial_model, int_list, layer_names

DEFAULT_LAGS = (1, 2, 4, 8, 16, 32)
CS = (1e-2, 1e-1, 1e0)  # logistic C grid (larger C: slow on nearly separable states, little gain at these sizes)
FOLDS = 3  # cross-validation folds within the training steps, grouped by window
MAX_ITER = 100  # lbfgs iterations per fit: 300 changes test accuracy by < 0.01 on tiny Shakespeare, costs 2x
FAMILIES = ("char", "position", "word")  # which steps a column reads: any step, inside a word, at a top word's end
WORD = re.compile(r"(?:[^\W\d_]|')+")  # a maximal run of letters and apostrophes
IMDB_ONLY = ("sweep", "jobs", "scales", "steps_per_review", "max_reviews")  # probe.py options with no LM meaning


# ----------------------------------------------------------------------------------------------
# Targets


class TextTargets:
    """Per-step targets of one split's character stream ids (N,): position (N,) of each character inside its word
    (-1 outside a word), word_start (N,) the step of its word's first letter (-1 outside), word (N,) at the last
    character of a word the index of that word in `top` (-1 elsewhere, and at the ends of other words)."""

    def __init__(self, ids: np.ndarray, vocab: list[str], top: list[str] | None = None, top_words: int = 100):
        self.ids = np.asarray(ids, dtype=np.int64)  # (N,)
        text = "".join(vocab[i] if len(vocab[i]) == 1 else "\0" for i in self.ids)  # <pad>, <unk>: not a letter
        runs = [m for m in WORD.finditer(text) if any(c.isalpha() for c in m.group())]  # a lone ' is no word
        self.position = np.full(len(text), -1, dtype=np.int64)
        self.word_start = np.full(len(text), -1, dtype=np.int64)
        for m in runs:
            self.position[m.start() : m.end()] = np.arange(m.end() - m.start())
            self.word_start[m.start() : m.end()] = m.start()
        words = [m.group().lower() for m in runs]
        # the top words: this split's own (the training split), else the ones given (the test split reads the train's)
        self.top = top if top is not None else [w for w, _ in Counter(words).most_common(top_words)]
        index = {w: i for i, w in enumerate(self.top)}
        self.word = np.full(len(text), -1, dtype=np.int64)
        for m, w in zip(runs, words):
            self.word[m.end() - 1] = index.get(w, -1)

    def eligible(self, family: str) -> np.ndarray:
        """(N,) bool: the steps a family's columns read (char: every step)."""
        return {"char": np.ones(len(self.ids), dtype=bool), "position": self.position >= 0,
                "word": self.word >= 0}[family]


class WindowSample:
    """`windows` windows of `window` characters at seeded random starts of one split, and per family the sampled
    (window, step) pairs: up to `steps_per_window` distinct steps t >= min_step of each window, t counted from the
    window's first character (the model's fresh state)."""

    def __init__(self, targets: TextTargets, windows: int, window: int, steps_per_window: int, min_step: int,
                 rng: np.random.Generator):
        n = len(targets.ids)
        if n < window:
            raise UsageError(f"window={window} is longer than this split ({n} characters): give a smaller window=")
        starts = n - window + 1  # distinct starts while there are enough (a short split repeats some)
        self.starts = np.sort(rng.choice(starts, size=windows, replace=windows > starts))  # (W,)
        self.window, self.rows, self.steps = window, {}, {}
        for family in FAMILIES:
            ok = targets.eligible(family)
            rows, steps = [], []
            for w, s in enumerate(self.starts):
                t = min_step + np.flatnonzero(ok[s + min_step : s + window])  # candidate steps in the window
                if family == "word":
                    t = t[targets.word_start[s + t] >= s]  # the whole word lies in the window
                pick = np.sort(rng.choice(t, size=min(steps_per_window, len(t)), replace=False))
                rows.append(np.full(len(pick), w)), steps.append(pick)
            self.rows[family], self.steps[family] = np.concatenate(rows), np.concatenate(steps)  # (N_f,) each

    def at(self, family: str) -> np.ndarray:
        """Positions (N_f,) in the split's stream of a family's sampled steps."""
        return self.starts[self.rows[family]] + self.steps[family]


def column_targets(targets: TextTargets, sample: WindowSample, lags, cap: int) -> list[tuple[str, str, np.ndarray]]:
    """[(column, family, class per sampled step (N_f,))]: the character at t-k for each lag, the capped position
    inside the word, the top word ending at t."""
    char_at = sample.at("char")
    columns = [(f"t-{k}", "char", targets.ids[char_at - k]) for k in lags]
    columns.append(("word pos", "position", np.minimum(targets.position[sample.at("position")], cap)))
    columns.append(("word", "word", targets.word[sample.at("word")]))
    return columns


# ----------------------------------------------------------------------------------------------
# Features and probes


@torch.no_grad()
def extract(model, ids: torch.Tensor, sample: WindowSample, layers: list[int], batch_size: int = 64) -> dict:
    """{family: per chosen layer its states at the family's sampled steps (N_f, F)}, each window read from a fresh
    state in eval mode; layer 0 = the embeddings model.inputs(ids) (E), layer k = the k-th layer's outputs (H)."""
    model.eval()
    feats = {f: [None] * len(layers) for f in FAMILIES}
    for first in range(0, len(sample.starts), batch_size):
        starts = sample.starts[first : first + batch_size]
        batch = torch.stack([ids[s : s + sample.window] for s in starts])  # (B, T)
        lengths = torch.full((len(starts),), sample.window, dtype=torch.int64)
        seqs = [model.inputs(batch)] + layer_outputs(model, batch, lengths)  # layers x (B, T, F)
        for family in FAMILIES:
            chosen = np.flatnonzero((sample.rows[family] >= first) & (sample.rows[family] < first + len(starts)))
            at = (torch.from_numpy(sample.rows[family][chosen] - first), torch.from_numpy(sample.steps[family][chosen]))
            for j, k in enumerate(layers):
                if feats[family][j] is None:
                    feats[family][j] = np.empty((len(sample.rows[family]), seqs[k].shape[-1]), dtype=np.float32)
                feats[family][j][chosen] = seqs[k][at].float().numpy()
    return feats


def logistic_probe(x_train, y_train, x_test, y_test, groups, seed: int) -> tuple[float, float]:
    """Test accuracy of a multinomial logistic regression on standardised features, and its C, chosen from CS by
    mean validation accuracy over folds of the training steps grouped by window (each fold's fits warm-started
    along the ascending Cs). A target with one training class is scored as that constant guess (C: nan). One BLAS
    thread: at these sizes threads only contend (LogisticRegressionCV took 40 s a probe on 2 busy cores)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    if len(np.unique(y_train)) < 2:
        return float((y_test == y_train[0]).mean()), float("nan")
    n_splits = min(FOLDS, len(np.unique(groups)))
    if n_splits < 2:
        raise UsageError("too few training windows to cross-validate: probe more windows (windows=)")
    folds = GroupKFold(n_splits=n_splits, shuffle=True, random_state=seed).split(x_train, y_train, groups)
    hits = np.zeros(len(CS))  # validation accuracy summed over folds
    with threadpool_limits(1), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # MAX_ITER caps the time; the CV scores what it reached
        for fit_rows, val_rows in folds:
            scaler = StandardScaler().fit(x_train[fit_rows])
            x_fit, x_val = scaler.transform(x_train[fit_rows]), scaler.transform(x_train[val_rows])
            probe = LogisticRegression(max_iter=MAX_ITER, warm_start=True)
            for i, c in enumerate(CS):
                probe.set_params(C=c).fit(x_fit, y_train[fit_rows])
                hits[i] += (probe.predict(x_val) == y_train[val_rows]).mean()
        c = CS[int(hits.argmax())]
        scaler = StandardScaler().fit(x_train)
        probe = LogisticRegression(C=c, max_iter=MAX_ITER).fit(scaler.transform(x_train), y_train)
    return float((probe.predict(scaler.transform(x_test)) == y_test).mean()), float(c)


def majority(y_train: np.ndarray, y_test: np.ndarray) -> float:
    """Test accuracy of always naming the most frequent training class: the baseline of a column."""
    values, counts = np.unique(y_train, return_counts=True)
    return float((y_test == values[counts.argmax()]).mean())


def probe_lm_model(model, control, train_ids: torch.Tensor, test_ids: torch.Tensor, vocab: list[str],
                   lags=DEFAULT_LAGS, windows: int = 300, test_windows: int = 150, window: int = 256,
                   steps_per_window: int = 8, top_words: int = 100, position_cap: int = 10,
                   layers: list[int] | None = None, seed: int = 0) -> dict:
    """Probe the trained model and its control on the same windows and steps of the training split (fit) and the
    test split (score). Returns probe_lm.json's scores, baselines, penalties, sample sizes and settings."""
    lags = sorted(set(lags))
    if window <= max(lags):
        raise UsageError(f"window={window} must exceed the longest lag ({max(lags)}): t-k has to lie in the window")
    layers = check_layers(layers, model.hparams.layers)
    rng = np.random.default_rng(seed)
    train_t = TextTargets(train_ids.numpy(), vocab, top_words=top_words)
    test_t = TextTargets(test_ids.numpy(), vocab, top=train_t.top)
    train_s = WindowSample(train_t, windows, window, steps_per_window, max(lags), rng)
    test_s = WindowSample(test_t, test_windows, window, steps_per_window, max(lags), rng)
    train_cols = column_targets(train_t, train_s, lags, position_cap)
    test_cols = column_targets(test_t, test_s, lags, position_cap)
    for (column, family, y), (_, _, y_test) in zip(train_cols, test_cols):
        if len(y) == 0 or len(y_test) == 0:
            raise UsageError(f"no {column!r} steps were sampled (the text has no words of letters in the windows): "
                             "probe a text with words, or more windows")
    runs = {}
    for name, m in (("trained", model), ("control", control)):
        train_f, test_f = extract(m, train_ids, train_s, layers), extract(m, test_ids, test_s, layers)
        scores, penalties = [], []
        for j in range(len(layers)):
            row = [logistic_probe(train_f[f][j], y, test_f[f][j], y_test, train_s.rows[f], seed)
                   for (_, f, y), (_, _, y_test) in zip(train_cols, test_cols)]
            scores.append([a for a, _ in row])
            penalties.append([c for _, c in row])
        runs[name] = (scores, penalties)
    trained, control_scores = np.asarray(runs["trained"][0]), np.asarray(runs["control"][0])
    names, columns = layer_names(layers), [c for c, _, _ in train_cols]
    difference = (trained - control_scores).tolist()
    return {
        "layers": names, "layer_index": layers,
        "layer_note": "layer 0 = the character embeddings (model.inputs), layer k = the k-th recurrent layer "
                      "(weight_*_l{k-1}); each window read from a fresh state",
        "columns": columns, "metric": "accuracy",
        "column_note": {
            "t-k": "the character k steps before t (k = 0: the character at t), from the state at t",
            "word pos": f"position of the character at t in its word (0 = first letter; {position_cap} = "
                        f"{position_cap} or later); a word is a maximal run of letters and apostrophes holding a "
                        "letter; steps outside words are not probed",
            "word": f"at the last character of a word: which of the {len(train_t.top)} most frequent (lower-cased) "
                    "words of the training split it is; the ends of other words are not probed"},
        "trained": trained.tolist(), "control": control_scores.tolist(), "difference": difference,
        "best_layer": {"by_difference": best_layers(names, columns, difference),
                       "by_trained": best_layers(names, columns, trained)},
        "baselines": {"majority": [majority(y, y_test) for (_, _, y), (_, _, y_test) in zip(train_cols, test_cols)],
                      "note": "test accuracy of always naming the most frequent training class"},
        "classes": [int(len(np.unique(y))) for _, _, y in train_cols],
        "penalty": {"kind": "logistic C", "trained": runs["trained"][1], "control": runs["control"][1]},
        "samples": {split: {"windows": len(s.starts), "characters": len(t.ids),
                            "steps": {c: int(len(y)) for c, _, y in cols}}
                    for split, s, t, cols in (("train", train_s, train_t, train_cols),
                                              ("test", test_s, test_t, test_cols))},
        "top_words": train_t.top,
        "settings": {"lags": lags, "window": window, "windows": windows, "test_windows": test_windows,
                     "steps_per_window": steps_per_window, "min_step": max(lags), "top_words": top_words,
                     "position_cap": position_cap, "layers": layers, "fit_split": "train", "score_split": "test"},
        "seeds": {"sample": seed, "cv": seed},
        "cv": {"folds": FOLDS, "grouped_by": "window", "Cs": list(CS), "chosen_by": "mean validation accuracy",
               "probe": f"multinomial logistic regression (lbfgs, max_iter {MAX_ITER}) on standardised features"},
    }


# ----------------------------------------------------------------------------------------------
# One run


def run_lm_probe(ckpt: str, out: str | None = None, lags=DEFAULT_LAGS, windows: int = 300, test_windows: int = 150,
                 window: int = 256, steps_per_window: int = 8, top_words: int = 100, position_cap: int = 10,
                 layers: list[int] | None = None, sample_seed: int = 0, **data_overrides) -> dict:
    """Probe a language-model run's checkpoint and its untrained control; writes probe_lm.json and probe_lm.png
    into the run folder (or out) and the figure to the run's TensorBoard (probe/lm). Returns the result.
    data_overrides (path, cache_dir, archive, root) replace the run's data settings where the corpus moved."""
    from hydra.utils import instantiate

    from stacked_rnn.probe_plots import plot_lm
    from stacked_rnn.tasks.imdb_corpus import DataError

    path = find_checkpoint(ckpt)
    model, data_state = load(path)
    if model.hparams.task != "lm":
        raise CheckpointError(f"{path} is not a language model (task={model.hparams.task}): its probes are "
                              "python -m stacked_rnn.probe's")
    run_dir = run_folder(path)
    results = read_results(run_dir)
    config = results["config"]
    data_cfg = dict(config["data"]) | {"progress": False}
    data_cfg.update({k: v for k, v in data_overrides.items() if v is not None})
    try:
        datamodule = instantiate(data_cfg)
        datamodule.setup("fit")
    except DataError as err:
        raise CheckpointError(f"cannot rebuild the run's text: {err} (give path= where the corpus is now)") from err
    if datamodule.vocab != data_state.get("vocab"):
        raise CheckpointError("the rebuilt text has a different vocabulary from the checkpoint's: give the path= "
                              "(and limit) the run was trained with")
    control = initial_model(dict(model.hparams), config["seed"])
    result = probe_lm_model(model, control, datamodule.splits["train"], datamodule.splits["test"], datamodule.vocab,
                            lags, windows, test_windows, window, steps_per_window, top_words, position_cap, layers,
                            sample_seed)
    hp = model.hparams
    result = {"checkpoint": str(path), "run_seed": config["seed"], "run_test_bpc": results.get("test_bpc"),
              "model": {k: hp[k] for k in ("cell", "layers", "units", "embed_dim", "residual", "norm")},
              "control_model": f"StackedRNNClassifier(**hparams) after torch.manual_seed({config['seed']}): the "
                               "untrained start of the run"} | result
    result["seeds"]["control"] = config["seed"]
    fig = plot_lm(result["layers"], result["columns"], result["trained"], result["control"], result["difference"],
                  result["baselines"]["majority"],
                  f"{hp.cell} x {hp.layers}: logistic probes at {steps_per_window} steps of {test_windows} test "
                  f"windows of {window} characters; text: trained score, untrained control")
    out_dir = Path(out) if out else run_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "probe_lm.json").write_text(json.dumps(result, indent=2))
    fig.savefig(out_dir / "probe_lm.png", dpi=120)
    if has_tensorboard(run_dir):  # the run logged to TensorBoard (logger=tensorboard, the default)
        from torch.utils.tensorboard import SummaryWriter

        with SummaryWriter(str(run_dir)) as writer:
            writer.add_figure("probe/lm", fig, close=False)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return result


# ----------------------------------------------------------------------------------------------
# Command line


def names_lm_run(argv: list[str]) -> bool:
    """Whether the command line's ckpt= names a task=lm run (python -m stacked_rnn.probe hands those over); False
    when it names none or an unreadable one, which stacked_rnn.probe then reports itself."""
    ckpt = next((a.split("=", 1)[1] for a in argv if a.startswith(("ckpt=", "--ckpt="))), None)
    if ckpt is None and "--ckpt" in argv[:-1]:
        ckpt = argv[argv.index("--ckpt") + 1]
    try:
        return ckpt is not None and load(find_checkpoint(ckpt))[0].hparams.task == "lm"
    except CheckpointError:
        return False


def build_parser() -> RunParser:
    parser = RunParser(
        "python -m stacked_rnn.probe", "%(prog)s ckpt=LM_RUN [windows=300] [test_windows=150] [window=256]\n"
        "       [steps_per_window=8] [lags=1,2,4,8,16,32] [top_words=100] [position_cap=10] [layers=0,1,...]\n"
        "       [sample_seed=0] [out=DIR] [path=TEXT] [cache_dir=DIR]",
        "Linear probes on every layer of a character language model (0 = the embeddings, k = the k-th\nrecurrent "
        "layer), trained model against its untrained start, from windows read from a fresh\nstate: the character "
        "at t-k, the position inside the current word, and (at a word's last\ncharacter) which of the most "
        "frequent words it is -> probe_lm.json/png (test accuracy).",
        "  python -m stacked_rnn.probe ckpt=outputs/2026-11-24/15-13-02\n"
        "  python -m stacked_rnn.probe ckpt=RUN lags=1,2,4,8,16,32,64 window=256 windows=1000 test_windows=500")
    parser.add_key("windows", "training-split windows the probes are fit on (default: %(default)s)",
                   type=at_least(2), default=300, metavar="N")
    parser.add_key("test_windows", "test-split windows they are scored on (default: %(default)s)", type=at_least(1),
                   default=150, metavar="N")
    parser.add_key("window", "characters per window, read from a fresh state (default: %(default)s)",
                   type=at_least(2), default=256, metavar="T")
    parser.add_key("steps_per_window", "steps sampled per window and target family (default: %(default)s)",
                   type=at_least(1), default=8, metavar="N")
    parser.add_key("lags", "k of the t-k columns (default: 1,2,4,8,16,32)", type=int_list(0),
                   default=list(DEFAULT_LAGS), metavar="K,K,...")
    parser.add_key("top_words", "the word column's classes: the most frequent training words (default: "
                   "%(default)s)", type=at_least(2), default=100, metavar="N")
    parser.add_key("position_cap", "word positions from this one on form one class (default: %(default)s)",
                   type=at_least(1), default=10, metavar="N")
    parser.add_key("layers", "the layers to probe (default: all; 0 = the embeddings)", type=int_list(0),
                   metavar="K,K,...")
    parser.add_key("sample_seed", "seed of the windows, steps and folds (default: %(default)s)", type=at_least(0),
                   default=0, metavar="N")
    parser.add_key("out", "folder for probe_lm.json/png (default: the run folder)", metavar="DIR")
    parser.add_key("path", "the text file, when not where the run read it (data.path)", metavar="TEXT")
    parser.add_key("cache_dir", "the download cache, when not the run's (data.cache_dir)", metavar="DIR")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        wrong = [a for a in argv if a.lstrip("-").split("=", 1)[0] in IMDB_ONLY]
        if wrong:
            raise UsageError(f"{wrong[0]!r} is an option of the text-classification probes: a task=lm run takes "
                             "windows=, test_windows=, window=, steps_per_window=, lags=, top_words=, position_cap=")
        args = parser.parse_args(argv)
        result = run_lm_probe(args.ckpt, args.out, tuple(args.lags), args.windows, args.test_windows, args.window,
                              args.steps_per_window, args.top_words, args.position_cap, args.layers,
                              args.sample_seed, path=args.path, cache_dir=args.cache_dir)
    except (UsageError, CheckpointError) as err:
        return parser.fail(err)
    print(f"probes fit on {result['samples']['train']['windows']} training windows, scored on "
          f"{result['samples']['test']['windows']} test windows; test accuracy: trained (control) [difference]\n")
    print("| layer | " + " | ".join(result["columns"]) + " |\n|---|" + "---|" * len(result["columns"]))
    for r, name in enumerate(result["layers"]):
        cells = [f"{t:.3f} ({c:.3f}) [{d:+.3f}]" for t, c, d in
                 zip(result["trained"][r], result["control"][r], result["difference"][r])]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print("| majority | " + " | ".join(f"{b:.3f}" for b in result["baselines"]["majority"]) + " |")
    best = result["best_layer"]["by_difference"]
    print("\nbest layer by difference: " + ", ".join(f"{c}: {v}" for c, v in best.items()))
    print(f"wrote probe_lm.json and probe_lm.png into {args.out or run_folder(Path(result['checkpoint']))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
