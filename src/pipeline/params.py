"""Write params.yaml from conf/ exactly as `dvc exp run` does, with DVC's own composer.

`dvc repro` never composes: the stages it runs read params.yaml. After editing conf/, regenerate it
(`make params`, or `pipeline-params key=value ...`); a test keeps the committed file in step.
"""

from __future__ import annotations

import sys
from pathlib import Path


def compose_params(output: str | Path = "params.yaml", overrides: list[str] | None = None, conf_dir: str | Path = "conf") -> Path:
    from dvc.utils.hydra import compose_and_dump

    output = Path(output)
    compose_and_dump(output, str(Path(conf_dir).resolve()), None, "config", "", list(overrides or []))
    return output


def main() -> None:
    path = compose_params(overrides=sys.argv[1:])
    print(f"wrote {path} from conf/")


if __name__ == "__main__":
    main()
