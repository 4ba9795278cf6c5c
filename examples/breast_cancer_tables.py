"""Write a source and a target table with a real covariate shift, to try the pipeline on tables.

scikit-learn's breast-cancer data (569 real tumours, 30 numeric features, benign/malignant) is split
by the `mean texture` feature: tumours below the median texture form the source, the rest the
target. Same features and labels, shifted inputs: the situation transfer learning is for.
"""

from pathlib import Path

from sklearn.datasets import load_breast_cancer

out = Path(__file__).resolve().parents[1] / "data" / "my_tables"  # the experiment's own folder (data/README.md)
out.mkdir(parents=True, exist_ok=True)
df = load_breast_cancer(as_frame=True).frame.rename(columns={"target": "label"})
df["label"] = df["label"].map({0: "malignant", 1: "benign"})
low = df["mean texture"] <= df["mean texture"].median()
df[low].to_csv(out / "source.csv", index=False)
df[~low].to_csv(out / "target.csv", index=False)
print(f"wrote {out / 'source.csv'} ({low.sum()} rows) and {out / 'target.csv'} ({(~low).sum()} rows)")
