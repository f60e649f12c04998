"""The demo's reporting: one-line summaries, tables, paired lines, plots."""

import numpy as np
from experiment import ENCODERS

import geovario_keras as gv

THRESHOLDS_KM = (25, 200, 750, 2500)


def summary(report):
    """One line: accuracies within 25 / 200 / 750 / 2500 km and median."""
    return (
        "acc "
        + " / ".join(f"{report[f'acc_{t}km']:.1f}" for t in THRESHOLDS_KM)
        + f" %, median {report['median_km']:.0f} km"
    )


def markdown_table(results, keys, names):
    """Mean ± std over runs, one row per entry of `results`."""

    def cell(values, key):
        v = np.array([r[key] for r in values], float)
        fmt = ".0f" if key in ("median_km", "mean_km", "geoscore") else ".1f"
        if len(v) == 1:
            return f"{v[0]:{fmt}}"
        return f"{v.mean():{fmt}} ± {v.std(ddof=1):{fmt}}"

    lines = [
        "| method | runs | " + " | ".join(label for _, label in keys) + " |",
        "|---|---|" + "---|" * len(keys),
    ]
    for method, reports in results.items():
        lines.append(
            f"| {names[method]} | {len(reports)} | "
            + " | ".join(cell(reports, key) for key, _ in keys)
            + " |"
        )
    return "\n".join(lines)


def paired_lines(results, methods, names):
    """Seed-by-seed differences: each loss against plain GeoCLIP, and the
    retrieval-augmented predictions against gallery prediction."""
    pairs = [(m, "geoclip") for m in methods if m != "geoclip"]
    for method in ("geoclip", "semivariogram"):
        for mode in ("reference", "hybrid"):
            pairs.append((f"{method}/{mode}", method))
    for encoder in ENCODERS:  # each encoder against Fourier; the loss's gain
        for method in ("geoclip", "semivariogram"):
            pairs.append((f"{method}@{encoder}", method))
        pairs.append((f"semivariogram@{encoder}", f"geoclip@{encoder}"))
    lines = ["Paired, seed by seed (points of accuracy; + = better):"]
    for new, base in pairs:
        if new not in results or base not in results:
            continue
        if len(results[base]) < 2:
            continue
        deltas = {
            t: np.array(
                [
                    r[f"acc_{t}km"] - b[f"acc_{t}km"]
                    for r, b in zip(results[new], results[base])
                ]
            )
            for t in THRESHOLDS_KM
        }
        wins = int(np.sum(deltas[750] > 0))
        lines.append(
            f"- {names[new]} vs {names[base]}: "
            + ", ".join(
                f"{t} km {d.mean():+.1f} ("
                + " ".join(f"{x:+.1f}" for x in d)
                + ")"
                for t, d in deltas.items()
            )
            + f"; better at 750 km on {wins}/{len(deltas[750])} seeds"
        )
    return "\n".join(lines)


def error_map(gps, errors, path, title, background=None):
    """Test locations coloured by their error (km), on the Blue Marble."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 5))
    if background is None:
        background = gv.data.imagery.load_blue_marble()
    ax.imshow(background[::4, ::4], extent=(-180, 180, -90, 90), alpha=0.6)
    points = ax.scatter(
        gps[:, 1],
        gps[:, 0],
        c=np.log10(np.asarray(errors) + 1.0),
        s=7,
        cmap="plasma",
        vmin=0,
        vmax=np.log10(20000),
        edgecolors="none",
    )
    bar = fig.colorbar(points, ticks=np.log10([2, 11, 101, 1001, 10001]))
    bar.ax.set_yticklabels(["1", "10", "100", "1,000", "10,000"])
    bar.set_label("error (km)")
    ax.set_xlim(-180, 180)
    ax.set_ylim(-90, 90)
    ax.set_xlabel("longitude")
    ax.set_ylabel("latitude")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# Every threshold and the median: the method's story is at 25 and 200 km.
PANELS = (
    ("acc_25km", "within 25 km (%)"),
    ("acc_200km", "within 200 km (%)"),
    ("acc_750km", "within 750 km (%)"),
    ("acc_2500km", "within 2,500 km (%)"),
    ("median_km", "median error (km, log scale)"),
)


def results_figure(results, names, path):
    """Bars of every `PANELS` metric, mean and spread over seeds.

    `results`: `{method key: [report, ...]}`; `names`: readable method names
    by key. The retrieval-augmented predictions (keys with "/") come last.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(PANELS), figsize=(22, 5), sharey=True)
    keys = [m for m in results if "/" not in m]
    keys += [m for m in results if "/" in m]
    for ax, (key, title) in zip(axes, PANELS):
        means = [np.mean([r[key] for r in results[m]]) for m in keys]
        stds = [np.std([r[key] for r in results[m]]) for m in keys]
        ax.barh(range(len(keys)), means, xerr=stds, color="tab:blue")
        ax.set_yticks(range(len(keys)))
        ax.set_yticklabels([names.get(m, m) for m in keys])
        ax.set_title(title)
        ax.grid(axis="x", alpha=0.3)
        if key == "median_km":  # from ~70 to ~5,000 km
            ax.set_xscale("log")
    axes[0].invert_yaxis()
    fig.suptitle("Test accuracy, mean and spread over seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
