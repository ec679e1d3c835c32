"""Execute a notebook's code cells as one script, for a GPU machine without Jupyter (how results/ ran notebook 06).

Usage: python run_notebook_as_script.py NOTEBOOK OUT_DIR ["old=>new" ...]: prints what the cells print, saves each
figure shown to OUT_DIR/nb_figN.png, and replaces the text old by new in the cells first (e.g. a time cap).
"""
import json
import os
import sys

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt

if len(sys.argv) < 3:
    sys.exit(f"usage: python {sys.argv[0]} NOTEBOOK OUT_DIR [\"old=>new\" ...]")
nb_path, out = sys.argv[1], sys.argv[2]
os.makedirs(out, exist_ok=True)
subs = [tuple(s.split("=>", 1)) for s in sys.argv[3:]]
class Markdown(str):
    pass
nfig = [0]
def show(*a, **k):
    for num in plt.get_fignums():
        nfig[0] += 1
        plt.figure(num).savefig(os.path.join(out, f"nb_fig{nfig[0]}.png"), dpi=80)
    plt.close("all")
plt.show = show
ns = {"__name__": "__main__", "Markdown": Markdown, "display": lambda *a, **k: print(*a)}
with open(nb_path, encoding="utf-8") as f:
    nb = json.load(f)
for i, c in enumerate(nb["cells"]):
    if c["cell_type"] != "code":
        continue
    src = "".join(c["source"])
    src = "\n".join(l for l in src.splitlines() if not l.lstrip().startswith("%") and "from IPython" not in l)
    for a, b in subs:
        if a in src:
            print(f"[runner: cell {i}: replaced {a!r} by {b!r}]")
            src = src.replace(a, b)
    print(f"---- cell {i}", flush=True)
    exec(compile(src, f"cell{i}", "exec"), ns)
    sys.stdout.flush()
print("NOTEBOOK DONE")
