"""Tidy a freshly executed notebook in place: drop per-cell execution timestamps (they change on every run) and join
consecutive stream outputs of the same name (a print can reach the kernel's stdout in pieces)."""

import json
import sys


def tidy(path: str) -> None:
    nb = json.load(open(path))
    for cell in nb["cells"]:
        cell["metadata"].pop("execution", None)
        joined: list[dict] = []
        for out in cell.get("outputs", []):
            prev = joined[-1] if joined else None
            if (prev is not None and out["output_type"] == "stream" == prev["output_type"]
                    and out["name"] == prev["name"]):
                prev["text"] = "".join(prev["text"]) + "".join(out["text"])
                prev["text"] = prev["text"].splitlines(keepends=True)
            else:
                joined.append(out)
        if "outputs" in cell:
            cell["outputs"] = joined
    open(path, "w").write(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        tidy(arg)
