"""Turning a suite's document into a table, a speedup summary, JSON, CSV and a bar chart."""

from __future__ import annotations

import csv
import json
import math
from typing import Any, Iterable, Mapping

from fusedopt.bench.rules import IMPLEMENTATIONS, RULES, SIZES

TABLE_COLUMNS = ("rule", "size", "dtype", "thr", "implementation", "median ms", "IQR ms",
                 "min-max ms", "GB/s", "roofline", "vs keras-fn", "n", "1st call ms")
BASELINES = ("keras-function", "keras-xla", "keras-eager", "tf-raw", "torch-fused", "torch-foreach", "numpy")
CSV_COLUMNS = ("rule", "implementation", "size_case", "dtype", "threads", "elements", "tensors", "repeats",
               "median_s", "min_s", "max_s", "iqr_s", "first_call_s", "gbps", "fraction_of_roofline",
               "speedup_vs_keras", "fused")


def case_label(case: Mapping[str, Any]) -> str:
    """A case (record, skip or error fields) in one phrase: "adam tiny float32 t=1 fusedopt"."""
    return f"{case['rule']} {case['size_case']} {case['dtype']} t={case['threads']} {case['implementation']}"


def _ms(seconds: float) -> str:
    ms = seconds * 1e3
    return f"{ms:.0f}" if ms >= 100 else f"{ms:.1f}" if ms >= 10 else f"{ms:.2f}" if ms >= 1 else f"{ms:.3f}"


def _ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def _order(record: dict[str, Any]) -> tuple:
    size_order = list(SIZES) + ["fit"]
    rule_order = list(RULES)
    return (size_order.index(record["size_case"]) if record["size_case"] in size_order else 99,
            record["dtype"],
            rule_order.index(record["rule"]) if record["rule"] in rule_order else 99,
            IMPLEMENTATIONS.index(record["implementation"]), record["threads"])


def _format(rows: list[tuple[str, ...]], header: tuple[str, ...], right_from: int) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(row: tuple[str, ...]) -> str:
        return "  ".join(str(c).rjust(w) if i >= right_from else str(c).ljust(w)
                         for i, (c, w) in enumerate(zip(row, widths))).rstrip()
    out = [line(header), "  ".join("-" * w for w in widths)]
    previous = None
    for row in rows:
        if previous is not None and row[:3] != previous[:3]:
            out.append("")
        out.append(line(row))
        previous = row
    return "\n".join(out)


def table(records: Iterable[dict[str, Any]]) -> str:
    """One row per record; a blank line between (rule, size, dtype) groups."""
    rows = []
    for r in sorted(records, key=_order):
        s = r["spread"]
        rows.append((
            r["rule"], r["size_case"], r["dtype"], str(r["threads"]), r["implementation"],
            _ms(r["median_s"]), _ms(s["iqr_s"]), f"{_ms(s['min_s'])}-{_ms(s['max_s'])}",
            "-" if r.get("gbps") is None else f"{r['gbps']:.1f}",
            "-" if r.get("fraction_of_roofline") is None else f"{100 * r['fraction_of_roofline']:.0f}%",
            _ratio(r.get("speedup_vs_keras")), str(r["repeats"]),
            "-" if r.get("first_call_s") is None else _ms(r["first_call_s"]),
        ))
    return _format(rows, TABLE_COLUMNS, right_from=5)


def summary(records: Iterable[dict[str, Any]]) -> str:
    """fusedopt's speedup over each baseline measured in the same run (>1: fusedopt is faster)."""
    ours = sorted((r for r in records if r["implementation"].startswith("fusedopt")), key=_order)
    present = [b for b in BASELINES if any(b in r.get("speedup_vs", {}) for r in ours)]
    header = ("rule", "size", "dtype", "thr", "implementation", "median ms", "roofline", *present)
    rows = [(r["rule"], r["size_case"], r["dtype"], str(r["threads"]), r["implementation"], _ms(r["median_s"]),
             "-" if r.get("fraction_of_roofline") is None else f"{100 * r['fraction_of_roofline']:.0f}%",
             *(_ratio(r.get("speedup_vs", {}).get(b)) for b in present)) for r in ours]
    return _format(rows, header, right_from=5) if rows else "(no fusedopt records)"


def skipped(entries: Iterable[dict[str, Any]]) -> str:
    """Skipped cases, one line per reason: which implementations, sizes and rules."""
    groups: dict[str, tuple[list[str], list[str], list[str]]] = {}
    for e in entries:
        names = groups.setdefault(e["reason"], ([], [], []))
        for bucket, value in zip(names, (e["implementation"], e["size_case"], e["rule"])):
            if value not in bucket:
                bucket.append(value)
    lines = []
    for reason, (implementations, sizes, rules) in groups.items():
        what = ", ".join(implementations) if len(implementations) <= 4 else f"{len(implementations)} implementations"
        which = ", ".join(rules) if len(rules) <= 6 else f"{len(rules)} rules"
        lines.append(f"  {what} on {', '.join(sizes)} ({which}): {reason}")
    return "\n".join(lines)


def errors(entries: Iterable[dict[str, Any]]) -> str:
    """One line per case that raised: the case and its error (further lines of a message indented)."""
    lines = []
    for e in entries:
        first, *rest = e["error"].splitlines() or [""]
        lines.append(f"  {case_label(e)}: {first}")
        lines += [f"      {line}" for line in rest]
    return "\n".join(lines)


def render(doc: dict[str, Any]) -> str:
    """The whole text report: machine line, table, summary, errors, skips and notes."""
    m = doc["machine"]
    b = m["build_info"]
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v)
    parts = [
        f"fusedopt {b['version']} ({b['isa']}, {b['compiler']}) on {m['cpu_model']}, "
        f"{m['cpu_count']} CPUs; {versions}; {m['date']}",
        "Median step time and spread; GB/s counts each rule's minimal bytes (params, grads, slots read; "
        "params, slots written); 'roofline' is stream_roofline over the same bytes in the same run; "
        "'1st call' includes tracing/compilation.",
        "",
        table(doc["records"]),
        "",
        "fusedopt speedup over each baseline, same run (>1: fusedopt faster):",
        summary(doc["records"]),
    ]
    if doc.get("errors"):
        count = len(doc["errors"])
        parts += ["", f"Errors ({count} case{'s' if count != 1 else ''} failed, not in the table):",
                  errors(doc["errors"])]
    if doc.get("skipped"):
        parts += ["", "Skipped (--no-skips runs the default skips):", skipped(doc["skipped"])]
    if doc.get("notes"):
        parts += ["", "Notes:", *(f"  {n}" for n in doc["notes"])]
    parts += ["", f"elapsed {doc['elapsed_s']:.0f} s"]
    return "\n".join(parts)


def _clean(value: Any) -> Any:
    """NaN/inf -> None, so the JSON is strict."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def write_json(doc: dict[str, Any], path: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(_clean(doc), f, indent=1, allow_nan=False)
        f.write("\n")


def write_csv(records: Iterable[dict[str, Any]], path: str) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for r in sorted(records, key=_order):
            flat = {**r, **r["spread"]}
            writer.writerow({k: flat.get(k) for k in CSV_COLUMNS})


def write_plot(records: list[dict[str, Any]], path: str) -> None:
    """Bar chart: fraction of roofline per rule and implementation, one panel per size case.

    Each implementation is shown at its fastest thread count measured.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = [r for r in records if r.get("fraction_of_roofline") is not None and r["implementation"] != "roofline"]
    panels = sorted({(r["size_case"], r["dtype"]) for r in measured}, key=lambda k: (list(SIZES).index(k[0]), k[1]))
    colors = plt.get_cmap("tab10")
    shown = {r["rule"] for r in measured}
    fig, axes = plt.subplots(max(1, len(panels)), 1, squeeze=False,
                             figsize=(max(8.0, 1.1 * len(shown) + 2), 3.6 * max(1, len(panels))))
    for ax, (size, dtype) in zip(axes[:, 0], panels):
        rows = [r for r in measured if (r["size_case"], r["dtype"]) == (size, dtype)]
        top: dict[tuple[str, str], dict[str, Any]] = {}
        for r in rows:
            key = (r["rule"], r["implementation"])
            if key not in top or r["median_s"] < top[key]["median_s"]:
                top[key] = r
        rules = [n for n in RULES if any(k[0] == n for k in top)]
        names = [i for i in IMPLEMENTATIONS if any(k[1] == i for k in top)]
        width = 0.8 / max(1, len(names))
        for j, impl in enumerate(names):
            xs = [i + (j - (len(names) - 1) / 2) * width for i, n in enumerate(rules) if (n, impl) in top]
            ys = [top[(n, impl)]["fraction_of_roofline"] for n in rules if (n, impl) in top]
            ax.bar(xs, ys, width, label=impl, color=colors(IMPLEMENTATIONS.index(impl)))
        ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
        ax.set_xticks(range(len(rules)), rules, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("fraction of roofline")
        ax.set_title(f"{size} ({SIZES[size].description}), {dtype}: fraction of the same-run roofline")
        ax.legend(fontsize=7, ncol=min(5, len(names)))
    if not panels:
        axes[0, 0].text(0.5, 0.5, "no measured records", ha="center")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
