"""Tabulate Nsight Compute CSVs (``ncu --csv --page details``, one file per run of ``tools/ncu_window.py``) side
by side: ``python tools/ncu_table.py DIR/ncu_*.csv``. One column per file (named after it), one row per metric."""

import csv
import os
import sys


def read(path):
    rows = list(csv.reader(line for line in open(path) if line.startswith('"')))
    head = rows[0]
    sec, name, value = head.index("Section Name"), head.index("Metric Name"), head.index("Metric Value")
    unit, kernel = head.index("Metric Unit"), head.index("Kernel Name")
    return {(r[sec], r[name]): (r[value], r[unit]) for r in rows[1:] if "fused_qkv" in r[kernel]}


def main(paths) -> int:
    data = {os.path.basename(p).removeprefix("ncu_").removesuffix(".csv"): read(p) for p in paths}
    names = list(data)
    keys = list(dict.fromkeys(k for d in data.values() for k in d))
    print(f"{'section: metric':64}" + "".join(f"{n:>16}" for n in names) + "  unit")
    for k in keys:
        unit = next(d[k][1] for d in data.values() if k in d)
        label = f"{k[0][:22]}: {k[1]}"[:64]
        print(f"{label:64}" + "".join(f"{data[n].get(k, ('-', ''))[0]:>16}" for n in names) + f"  {unit}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
