"""The data model: what an adapter returns (`Source`) and the prepared task set every stage after
`prepare` reads instead of raw data (`TaskSet`).

Adapters (one origin each) live in `digits`, `mlmrev`, `synthetic` and `tables`; `build.build_taskset`
turns any Source into a split, standardised TaskSet, for a transfer source or target (one task) and a
multitask experiment (several) alike. On disk a task set is a directory with `arrays.npz` (inputs, label matrix, split indices) and
`meta.json` (task specs, input shape, provenance with content hash). Labels form an N x T matrix,
one column per task, NaN where a sample has no label for that task.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from pipeline.errors import PipelineError

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class TaskSpec:
    name: str
    kind: str  # "classification" | "regression"
    classes: list[str] | None = None  # class names, index = label value
    # Regression targets are trained standardised; metrics are reported back in the original unit.
    offset: float = 0.0
    scale: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in ("classification", "regression"):
            raise PipelineError(f"task {self.name!r}: kind must be classification or regression, got {self.kind!r}")

    @property
    def n_outputs(self) -> int:
        return len(self.classes) if self.kind == "classification" else 1

    # The task's metrics, its primary one first: what selects models, enters Δm and heads the tables.
    @property
    def metrics(self) -> tuple[str, ...]:
        return ("acc", "f1") if self.kind == "classification" else ("rmse", "r2")

    @property
    def primary(self) -> str:
        return self.metrics[0]

    @property
    def higher_is_better(self) -> bool:
        """Direction of the primary metric."""
        return self.kind == "classification"


@dataclass
class Source:
    """One origin's samples before splitting: inputs and one label column per task."""

    x: np.ndarray  # float32 [N, D]
    y: np.ndarray  # float32 [N, T], class index or value, NaN = unlabelled
    tasks: list[TaskSpec]
    input_shape: list[int]
    provenance: dict = field(default_factory=dict)  # JSON-safe: it is saved with the task set
    splits: dict[str, np.ndarray] | None = None  # fixed by the construction; else prepare draws them
    feature_names: list[str] | None = None
    standardize: bool = False  # z-score features with train-split statistics
    groups: np.ndarray | None = None  # rows of one group (e.g. one pupil's years) go to one split
    rows: dict[str, np.ndarray] | None = None  # per-row construction record, for audits; not saved
    # The label column each task's values come from (default: the task's own name). Regression tasks
    # that share a column (a long-format table, one school per task) are standardised once, together,
    # so a small task's mean keeps its distance from the others' in standardised units.
    target_of_task: list[str] | None = None


@dataclass
class TaskSet:
    x: np.ndarray  # float32 [N, D]
    y: np.ndarray  # float32 [N, T], NaN = unlabelled
    tasks: list[TaskSpec]
    splits: dict[str, np.ndarray]
    input_shape: list[int]
    provenance: dict = field(default_factory=dict)

    def content_hash(self) -> str:
        h = hashlib.sha256()
        for arr in (self.x, self.y, *(self.splits[s] for s in SPLITS)):
            h.update(np.ascontiguousarray(arr).tobytes())
        return h.hexdigest()[:16]

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        np.savez(directory / "arrays.npz", x=self.x, y=self.y, **{f"split_{s}": self.splits[s] for s in SPLITS})
        meta = {
            "tasks": [asdict(t) for t in self.tasks],
            "input_shape": self.input_shape,
            "n_samples": int(len(self.x)),
            "split_sizes": {s: int(len(self.splits[s])) for s in SPLITS},
            "provenance": {**self.provenance, "content_hash": self.content_hash()},
        }
        (directory / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")

    @classmethod
    def load(cls, directory: str | Path) -> TaskSet:
        directory = Path(directory)
        if not (directory / "meta.json").exists() or not (directory / "arrays.npz").exists():
            raise PipelineError(f"missing upstream output {directory} (prepared task set); run `dvc repro` or the prepare stage first")
        meta = json.loads((directory / "meta.json").read_text())
        with np.load(directory / "arrays.npz") as arr:
            return cls(
                x=arr["x"],
                y=arr["y"],
                tasks=[TaskSpec(**t) for t in meta["tasks"]],
                splits={s: arr[f"split_{s}"] for s in SPLITS},
                input_shape=meta["input_shape"],
                provenance=meta["provenance"],
            )

    @property
    def data_hash(self) -> str:
        return self.provenance.get("content_hash") or self.content_hash()


def label_budget(y: np.ndarray, pool: np.ndarray, kind: str, k: int, seed: int, where: str = "train split") -> np.ndarray:
    """Indices of a labelled subset of `pool`: k per class (classification) or k rows (regression).

    The subset for budget k is drawn from one permutation per seed, so a larger budget at the same
    seed contains the smaller one and label-efficiency curves compare like with like.
    """
    rng = np.random.default_rng(seed)
    pool = pool[~np.isnan(y[pool])]
    if kind == "regression":
        if len(pool) < k:
            raise PipelineError(f"label budget {k} rows exceeds the {len(pool)} labelled rows of the {where}")
        return np.sort(rng.permutation(pool)[:k])
    chosen = []
    for c in np.unique(y[pool]).astype(int):
        members = pool[y[pool] == c]
        if len(members) < k:
            raise PipelineError(f"class {c} has {len(members)} labelled examples in the {where}, fewer than the label budget k={k}")
        chosen.append(rng.permutation(members)[:k])
    return np.sort(np.concatenate(chosen))


def labelled_rows(index: dict) -> np.ndarray:
    """The labelled rows a user with the budget has: its train and validation rows (`budget_index`)."""
    return np.concatenate([np.asarray(index["train"]), np.asarray(index["val"])])


def budget_index(y, splits: dict, kind: str, k: int, seed: int, val_labels: str) -> dict:
    """The rows one budget x seed trains, selects and tests on. Budget subsets nest across k at a fixed
    seed; validation labels follow the same budget unless `transfer.val_labels=all` (an optimistic
    few-shot protocol, kept for comparison)."""
    return {
        "train": label_budget(y, splits["train"], kind, k, seed),
        "val": label_budget(y, splits["val"], kind, k, seed) if val_labels == "budget" else splits["val"],
        "test": splits["test"],
    }
